//! examples/swarm/stack.yml deployed on this machine's Swarm with the image of the
//! repository's Dockerfile: a controller (the only service with the Docker socket) and one
//! proxy per service cluster, routing real Swarm services over the overlay network.
//!
//! This machine is a one-node swarm, so every placement constraint is pointed at the
//! manager (the stack's variables), and the proxies publish in host mode (the ingress mesh
//! needs IPVS, which this kernel lacks; see docs/testing.md). INTERLOCK_SKIP_DOCKER=1 marks it ignored.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::engine::{
    backend_image, build_image, docker, docker_quiet, ensure_swarm, http_get, image_layout,
    wait_until,
};
use common::free_port;
use common::node::Scratch;

const IMAGE: &str = "interlock-test/interlock:stack";
const BACKEND_IMAGE: &str = "interlock-test/backend:stack";

/// The deployed stack and the app services of one test; removed on drop.
struct Stack {
    name: String,
    /// The apps networks of prod and dev.
    prod_network: String,
    dev_network: String,
    /// Networks a test made besides the stack's.
    other_networks: Vec<String>,
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
        let stack_networks = [&self.prod_network, &self.dev_network];
        for network in stack_networks.into_iter().chain(&self.other_networks) {
            for _ in 0..60 {
                let left = Command::new("docker")
                    .args([
                        "network",
                        "ls",
                        "-q",
                        "--filter",
                        &format!("name={network}"),
                    ])
                    .output()
                    .map(|o| o.stdout.is_empty())
                    .unwrap_or(true);
                if left {
                    break;
                }
                docker_quiet(&["network", "rm", network]);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for volume in ["proxy-state", "controller-state"] {
            for _ in 0..40 {
                let gone = Command::new("docker")
                    .args(["volume", "rm", &format!("{}_{volume}", self.name)])
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
}

impl Stack {
    fn deploy() -> Stack {
        let name = format!("ilst{}", std::process::id());
        let certs = Scratch::new("stack");
        certs.issue_certs(&["controller"], &["prod", "dev"]);
        let (prod, dev) = (free_port(), free_port());
        let stack = Stack {
            prod_network: format!("{name}-apps-prod"),
            dev_network: format!("{name}-apps-dev"),
            other_networks: Vec::new(),
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
            .env("PROD_APPS_NETWORK", &stack.prod_network)
            .env("DEV_APPS_NETWORK", &stack.dev_network)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker stack deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    /// An app service on `network` answering with its name.
    fn app(&mut self, name: &str, network: &str, labels: &[(&str, &str)]) -> String {
        let full = format!("{}-{name}", self.name);
        let mut args: Vec<String> = [
            "service",
            "create",
            "-d",
            "-q",
            "--name",
            &full,
            "--network",
            network,
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

    /// The running containers of service `svc` (a stack service's short name, or an app's
    /// full name).
    fn containers(&self, svc: &str) -> Vec<String> {
        let full = if svc.starts_with(&self.name) {
            svc.to_string()
        } else {
            format!("{}_{svc}", self.name)
        };
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={full}"),
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// The one running container of `svc`.
    fn container(&self, svc: &str) -> String {
        let all = self.containers(svc);
        assert_eq!(all.len(), 1, "one container of {svc}: {all:?}");
        all[0].clone()
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

/// The address of `container` on `network`.
fn ip(container: &str, network: &str) -> String {
    docker(&[
        "inspect",
        container,
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    ])
}

/// `interlock check --docker` run from the image on this manager, as docs/migrating.md
/// shows it: what it says about service `name` (its `ERROR` line and the lines under it).
fn check_says(name: &str) -> String {
    let out = Command::new("docker")
        .args(["run", "--rm", "--user", "root", "-v"])
        .args(["/var/run/docker.sock:/var/run/docker.sock:ro", IMAGE])
        .args(["check", "--docker", "--docker-mode", "swarm"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut said = Vec::new();
    let mut lines = text.lines().skip_while(|l| !l.contains(name));
    if let Some(first) = lines.next() {
        said.push(first);
        said.extend(lines.take_while(|l| l.starts_with("  ")));
    }
    said.join("\n")
}

/// `interlock health --admin ADDR` from a new container on `network` (what any task on that
/// network can do): `Ok(answer)` when ADDR answered 200, else the error it printed.
fn ask_from(network: &str, addr: &str) -> Result<String, String> {
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", network, IMAGE])
        .args(["health", "--admin", addr, "--timeout", "3"])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn the_example_stack_routes_each_cluster_and_survives_its_controller() {
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
    let (prod_net, dev_net) = (stack.prod_network.clone(), stack.dev_network.clone());
    let web_prod = stack.app("web-prod", &prod_net, &labels("prod", "web.test"));
    stack.app("web-dev", &dev_net, &labels("dev", "web.test"));
    stack.app(
        "plain",
        &prod_net,
        &[("com.docker.lb.hosts", "plain.test"), port[0]],
    );
    stack.app(
        "broken-dev",
        &dev_net,
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

    // Every task of the stack turns healthy: the image's HEALTHCHECK (`interlock health`,
    // asking the loopback admin listener) passes once each instance serves.
    wait_until(Duration::from_secs(90), || {
        ["controller", "proxy-prod", "proxy-dev"].iter().all(|svc| {
            stack.containers(svc).iter().any(|c| {
                docker(&["inspect", c, "--format", "{{.State.Health.Status}}"]) == "healthy"
            })
        })
    });

    // The state directory is the proxy user's (also on the stack's fresh named volume):
    // each proxy saved its snapshot there.
    assert!(
        image_layout(IMAGE).contains("drwxr-xr-x 65532/65532 var/lib/interlock\n"),
        "{}",
        image_layout(IMAGE)
    );
    for (svc, file) in [("proxy-prod", "prod.json"), ("proxy-dev", "dev.json")] {
        let c = stack.container(svc);
        wait_until(Duration::from_secs(20), || {
            Command::new("docker")
                .args(["cp", &format!("{c}:/var/lib/interlock/{file}"), "-"])
                .output()
                .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
        });
    }

    // Isolation: dev's tasks share no network with prod's tasks or prod's proxies (overlay
    // networks are separate layer-2 segments, so nothing on dev's network can address them;
    // no packet is sent to prove it, since from a dev task a prod address is routed only
    // through the node's default route, off this machine). On prod's network, prod's app and
    // its proxy's traffic port answer, but the admin listener does not.
    let networks = |c: &str| -> Vec<String> {
        docker(&[
            "inspect",
            c,
            "--format",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    };
    let web_dev = format!("{}-web-dev", stack.name);
    let dev_side = [
        networks(&stack.container(&web_dev)),
        networks(&stack.container("proxy-dev")),
    ];
    let prod_side = [
        networks(&stack.container(&web_prod)),
        networks(&stack.container("proxy-prod")),
    ];
    assert_eq!(
        dev_side[0],
        [dev_net.as_str()],
        "a dev task is on dev's apps network only"
    );
    assert_eq!(
        prod_side[0],
        [prod_net.as_str()],
        "a prod task is on prod's apps network only"
    );
    for net in &dev_side[0] {
        assert!(
            !prod_side.iter().flatten().any(|p| p == net),
            "a dev task shares network {net} with prod: {dev_side:?} {prod_side:?}"
        );
    }
    assert!(
        !prod_side[1].contains(&dev_net) && !dev_side[1].contains(&prod_net),
        "each cluster's proxies join only their own apps network: {dev_side:?} {prod_side:?}"
    );
    let app_ip = ip(&stack.container(&web_prod), &prod_net);
    let proxy_ip = ip(&stack.container("proxy-prod"), &prod_net);
    let reached = ask_from(&prod_net, &format!("{app_ip}:9001"));
    assert!(
        reached.as_ref().is_ok_and(|a| a.starts_with("web-prod")),
        "a prod task reaches prod's app: {reached:?}"
    );
    let traffic = ask_from(&prod_net, &format!("{proxy_ip}:8080"));
    assert!(
        traffic
            .as_ref()
            .is_err_and(|e| e.contains("not serving (503)")),
        "prod's proxy answers on prod's network (503: no host `admin`): {traffic:?}"
    );
    let admin = ask_from(&prod_net, &format!("{proxy_ip}:9090"));
    assert!(
        admin.as_ref().is_err_and(|e| e.contains("connecting")),
        "prod's admin listener is not on the apps network: {admin:?}"
    );

    // Interlock's own demo, verbatim (its own overlay network, no cluster): not routed, and
    // `check --docker` says what to change, one thing at a time; changed as
    // docs/migrating.md says, it routes.
    let demo_net = format!("{}-demo", stack.name);
    docker(&["network", "create", "-d", "overlay", &demo_net]);
    stack.other_networks.push(demo_net.clone());
    let demo = stack.app(
        "demo",
        &demo_net,
        &[("com.docker.lb.hosts", "demo.test"), port[0]],
    );
    let mut said = String::new();
    wait_until(Duration::from_secs(60), || {
        said = check_says(&demo);
        said.contains("ERROR") && said.contains("com.docker.lb.service_cluster")
    });
    eprintln!("check --docker on the verbatim demo:\n{said}");
    assert!(said.contains("\"prod\""), "{said}");
    assert_eq!(stack.answer(stack.prod, "demo.test"), "503");
    docker(&[
        "service",
        "update",
        "-d",
        "--label-add",
        "com.docker.lb.service_cluster=prod",
        &demo,
    ]);
    wait_until(Duration::from_secs(60), || {
        said = check_says(&demo);
        said.contains("com.docker.lb.network") && said.contains(&prod_net)
    });
    eprintln!("check --docker once labelled prod:\n{said}");
    assert_eq!(stack.answer(stack.prod, "demo.test"), "503");
    docker(&[
        "service",
        "update",
        "-d",
        "--network-rm",
        &demo_net,
        "--network-add",
        &prod_net,
        &demo,
    ]);
    wait_until(Duration::from_secs(90), || {
        stack.answer(stack.prod, "demo.test") == "demo"
    });
    let said = check_says(&demo);
    assert!(said.starts_with("ok"), "{said}");

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
    stack.app("api-prod", &prod_net, &labels("prod", "api.test"));
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

    // The controller is gone for good (scaled to 0) and prod's proxy restarts: it serves
    // the routes it saved in its state file, and is healthy doing so.
    let controller = format!("{}_controller", stack.name);
    docker(&["service", "scale", "-d", &format!("{controller}=0")]);
    wait_until(Duration::from_secs(60), || {
        stack.containers("controller").is_empty()
    });
    let before = stack.container("proxy-prod");
    docker(&[
        "service",
        "update",
        "-d",
        "--force",
        &format!("{}_proxy-prod", stack.name),
    ]);
    wait_until(Duration::from_secs(120), || {
        let now = stack.containers("proxy-prod");
        now.len() == 1
            && now[0] != before
            && stack.answer(stack.prod, "web.test") == "web-prod"
            && stack.answer(stack.prod, "api.test") == "api-prod"
    });
    let after = stack.container("proxy-prod");
    wait_until(Duration::from_secs(60), || {
        docker(&["inspect", &after, "--format", "{{.State.Health.Status}}"]) == "healthy"
    });
}
