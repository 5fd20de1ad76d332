//! The Docker provider against a real Docker daemon (see docs/testing.md): a private one this
//! test starts, the one-node swarm of testkit/src/multinode.rs (tests/multinode/bed.sh), a
//! dockerd with its own data root, socket and containerd namespace in a network namespace of
//! its own, removed at the end (also on panic). The machine's own engine is never used: every
//! service, network, container and image of this test is the bed's, and the proxies and
//! `interlock check` see nothing but them.
//!
//! One test runs the scenarios in order on that daemon (each removes what it made) and prints
//! one line per scenario; it fails at the end, naming every scenario that failed.
//!
//! Swarm task IPs live on overlay networks outside the node's reach, so for Swarm scenarios
//! interlock runs the way it is deployed: as a container on the services' overlay network,
//! with the daemon's socket mounted and its ports published on the node's address, which the
//! test reaches through the bed's switch. Images are built locally (`docker import` of the
//! test binaries and their libraries; nothing is pulled). The plain-container scenario runs
//! interlock in the node's network namespace (`nsenter --net`), where the addresses of the
//! daemon's bridge network are, listening on the node's address.
//!
//! INTERLOCK_SKIP_DOCKER=1 or INTERLOCK_SKIP_MULTINODE=1 mark the test ignored (build.rs); on
//! a machine that cannot host the bed (root, ip, nsenter, unshare, dockerd) it fails, never
//! passes silently.

use interlock_testkit as common;

use common::engine::{
    backend_image, docker, docker_command, docker_quiet, http_get, import_image,
    run_backend_container, use_daemon, wait_until,
};
use common::multinode::{missing_tools, Bed, BedNode};
use common::{free_port, Proc};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BACKEND_IMAGE: &str = "interlock-test/backend:dev";
const PROXY_IMAGE: &str = "interlock-test/interlock:dev";
/// The bed daemon's bridge network of the plain-container scenario (it has no default bridge).
const BRIDGE: &str = "ilt-bridge";

/// The bed's daemon socket's path (what a container mounts at /var/run/docker.sock).
fn socket(node: &BedNode) -> &str {
    node.host.trim_start_matches("unix://")
}

/// One test's swarm resources, removed on drop.
struct Swarm {
    prefix: String,
    network: String,
    proxy: String,
    http: SocketAddr,
    admin: SocketAddr,
    services: Mutex<Vec<String>>,
}

impl Swarm {
    fn new(node: &BedNode, test: &str) -> Swarm {
        let prefix = format!("ilt{}-{test}", std::process::id());
        let network = format!("{prefix}-net");
        let proxy = format!("{prefix}-proxy");
        docker_quiet(&["rm", "-f", &proxy]);
        docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            &network,
        ]);
        docker(&[
            "run",
            "-d",
            "--name",
            &proxy,
            "--network",
            &network,
            "-v",
            &format!("{}:/var/run/docker.sock", socket(node)),
            "-p",
            &format!("{}::8080", node.addr),
            "-p",
            &format!("{}::9090", node.addr),
            "-e",
            "INTERLOCK_LOG=info,interlock=debug",
            PROXY_IMAGE,
            "--docker",
            "--docker-mode",
            "swarm",
            "--docker-poll-ms",
            "250",
            "--listen",
            "0.0.0.0:8080",
            "--admin",
            "0.0.0.0:9090",
        ]);
        let port = |p: &str| -> SocketAddr {
            docker(&["port", &proxy, p])
                .lines()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let s = Swarm {
            http: port("8080/tcp"),
            admin: port("9090/tcp"),
            prefix,
            network,
            proxy,
            services: Mutex::new(Vec::new()),
        };
        wait_until(Duration::from_secs(20), || {
            http_get(s.admin, "admin", "/healthz").is_some_and(|r| r.status == 200)
        });
        s
    }

    /// A backend service `<prefix>-<name>` routed at `<name>.<prefix>.test` on port 9001,
    /// with `extra` labels.
    fn routed(&self, name: &str, extra: &[(&str, &str)]) -> String {
        let host = self.host(name);
        let labels = [
            &[
                ("com.docker.lb.hosts", host.as_str()),
                ("com.docker.lb.port", "9001"),
            ][..],
            extra,
        ]
        .concat();
        self.service(name, 1, &labels)
    }

    /// Creates a backend service `<prefix>-<name>` on the test network with these labels.
    fn service(&self, name: &str, replicas: u32, labels: &[(&str, &str)]) -> String {
        let full = format!("{}-{name}", self.prefix);
        let mut args: Vec<String> = vec![
            "service".into(),
            "create".into(),
            "-d".into(),
            "--name".into(),
            full.clone(),
            "--network".into(),
            self.network.clone(),
            "--replicas".into(),
            replicas.to_string(),
            "--env".into(),
            "BACKEND_NAME={{.Service.Name}}.{{.Task.Slot}}".into(),
            "--stop-grace-period".into(),
            "5s".into(),
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend([
            BACKEND_IMAGE.to_string(),
            "--listen".into(),
            "0.0.0.0:9001".into(),
        ]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.services.lock().unwrap().push(full.clone());
        full
    }

    fn host(&self, name: &str) -> String {
        format!("{name}.{}.test", self.prefix)
    }

    fn routes(&self) -> serde_json::Value {
        let r = http_get(self.admin, "admin", "/routes").expect("admin /routes answers");
        serde_json::from_slice(&r.body).unwrap()
    }

    fn logs(&self) -> String {
        let out = docker_command()
            .args(["logs", &self.proxy])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- interlock logs ---\n{}", self.logs());
        }
        docker_quiet(&["rm", "-f", &self.proxy]);
        for s in self.services.lock().unwrap().iter() {
            docker_quiet(&["service", "rm", s]);
        }
        // The network is removable once the service tasks are gone.
        for _ in 0..40 {
            let ok = docker_command()
                .args(["network", "rm", &self.network])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `interlock check --docker --docker-mode swarm ARGS` against the bed's daemon: its exit
/// code and standard output.
fn check_swarm(node: &BedNode, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_interlock"))
        .env("DOCKER_HOST", &node.host)
        .args(["check", "--docker", "--docker-mode", "swarm"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Distinct backends answering `host` over `n` requests (all must be 200).
fn backends_seen(addr: SocketAddr, host: &str, n: usize) -> HashSet<String> {
    (0..n)
        .filter_map(|_| http_get(addr, host, "/"))
        .filter(|r| r.status == 200)
        .filter_map(|r| r.backend)
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn swarm_tasks_are_routed_scaled_and_rolled_without_errors(node: &BedNode) {
    let sw = Swarm::new(node, "roll");
    let host = sw.host("web");
    let svc = sw.service(
        "web",
        2,
        &[
            ("com.docker.lb.hosts", &host),
            ("com.docker.lb.port", "9001"),
        ],
    );

    wait_until(Duration::from_secs(30), || {
        backends_seen(sw.http, &host, 10).len() == 2
    });
    docker(&["service", "scale", "-d", &format!("{svc}=3")]);
    wait_until(Duration::from_secs(30), || {
        backends_seen(sw.http, &host, 12).len() == 3
    });
    let routes = sw.routes();
    assert_eq!(
        routes["routes"][0]["endpoints"].as_array().unwrap().len(),
        3,
        "{routes}"
    );

    // Between events, a poll (every 250 ms here) asks the engine for the task list alone,
    // not for the services and networks again: 3 s of steady state with the daemon's API
    // log on.
    node.set_debug(true);
    std::thread::sleep(Duration::from_millis(500));
    let from = node.daemon_log().len();
    std::thread::sleep(Duration::from_secs(3));
    let log = node.daemon_log();
    node.set_debug(false);
    let calls = |path: &str| {
        log[from.min(log.len())..]
            .lines()
            .filter(|l| l.contains("Calling GET") && l.contains(path))
            .count()
    };
    let (tasks, services, networks) = (calls("/tasks"), calls("/services"), calls("/networks"));
    eprintln!(
        "3 s of steady state: {tasks} task lists, {services} service lists, {networks} network lists"
    );
    assert!(tasks >= 6, "the provider polled tasks {tasks} times in 3 s");
    assert!(
        services <= 1 && networks <= 1,
        "polls between events listed services {services} and networks {networks} times"
    );

    // Rolling update (one task at a time) and a scale-down under continuous load.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, host, addr) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                host.clone(),
                sw.http,
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(addr, &host, "/") {
                        Some(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failed.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    docker(&[
        "service",
        "update",
        "--quiet",
        "--force",
        "--update-parallelism",
        "1",
        "--update-delay",
        "500ms",
        &svc,
    ]);
    docker(&["service", "scale", &format!("{svc}=1")]);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "rolling update + scale-down under load: {ok} ok, {} failed",
        failed.len()
    );
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(
        failed.is_empty(),
        "failed requests during the rolling update: {:?}",
        &failed[..failed.len().min(5)]
    );
    wait_until(Duration::from_secs(20), || {
        backends_seen(sw.http, &host, 6).len() == 1
    });
}

fn label_changes_go_live_fast_and_a_bad_label_stays_isolated(node: &BedNode) {
    let sw = Swarm::new(node, "labels");
    let good = sw.host("good");
    let moving = sw.host("moving");
    sw.service(
        "good",
        1,
        &[
            ("com.docker.lb.hosts", &good),
            ("com.docker.lb.port", "9001"),
        ],
    );
    let svc = sw.service(
        "moving",
        1,
        &[
            ("com.docker.lb.hosts", &moving),
            ("com.docker.lb.port", "9001"),
        ],
    );
    wait_until(Duration::from_secs(30), || {
        http_get(sw.http, &good, "/").is_some_and(|r| r.status == 200)
            && http_get(sw.http, &moving, "/").is_some_and(|r| r.status == 200)
    });

    // Label change -> live route: measured from the update command's return.
    let mut times = Vec::new();
    for i in 0..10 {
        let new_host = sw.host(&format!("v{i}"));
        docker(&[
            "service",
            "update",
            "-d",
            "--label-add",
            &format!("com.docker.lb.hosts={new_host}"),
            &svc,
        ]);
        let start = Instant::now();
        wait_until(Duration::from_secs(10), || {
            http_get(sw.http, &new_host, "/").is_some_and(|r| r.status == 200)
        });
        times.push(start.elapsed());
    }
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    eprintln!(
        "label change -> route live: p50 {p50:?}, p99 {p99:?} over {} changes",
        times.len()
    );
    assert!(p50 < Duration::from_secs(1), "p50 {p50:?}");

    // A bad label: the service keeps its last good routes; every other service serves.
    let last_host = sw.host("v9");
    docker(&[
        "service",
        "update",
        "-d",
        "--label-add",
        "com.docker.lb.port=nine",
        &svc,
    ]);
    wait_until(Duration::from_secs(10), || {
        sw.routes()["report"]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    let report = sw.routes()["report"]["errors"][0].clone();
    assert_eq!(report["service"], svc.as_str(), "{report}");
    assert_eq!(
        report["errors"][0]["label"], "com.docker.lb.port",
        "{report}"
    );
    assert_eq!(report["kept_last_good"], true, "{report}");
    assert_eq!(http_get(sw.http, &last_host, "/").unwrap().status, 200);
    assert_eq!(http_get(sw.http, &good, "/").unwrap().status, 200);

    // A new service that is bad from the start is not routed; the others still are.
    let broken = sw.host("broken");
    sw.service(
        "broken",
        1,
        &[("com.docker.lb.hosts", &format!("{broken},bad host!"))],
    );
    wait_until(Duration::from_secs(20), || {
        sw.routes()["report"]["errors"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    });
    assert_eq!(http_get(sw.http, &broken, "/").unwrap().status, 503);
    assert_eq!(http_get(sw.http, &good, "/").unwrap().status, 200);
    assert_eq!(http_get(sw.http, &last_host, "/").unwrap().status, 200);
    assert!(
        sw.logs().contains("com.docker.lb.hosts"),
        "the error is logged with the label name"
    );
}

fn canary_splits_by_task_count_and_vip_mode_uses_one_upstream(node: &BedNode) {
    let sw = Swarm::new(node, "canary");
    let host = sw.host("app");
    let v1 = sw.service(
        "v1",
        3,
        &[
            ("com.docker.lb.hosts", &host),
            ("com.docker.lb.port", "9001"),
        ],
    );
    let v2 = sw.service(
        "v2",
        1,
        &[
            ("com.docker.lb.hosts", &host),
            ("com.docker.lb.port", "9001"),
        ],
    );
    wait_until(Duration::from_secs(30), || {
        backends_seen(sw.http, &host, 16).len() == 4
    });
    let mut by_service: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let r = http_get(sw.http, &host, "/").unwrap();
        assert_eq!(r.status, 200);
        let b = r.backend.unwrap();
        let svc = b.rsplit_once('.').unwrap().0.to_string();
        *by_service.entry(svc).or_default() += 1;
    }
    let share = by_service[&v2] as f64 / 200.0;
    eprintln!("canary split: {by_service:?} (v2 share {share:.2})");
    assert!(
        (0.15..=0.35).contains(&share),
        "v2 should get about 1/4: {by_service:?}"
    );
    assert!(by_service[&v1] > 0);

    let vip_host = sw.host("vip");
    let vip = sw.service(
        "vip",
        2,
        &[
            ("com.docker.lb.hosts", &vip_host),
            ("com.docker.lb.port", "9001"),
            ("com.docker.lb.backend_mode", "vip"),
        ],
    );
    let vip_route = || {
        sw.routes()["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == vip_host.as_str())
            .cloned()
    };
    wait_until(Duration::from_secs(30), || vip_route().is_some());
    let route = vip_route().unwrap();
    let eps = route["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 1, "VIP mode has one upstream: {route}");
    let vip_addr = docker(&[
        "service",
        "inspect",
        &vip,
        "--format",
        "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}",
    ]);
    let ep = eps[0]["addr"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert!(
        vip_addr.contains(&format!("{ep}/")),
        "endpoint {ep} is one of the service VIPs {vip_addr}"
    );
    // Traffic to a VIP needs IPVS in the kernel; on a kernel without it (dockerd logs
    // "Could not get ipvs family information") the VIP itself cannot answer, so it is
    // asked only where /proc/net/ip_vs exists.
    if Path::new("/proc/net/ip_vs").exists() {
        wait_until(Duration::from_secs(30), || {
            http_get(sw.http, &vip_host, "/").is_some_and(|r| r.status == 200)
        });
    } else {
        eprintln!(
            "kernel without IPVS: VIP traffic not exercised (routing to the VIP is asserted above)"
        );
    }
}

fn check_reads_the_live_engine_and_names_the_bad_label(node: &BedNode) {
    let sw = Swarm::new(node, "check");
    let good = sw.service(
        "ok",
        1,
        &[
            ("com.docker.lb.hosts", &sw.host("ok")),
            ("com.docker.lb.port", "9001"),
        ],
    );
    let bad = sw.service(
        "bad",
        1,
        &[
            ("com.docker.lb.hosts", &sw.host("bad")),
            ("com.docker.lb.port", "80x"),
        ],
    );
    let (code, text) = check_swarm(node, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("ok    {good}")), "{text}");
    assert!(text.contains(&format!("ERROR {bad}")), "{text}");
    assert!(
        text.contains("label com.docker.lb.port=\"80x\": expected a port number"),
        "{text}"
    );
}

/// A unix-socket relay to the bed's daemon that the test can cut and restore: from
/// interlock's side, exactly a daemon that goes away and comes back.
struct EngineRelay {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EngineRelay {
    fn start(path: &Path, engine: &str, rt: &tokio::runtime::Runtime) -> EngineRelay {
        let engine = engine.to_string();
        let _ = std::fs::remove_file(path);
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(path).unwrap()
        };
        let task = rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let engine = engine.clone();
                conns.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(engine).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        EngineRelay {
            path: path.to_path_buf(),
            task: Some(task),
        }
    }

    /// Cuts every connection and stops listening.
    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineRelay {
    fn drop(&mut self) {
        self.cut();
    }
}

fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let r = http_get(admin, "admin", "/metrics")?;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn containers_mode_survives_engine_loss_and_resyncs(node: &BedNode) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = format!("ilt{}-ctr", std::process::id());
    let sock = std::env::temp_dir().join(format!("{id}.sock"));
    let mut relay = EngineRelay::start(&sock, socket(node), &rt);
    let containers = Arc::new(Mutex::new(Vec::<String>::new()));
    struct Cleanup(Arc<Mutex<Vec<String>>>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in self.0.lock().unwrap().iter() {
                docker_quiet(&["rm", "-f", c]);
            }
        }
    }
    let _cleanup = Cleanup(containers.clone());
    let run_backend = |name: &str, host: &str| {
        let full = format!("{id}-{name}");
        run_backend_container(&full, BACKEND_IMAGE, name, host, &["--network", BRIDGE]);
        containers.lock().unwrap().push(full);
    };
    // In the node's network namespace, where the bridge network's addresses are.
    let (http, admin) = (free_port(), free_port());
    let _proxy = Proc(
        node.command_in_netns(env!("CARGO_BIN_EXE_interlock"))
            .args([
                "--docker",
                "--docker-mode",
                "containers",
                "--docker-poll-ms",
                "250",
            ])
            .args([
                "--listen",
                &format!("{}:{http}", node.addr),
                "--admin",
                &format!("{}:{admin}", node.addr),
            ])
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = SocketAddr::from((node.addr, http));
    let admin = SocketAddr::from((node.addr, admin));
    let one = format!("one.{id}.test");
    run_backend("one", &one);
    wait_until(Duration::from_secs(20), || {
        http_get(http, &one, "/").is_some_and(|r| r.status == 200)
    });
    assert_eq!(
        http_get(http, &one, "/").unwrap().backend.as_deref(),
        Some("one")
    );
    assert_eq!(metric(admin, "interlock_docker_up"), Some(1.0));

    // The engine goes away: routes keep serving, the loss is reported.
    relay.cut();
    wait_until(Duration::from_secs(10), || {
        metric(admin, "interlock_docker_up") == Some(0.0)
    });
    for _ in 0..20 {
        assert_eq!(
            http_get(http, &one, "/").unwrap().status,
            200,
            "last good routes keep serving"
        );
    }
    assert!(metric(admin, "interlock_docker_errors_total").unwrap_or(0.0) >= 1.0);

    // Changes made while it was away are picked up after the reconnect's resync.
    let two = format!("two.{id}.test");
    run_backend("two", &two);
    let _relay = EngineRelay::start(&sock, socket(node), &rt);
    wait_until(Duration::from_secs(20), || {
        http_get(http, &two, "/").is_some_and(|r| r.status == 200)
    });
    assert_eq!(metric(admin, "interlock_docker_up"), Some(1.0));

    // A stopped container leaves the table.
    docker(&["rm", "-f", &format!("{id}-one")]);
    wait_until(Duration::from_secs(10), || {
        http_get(http, &one, "/").is_some_and(|r| r.status == 503)
    });
}

fn check_covers_every_cluster_and_names_networks_the_proxies_cannot_reach(node: &BedNode) {
    let sw = Swarm::new(node, "clusters");
    // A second network that prod's proxies are not attached to.
    let other = format!("{}-other", sw.prefix);
    docker(&["network", "create", "-d", "overlay", "--attachable", &other]);
    struct NetGuard(String);
    impl Drop for NetGuard {
        fn drop(&mut self) {
            for _ in 0..40 {
                let ok = docker_command()
                    .args(["network", "rm", &self.0])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    // Declared first, dropped after the services that use the network (Swarm's Drop).
    let _other = NetGuard(other.clone());
    // prod's proxies, as the example stack declares them (no task needed: the controller
    // reads the service's spec).
    let proxy = format!("{}-proxy-prod", sw.prefix);
    docker(&[
        "service",
        "create",
        "-d",
        "--name",
        &proxy,
        "--replicas",
        "0",
        "--network",
        &sw.network,
        "--env",
        "INTERLOCK_CONTROLLER=https://controller:7443",
        PROXY_IMAGE,
        "proxy",
        "--cluster",
        "prod",
    ]);
    sw.services.lock().unwrap().push(proxy);
    let good = sw.routed("good", &[("com.docker.lb.service_cluster", "prod")]);
    let dev = sw.routed("dev", &[("com.docker.lb.service_cluster", "dev")]);
    let unclustered = sw.routed("demo", &[]);
    let astray = sw.routed(
        "astray",
        &[
            ("com.docker.lb.service_cluster", "prod"),
            ("com.docker.lb.network", &other),
        ],
    );
    docker(&["service", "update", "-d", "--network-add", &other, &astray]);
    // Wait until the update is in the spec the check reads.
    wait_until(Duration::from_secs(30), || {
        docker(&[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Networks}}",
            &astray,
        ])
        .matches("Target")
        .count()
            == 2
    });
    let (code, text) = check_swarm(node, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("== cluster \"prod\""), "{text}");
    assert!(text.contains("== cluster \"dev\""), "{text}");
    assert!(text.contains("== the default cluster"), "{text}");
    assert!(text.contains(&format!("ok    {good}")), "{text}");
    assert!(text.contains(&format!("ERROR {dev}")), "{text}");
    assert!(text.contains(&format!("ERROR {unclustered}")), "{text}");
    assert!(text.contains(&format!("ERROR {astray}")), "{text}");
    assert!(
        text.contains(&format!("label com.docker.lb.network={other:?}: expected a network the proxies of cluster \"prod\"")),
        "{text}"
    );
    assert!(
        text.contains("no proxy serves services without com.docker.lb.service_cluster"),
        "{text}"
    );
    assert!(
        text.contains("label com.docker.lb.service_cluster=\"dev\": expected a cluster served by a proxy service (\"prod\")"),
        "{text}"
    );
    // One cluster at a time still works.
    let (code, text) = check_swarm(node, &["--cluster", "prod"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains(&dev), "{text}");
}

/// A scenario: it runs on the bed's node, and removes what it made.
type Scenario = fn(&BedNode);

/// The scenarios, in the order they run on the bed's daemon.
const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "swarm_tasks_are_routed_scaled_and_rolled_without_errors",
        swarm_tasks_are_routed_scaled_and_rolled_without_errors,
    ),
    (
        "label_changes_go_live_fast_and_a_bad_label_stays_isolated",
        label_changes_go_live_fast_and_a_bad_label_stays_isolated,
    ),
    (
        "canary_splits_by_task_count_and_vip_mode_uses_one_upstream",
        canary_splits_by_task_count_and_vip_mode_uses_one_upstream,
    ),
    (
        "check_reads_the_live_engine_and_names_the_bad_label",
        check_reads_the_live_engine_and_names_the_bad_label,
    ),
    (
        "containers_mode_survives_engine_loss_and_resyncs",
        containers_mode_survives_engine_loss_and_resyncs,
    ),
    (
        "check_covers_every_cluster_and_names_networks_the_proxies_cannot_reach",
        check_covers_every_cluster_and_names_networks_the_proxies_cannot_reach,
    ),
];

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
#[cfg_attr(skip_multinode, ignore = "INTERLOCK_SKIP_MULTINODE=1")]
fn docker_provider_on_a_private_daemon() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "this test starts a dockerd of its own and needs {missing:?}"
    );
    let t0 = Instant::now();
    // A one-node swarm (bed.sh initialises it); removed when `bed` drops, also on panic.
    let bed = Bed::up(1, 0);
    let node = bed.manager().clone();
    use_daemon(&node.host);
    backend_image(BACKEND_IMAGE);
    import_image(PROXY_IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));
    docker(&["network", "create", "-d", "bridge", BRIDGE]);
    eprintln!(
        "bed {} ({}) up in {:.1} s, images on it at {:.1} s",
        node.hostname,
        node.addr,
        bed.started_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();
    for (name, scenario) in SCENARIOS {
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| scenario(&node)));
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        eprintln!(
            "scenario {name}: {verdict} in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}
