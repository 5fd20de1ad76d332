//! examples/swarm/stack.yml deployed on a swarm with the image of the repository's
//! Dockerfile: a controller (the only service with the Docker socket) and one proxy per
//! service cluster, routing real Swarm services over the overlay network.
//!
//! The swarm is a private one this test starts: the one-node bed of testkit/src/multinode.rs
//! (tests/multinode/bed.sh), a dockerd with its own data root, socket and containerd
//! namespace in a network namespace of its own, removed at the end (also on panic). The
//! machine's own engine is never used; the images are built on the bed's daemon. Every
//! placement constraint is pointed at its one manager (the stack's variables), and the
//! proxies publish in host mode on the node's address, which the test reaches through the
//! bed's switch (the ingress mesh needs IPVS, which this kernel lacks; see docs/testing.md).
//! The deployed copy of the stack file mounts the bed's socket, not /var/run/docker.sock (the
//! machine's engine), into the controller, and `check --docker` runs with that same mount.
//!
//! INTERLOCK_SKIP_DOCKER=1 or INTERLOCK_SKIP_MULTINODE=1 mark it ignored (build.rs); on a
//! machine that cannot host the bed it fails.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::engine::{
    backend_image, build_image, docker, docker_command, http_get, image_layout, use_daemon,
    wait_until,
};
use common::free_port;
use common::multinode::{missing_tools, Bed, BedNode};
use common::node::{succeed, Scratch};

const IMAGE: &str = "interlock-test/interlock:stack";
const BACKEND_IMAGE: &str = "interlock-test/backend:stack";

/// The deployed stack; its services' logs are printed on drop if the test fails.
struct Stack {
    name: String,
    /// The apps networks of prod and dev.
    prod_network: String,
    dev_network: String,
    certs: Scratch,
    prod: SocketAddr,
    dev: SocketAddr,
    /// prod's TLS listener.
    prod_tls: SocketAddr,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for svc in ["controller", "proxy-prod", "proxy-dev"] {
                let out = docker_command()
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
        // The services, networks and volumes go with the bed's daemon (dropped next).
    }
}

impl Stack {
    fn deploy(node: &BedNode) -> Stack {
        let name = format!("ilst{}", std::process::id());
        let certs = Scratch::new("stack");
        certs.issue_certs(&["controller"], &["prod", "dev"]);
        let (prod, dev) = (free_port(), free_port());
        let (prod_tls, dev_tls) = (free_port(), free_port());
        let stack = Stack {
            prod_tls: SocketAddr::from((node.addr, prod_tls)),
            prod_network: format!("{name}-apps-prod"),
            dev_network: format!("{name}-apps-dev"),
            prod: SocketAddr::from((node.addr, prod)),
            dev: SocketAddr::from((node.addr, dev)),
            name,
            certs,
        };
        let manager = "node.role == manager";
        // The stack file as it is in the tree, but for the controller's socket mount: the
        // bed's daemon has its own socket (/var/run/docker.sock is the machine's engine).
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/swarm/stack.yml");
        let text = std::fs::read_to_string(&file).unwrap();
        let mut mounts = 0;
        let text: String = text
            .lines()
            .map(|l| {
                if l.contains("/var/run/docker.sock") && !l.trim_start().starts_with('#') {
                    mounts += 1;
                    l.replacen("/var/run/docker.sock", socket(node), 1)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            mounts, 1,
            "the stack file mounts the Docker socket once (the controller)"
        );
        let deployed = stack.certs.path("stack.yml");
        std::fs::write(&deployed, text).unwrap();
        succeed(
            docker_command()
                .args(["stack", "deploy", "-c"])
                .arg(&deployed)
                .arg(&stack.name)
                .env("INTERLOCK_IMAGE", IMAGE)
                .env("INTERLOCK_CERTS", &stack.certs.0)
                .env("PROD_HTTP_PORT", prod.to_string())
                .env("DEV_HTTP_PORT", dev.to_string())
                .env("PROD_HTTPS_PORT", prod_tls.to_string())
                .env("DEV_HTTPS_PORT", dev_tls.to_string())
                .env("CONTROLLER_PLACEMENT", manager)
                .env("PROD_PLACEMENT", manager)
                .env("DEV_PLACEMENT", manager)
                .env("PROD_APPS_NETWORK", &stack.prod_network)
                .env("DEV_APPS_NETWORK", &stack.dev_network),
            "docker stack deploy",
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

/// The bed's daemon socket's path (what a container mounts at /var/run/docker.sock).
fn socket(node: &BedNode) -> &str {
    node.host.trim_start_matches("unix://")
}

/// `interlock check --docker` run from the image on this manager, as docs/migrating.md
/// shows it (with the bed's socket as the node's /var/run/docker.sock; no network, which it
/// does not need and the bed's daemon has no default bridge for): what it says about
/// service `name` (its `ERROR` line and the lines under it).
fn check_says(node: &BedNode, name: &str) -> String {
    let out = docker_command()
        .args(["run", "--rm", "--network", "none", "--user", "root", "-v"])
        .arg(format!("{}:/var/run/docker.sock:ro", socket(node)))
        .arg(IMAGE)
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
    let out = docker_command()
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

/// A load on `addr` for `host`, one request at a time, until [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, host: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(addr, host, "/") {
                        Some(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        };
        Load {
            stop,
            ok,
            failed,
            thread,
        }
    }

    /// Stops it: (requests answered 200, the others).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
#[cfg_attr(skip_multinode, ignore = "INTERLOCK_SKIP_MULTINODE=1")]
fn the_example_stack_routes_each_cluster_and_survives_its_controller() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "this test starts a dockerd of its own and needs {missing:?}"
    );
    let t0 = Instant::now();
    // A one-node swarm (bed.sh initialises it); removed when `bed` drops, also on panic,
    // after the stack (declared later, dropped first).
    let bed = Bed::up(1, 0);
    let node = bed.manager().clone();
    use_daemon(&node.host);
    backend_image(BACKEND_IMAGE);
    build_image(IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));
    eprintln!(
        "bed {} ({}) up in {:.1} s, images on it at {:.1} s",
        node.hostname,
        node.addr,
        bed.started_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let mut stack = Stack::deploy(&node);
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
            docker_command()
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
    let demo = stack.app(
        "demo",
        &demo_net,
        &[("com.docker.lb.hosts", "demo.test"), port[0]],
    );
    let mut said = String::new();
    wait_until(Duration::from_secs(60), || {
        said = check_says(&node, &demo);
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
        said = check_says(&node, &demo);
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
    let said = check_says(&node, &demo);
    assert!(said.starts_with("ok"), "{said}");

    // The controller's container is killed: Swarm restarts it; prod traffic never stops,
    // and a change made meanwhile reaches the proxies once it is back.
    let load = Load::start(stack.prod, "web.test");
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
    let (ok, failed) = load.finish();
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

    // A certificate as Docker secrets attached to the controller (not to the proxies), under
    // load: Swarm replaces only the controller's task, prod's proxy serves the certificate
    // over TLS without being replaced, and no request fails meanwhile.
    let web = common::tls::issue(&["web.test"], 4_000_000_000);
    for (ext, text) in [("crt", &web.cert), ("key", &web.key)] {
        let file = stack.certs.path(&format!("web.{ext}"));
        std::fs::write(&file, text).unwrap();
        docker(&[
            "secret",
            "create",
            &format!("{}-web.{ext}", stack.name),
            &file,
        ]);
    }
    let proxy_before = stack.container("proxy-prod");
    let load = Load::start(stack.prod, "web.test");
    docker(&[
        "service",
        "update",
        "-d",
        "--secret-add",
        &format!("source={}-web.crt,target=web.crt", stack.name),
        "--secret-add",
        &format!("source={}-web.key,target=web.key,mode=0400", stack.name),
        &format!("{}_controller", stack.name),
    ]);
    docker(&[
        "service",
        "update",
        "-d",
        "--label-add",
        "com.docker.lb.ssl_cert=web.crt",
        "--label-add",
        "com.docker.lb.ssl_key=web.key",
        &web_prod,
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret_added = Instant::now();
    wait_until(Duration::from_secs(90), || {
        rt.block_on(common::tls::try_served_at(stack.prod_tls, "web.test"))
            .is_some_and(|der| der == web.der)
    });
    eprintln!(
        "the controller's new secret served by prod's proxy {:.1} s after the update",
        secret_added.elapsed().as_secs_f64()
    );
    let (ok, failed) = load.finish();
    eprintln!(
        "prod traffic while the secret was attached to the controller: {ok} ok, {failed} failed"
    );
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "requests failed while a secret was attached to the controller"
    );
    assert_eq!(
        stack.container("proxy-prod"),
        proxy_before,
        "the proxy's task was not replaced"
    );
    let tls_answer = rt.block_on(async {
        let mut tls = common::tls::try_connect_to(stack.prod_tls, "web.test")
            .await
            .unwrap();
        common::tls::get(&mut tls, "web.test").await
    });
    assert_eq!(tls_answer.0, "HTTP/1.1 200 OK");
    assert!(tls_answer.1.starts_with("web-prod"), "{tls_answer:?}");

    // The controller is gone for good (placed where no node is: a global service cannot be
    // scaled to 0) and prod's proxy restarts: it serves the routes it saved in its state
    // file, and is healthy doing so.
    let controller = format!("{}_controller", stack.name);
    docker(&[
        "service",
        "update",
        "-d",
        "--constraint-add",
        "node.hostname == nowhere",
        &controller,
    ]);
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
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
