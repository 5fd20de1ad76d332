//! `interlock health` against the real binary in each role: exit 0 only while the instance
//! serves (a proxy once it has a table from its controller or its state file), 1 otherwise,
//! and quickly when nothing answers.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::free_port;
use common::node::{eventually, Node, Scratch};

/// `interlock health ARGS` with `env`: (exit code, stdout, stderr).
fn health(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(common::node::bin())
        .arg("health")
        .args(args)
        .env_remove("INTERLOCK_ADMIN")
        .envs(env.iter().copied())
        .output()
        .expect("running interlock health");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn health_of(admin: SocketAddr) -> (i32, String, String) {
    health(&["--admin", &admin.to_string()], &[])
}

fn proxy_args(s: &Scratch, api: u16, state_file: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "proxy",
        "--controller",
        &format!("https://127.0.0.1:{api}"),
        "--cluster",
        "prod",
        "--poll-wait",
        "5",
        "--control-ca",
        &s.path("ca.pem"),
        "--control-cert",
        &s.path("proxy-prod.pem"),
        "--control-key",
        &s.path("proxy-prod.key"),
        "--listen",
        &SocketAddr::from(([127, 0, 0, 1], free_port())).to_string(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(f) = state_file {
        args.extend(["--state-file".to_string(), f.to_string()]);
    }
    args
}

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_whether_each_role_serves() {
    // Nothing listening: 1, within the timeout.
    let nobody = admin_addr();
    let t = Instant::now();
    let (code, _, err) = health(&["--admin", &nobody.to_string(), "--timeout", "1"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("connecting to the admin listener"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let (code, _, err) = health(&["--admin", "off"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("admin listener is off"), "{err}");

    // All-in-one with a services file: serving as soon as it listens. The address comes from
    // INTERLOCK_ADMIN, as in the image's HEALTHCHECK, and 0.0.0.0 is asked on loopback.
    let s = Scratch::new("health");
    s.write_services("");
    let port = free_port();
    let wildcard = SocketAddr::from(([0, 0, 0, 0], port));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    let run = Node::spawn(
        "run",
        &[
            "run".into(),
            "--config".into(),
            s.path("services.toml"),
            "--listen".into(),
            listen,
        ],
        wildcard,
        &[],
    );
    let loopback = SocketAddr::from(([127, 0, 0, 1], port));
    eventually(Duration::from_secs(20), || async {
        health(&[], &[("INTERLOCK_ADMIN", &wildcard.to_string())]).0 == 0
    })
    .await
    .expect("the all-in-one instance is healthy");
    let (_, out, _) = health_of(loopback);
    assert!(out.starts_with("ok generation="), "{out}");
    drop(run);

    // All-in-one with a Docker engine it cannot reach: it listens, but has never had the
    // engine's services, so it is not serving.
    let blind_run_admin = admin_addr();
    let blind_run = Node::spawn(
        "run without Docker",
        &[
            "run".into(),
            "--docker".into(),
            "--listen".into(),
            SocketAddr::from(([127, 0, 0, 1], free_port())).to_string(),
        ],
        blind_run_admin,
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    eventually(Duration::from_secs(20), || async {
        health_of(blind_run_admin).1.is_empty() && health_of(blind_run_admin).2.contains("503")
    })
    .await
    .expect("an all-in-one instance that never read Docker is not serving");
    drop(blind_run);

    // A proxy whose controller is not there yet, without a state file: not serving.
    s.issue_certs(&["127.0.0.1"], &["prod"]);
    s.write_services(
        "[[service]]\nname = \"web\"\nendpoints = [\"127.0.0.1:9\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"web.test\"\n\"com.docker.lb.service_cluster\" = \"prod\"\n",
    );
    let api = free_port();
    let state = s.path("prod.json");
    let proxy_admin = admin_addr();
    let proxy = Node::spawn(
        "proxy",
        &proxy_args(&s, api, Some(&state)),
        proxy_admin,
        &[],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, _, err) = health_of(proxy_admin);
    assert_eq!(code, 1, "a proxy with no table yet is not serving: {err}");
    assert!(err.contains("not serving (503)"), "{err}");

    // The controller comes: the controller is healthy, then the proxy once its table is in.
    let ctl_admin = admin_addr();
    let ctl = Node::spawn("controller", &s.controller_args(api), ctl_admin, &[]);
    eventually(Duration::from_secs(20), || async {
        health_of(ctl_admin).0 == 0
    })
    .await
    .expect("the controller is healthy");
    eventually(Duration::from_secs(20), || async {
        health_of(proxy_admin).0 == 0
    })
    .await
    .expect("the proxy is healthy once it has its cluster's table");
    assert!(std::path::Path::new(&state).exists());
    drop(proxy);
    drop(ctl);

    // Restarted while the controller is down: serving from its state file at once...
    let proxy_admin = admin_addr();
    let _proxy = Node::spawn(
        "proxy again",
        &proxy_args(&s, api, Some(&state)),
        proxy_admin,
        &[],
    );
    eventually(Duration::from_secs(20), || async {
        health_of(proxy_admin).0 == 0
    })
    .await
    .expect("a proxy serving its saved snapshot is healthy");
    // ...but not without one.
    let blind_admin = admin_addr();
    let _blind = Node::spawn("blind proxy", &proxy_args(&s, api, None), blind_admin, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, _, err) = health_of(blind_admin);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not serving (503)"), "{err}");
}
