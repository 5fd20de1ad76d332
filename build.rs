//! Build-time switches of the test suite. `INTERLOCK_SKIP_DOCKER=1` marks every test that
//! needs a Docker Engine as ignored, and `INTERLOCK_SKIP_MULTINODE=1` the tests that start
//! private Docker daemons (the bed of tests/multinode/bed.sh: tests/multinode.rs, docker.rs,
//! swarm_stack.rs, swarm_drain.rs, docker_daemon_restart.rs): they then show as ignored in the
//! test report, never as passed.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(skip_docker)");
    println!("cargo::rustc-check-cfg=cfg(skip_multinode)");
    println!("cargo::rerun-if-changed=build.rs");
    for (var, cfg) in [
        ("INTERLOCK_SKIP_DOCKER", "skip_docker"),
        ("INTERLOCK_SKIP_MULTINODE", "skip_multinode"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        if std::env::var(var).is_ok_and(|v| v == "1") {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
