//! The real Docker daemon killed (SIGKILL) and started again under a running controller
//! and proxy. This test restarts this machine's dockerd with its own command line and
//! environment, so it runs alone in its own test binary, and it fails (never passes
//! silently) if it cannot. INTERLOCK_SKIP_DOCKER=1 skips it with the other Docker tests.
//!
//! Backends are plain containers on the default bridge (reachable from the host), so the
//! controller reads the engine in containers mode; the proxy has no Docker access at all.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::engine::{backend_image, docker_quiet, http_get, run_backend_container, skip};
use common::free_port;
use common::node::{eventually, Node, Scratch};

const BACKEND_IMAGE: &str = "interlock-test/backend:restart";

/// The running dockerd: pid, command line and environment (to start it the same way).
struct Daemon {
    pid: u32,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

fn nul_split(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl Daemon {
    fn find() -> Daemon {
        let out = Command::new("pidof")
            .arg("dockerd")
            .output()
            .expect("pidof runs");
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a dockerd process runs on this machine");
        let argv = nul_split(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
        let env = nul_split(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        Daemon { pid, argv, env }
    }

    fn kill(&self) {
        let st = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "killing dockerd (needs root)");
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
        });
        assert!(gone, "dockerd did not die");
    }

    /// Starts dockerd again, detached from this test (its own session), as it was started.
    fn start(&self) {
        let log =
            std::fs::File::create(std::env::temp_dir().join("interlock-test-dockerd.log")).unwrap();
        let st = Command::new("setsid")
            .arg("-f")
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(st.success(), "restarting dockerd");
        let up = (0..240).any(|_| {
            std::thread::sleep(Duration::from_millis(250));
            Command::new("docker")
                .args(["info", "--format", "{{.ServerVersion}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up, "dockerd did not come back within 60 s");
    }
}

/// Restarts the daemon if the test dies while it is down.
struct Guard<'a>(&'a Daemon, bool);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.start();
        }
    }
}

fn run_backend(id: &str, name: &str, host: &str) -> String {
    let full = format!("{id}-{name}");
    run_backend_container(&full, BACKEND_IMAGE, name, host, &["--restart", "always"]);
    full
}

fn answers(proxy: SocketAddr, host: &str, backend: &str) -> bool {
    http_get(proxy, host, "/")
        .is_some_and(|r| r.status == 200 && r.backend.as_deref() == Some(backend))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_docker_daemon_costs_no_request() {
    if skip() {
        return;
    }
    backend_image(BACKEND_IMAGE);
    let id = format!("ild{}", std::process::id());
    let certs = Scratch::new("dockerd");
    certs.issue_certs(&["127.0.0.1"], &[""]);
    let file = |n: &str| certs.path(n);
    let mut containers = vec![run_backend(&id, "one", "one.test")];

    let api = free_port();
    let ctl = Node::start(
        "controller",
        &[
            "controller",
            "--docker",
            "--docker-mode",
            "containers",
            "--docker-poll-ms",
            "250",
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--control-ca",
            &file("ca.pem"),
            "--control-cert",
            &file("controller.pem"),
            "--control-key",
            &file("controller.key"),
        ]
        .map(String::from),
    )
    .await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _proxy = Node::start(
        "proxy",
        &[
            "proxy",
            "--controller",
            &format!("https://127.0.0.1:{api}"),
            "--poll-wait",
            "5",
            "--control-ca",
            &file("ca.pem"),
            "--control-cert",
            &file("proxy.pem"),
            "--control-key",
            &file("proxy.key"),
            "--listen",
            &listen.to_string(),
        ]
        .map(String::from),
    )
    .await;
    eventually(Duration::from_secs(30), || async {
        answers(listen, "one.test", "one")
    })
    .await
    .expect("one.test routed through controller and proxy");

    // Continuous traffic while the daemon is dead.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if answers(listen, "one.test", "one") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let daemon = Daemon::find();
    let t0 = Instant::now();
    daemon.kill();
    let mut guard = Guard(&daemon, true);
    eventually(Duration::from_secs(15), || async {
        ctl.metric("interlock_docker_up", &[]).await == Some(0.0)
    })
    .await
    .expect("the controller reports the engine gone");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "while dockerd was dead ({:?}): {ok} ok, {failed} failed",
        t0.elapsed()
    );
    assert!(ok > 0);
    assert_eq!(failed, 0, "the last good routes must keep serving");

    // Back: the controller reconnects and resyncs; new containers are routed, and the old
    // one again once the daemon has restarted it (it may get a new address).
    daemon.start();
    guard.1 = false;
    eprintln!("dockerd back after {:?}", t0.elapsed());
    eventually(Duration::from_secs(30), || async {
        ctl.metric("interlock_docker_up", &[]).await == Some(1.0)
    })
    .await
    .expect("the controller reconnects");
    containers.push(run_backend(&id, "two", "two.test"));
    let took = eventually(Duration::from_secs(30), || async {
        answers(listen, "two.test", "two")
    })
    .await
    .expect("a container started after the restart is routed");
    eprintln!("two.test routed {took:?} after it started");
    eventually(Duration::from_secs(60), || async {
        answers(listen, "one.test", "one")
    })
    .await
    .expect("the restarted container is routed again");
    for c in &containers {
        docker_quiet(&["rm", "-f", c]);
    }
}
