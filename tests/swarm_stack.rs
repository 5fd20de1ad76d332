//! examples/swarm/stack.yml deployed on this machine's Swarm with the image of the
//! repository's Dockerfile: a controller (the only service with the Docker socket) and one
//! proxy per service cluster, routing real Swarm services over the overlay network.
//!
//! This machine is a one-node swarm, so every placement constraint is pointed at the
//! manager (the stack's variables), and the proxies publish in host mode (the ingress mesh
//! needs IPVS, which this kernel lacks; see docs/testing.md). INTERLOCK_SKIP_DOCKER=1 skips.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::engine::{
    backend_image, build_image, docker, docker_quiet, ensure_swarm, http_get, skip, wait_until,
};
use common::free_port;
use common::node::Scratch;

const IMAGE: &str = "interlock-test/interlock:stack";
const BACKEND_IMAGE: &str = "interlock-test/backend:stack";

/// The deployed stack and the app services of one test; removed on drop.
struct Stack {
    name: String,
    apps_network: String,
    certs: Scratch,
    prod: SocketAddr,
    dev: SocketAddr,
    apps: Vec<String>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for svc in ["controller", "proxy-prod", "proxy-dev"] {
                let out = Command::new("docker")
                    .args(["service", "logs", "--raw", &format!("{}_{svc}", self.name)])
                    .output();
                if let Ok(o) = out {
                    eprintln!(
                        "--- {svc} ---\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        for a in &self.apps {
            docker_quiet(&["service", "rm", a]);
        }
        docker_quiet(&["stack", "rm", &self.name]);
        // The networks go once their tasks are gone.
        for _ in 0..60 {
            let left = Command::new("docker")
                .args([
                    "network",
                    "ls",
                    "-q",
                    "--filter",
                    &format!("name={}", self.apps_network),
                ])
                .output()
                .map(|o| o.stdout.is_empty())
                .unwrap_or(true);
            if left {
                break;
            }
            docker_quiet(&["network", "rm", &self.apps_network]);
            std::thread::sleep(Duration::from_millis(500));
        }
        for _ in 0..40 {
            let gone = Command::new("docker")
                .args(["volume", "rm", &format!("{}_proxy-state", self.name)])
                .output()
                .is_ok_and(|o| {
                    o.status.success()
                        || String::from_utf8_lossy(&o.stderr).contains("No such volume")
                });
            if gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Stack {
    fn deploy() -> Stack {
        let name = format!("ilst{}", std::process::id());
        let certs = Scratch::new("stack");
        certs.issue_certs(&["controller"], &["prod", "dev"]);
        let (prod, dev) = (free_port(), free_port());
        let stack = Stack {
            apps_network: format!("{name}-apps"),
            prod: SocketAddr::from(([127, 0, 0, 1], prod)),
            dev: SocketAddr::from(([127, 0, 0, 1], dev)),
            name,
            certs,
            apps: Vec::new(),
        };
        let manager = "node.role == manager";
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/swarm/stack.yml");
        let out = Command::new("docker")
            .args(["stack", "deploy", "-c"])
            .arg(&file)
            .arg(&stack.name)
            .env("INTERLOCK_IMAGE", IMAGE)
            .env("INTERLOCK_CERTS", &stack.certs.0)
            .env("PROD_HTTP_PORT", prod.to_string())
            .env("DEV_HTTP_PORT", dev.to_string())
            .env("CONTROLLER_PLACEMENT", manager)
            .env("PROD_PLACEMENT", manager)
            .env("DEV_PLACEMENT", manager)
            .env("APPS_NETWORK", &stack.apps_network)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker stack deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    /// An app service on the apps network answering with its name.
    fn app(&mut self, name: &str, labels: &[(&str, &str)]) -> String {
        let full = format!("{}-{name}", self.name);
        let mut args: Vec<String> = [
            "service",
            "create",
            "-d",
            "-q",
            "--name",
            &full,
            "--network",
            &self.apps_network,
            "--env",
            &format!("BACKEND_NAME={name}"),
        ]
        .map(String::from)
        .to_vec();
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend([
            BACKEND_IMAGE.into(),
            "--listen".into(),
            "0.0.0.0:9001".into(),
        ]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.apps.push(full.clone());
        full
    }

    fn answer(&self, proxy: SocketAddr, host: &str) -> String {
        match http_get(proxy, host, "/") {
            Some(r) if r.status == 200 => r.backend.unwrap_or_default(),
            Some(r) => r.status.to_string(),
            None => "no answer".into(),
        }
    }

    fn service_json(&self, svc: &str, field: &str) -> String {
        docker(&[
            "service",
            "inspect",
            &format!("{}_{svc}", self.name),
            "--format",
            &format!("{{{{json {field}}}}}"),
        ])
    }
}

#[test]
fn the_example_stack_routes_each_cluster_and_survives_its_controller() {
    if skip() {
        return;
    }
    backend_image(BACKEND_IMAGE);
    build_image(IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));
    ensure_swarm();

    let mut stack = Stack::deploy();
    let port = [("com.docker.lb.port", "9001")];
    let labels = |cluster: &'static str, host: &'static str| {
        vec![
            ("com.docker.lb.hosts", host),
            ("com.docker.lb.service_cluster", cluster),
            port[0],
        ]
    };
    // The same host in both clusters, a default-cluster service nobody here serves, and a
    // dev service with a broken label.
    stack.app("web-prod", &labels("prod", "web.test"));
    stack.app("web-dev", &labels("dev", "web.test"));
    stack.app("plain", &[("com.docker.lb.hosts", "plain.test"), port[0]]);
    stack.app(
        "broken-dev",
        &[
            ("com.docker.lb.hosts", "broken.test"),
            ("com.docker.lb.service_cluster", "dev"),
            ("com.docker.lb.port", "not-a-port"),
        ],
    );
    wait_until(Duration::from_secs(90), || {
        stack.answer(stack.prod, "web.test") == "web-prod"
            && stack.answer(stack.dev, "web.test") == "web-dev"
    });
    assert_eq!(stack.answer(stack.prod, "plain.test"), "503");
    assert_eq!(stack.answer(stack.dev, "broken.test"), "503");

    // Least privilege: only the controller sees the Docker socket; proxies run unprivileged.
    let mounts = stack.service_json("controller", ".Spec.TaskTemplate.ContainerSpec.Mounts");
    assert!(mounts.contains("/var/run/docker.sock"), "{mounts}");
    for proxy in ["proxy-prod", "proxy-dev"] {
        let mounts = stack.service_json(proxy, ".Spec.TaskTemplate.ContainerSpec.Mounts");
        assert!(
            !mounts.contains("docker.sock") && mounts.contains("/var/lib/interlock"),
            "{proxy} mounts only its state volume: {mounts}"
        );
        let user = stack.service_json(proxy, ".Spec.TaskTemplate.ContainerSpec.User");
        assert!(
            user == "null" || user == "\"\"",
            "{proxy} runs as the image's user: {user}"
        );
    }
    assert_eq!(
        docker(&["image", "inspect", IMAGE, "--format", "{{.Config.User}}"]),
        "65532:65532"
    );

    // The controller's container is killed: Swarm restarts it; prod traffic never stops,
    // and a change made meanwhile reaches the proxies once it is back.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), stack.prod);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match http_get(addr, "web.test", "/") {
                    Some(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let task = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!(
            "label=com.docker.swarm.service.name={}_controller",
            stack.name
        ),
    ]);
    assert!(!task.is_empty(), "the controller's container runs here");
    docker(&["kill", task.lines().next().unwrap()]);
    stack.app("api-prod", &labels("prod", "api.test"));
    wait_until(Duration::from_secs(90), || {
        stack.answer(stack.prod, "api.test") == "api-prod"
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "prod traffic while its controller was killed and restarted: {ok} ok, {failed} failed"
    );
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "prod requests failed while the controller was away"
    );
    assert_eq!(
        stack.answer(stack.dev, "api.test"),
        "503",
        "prod's new host is not dev's"
    );
}
