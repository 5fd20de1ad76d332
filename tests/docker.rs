//! The Docker provider against the real Docker Engine of this machine (see docs/testing.md).
//!
//! Swarm task IPs live on overlay networks the host cannot reach, so for Swarm tests
//! interlock runs the way it is deployed: as a container on the services' overlay network,
//! with the Docker socket mounted and its ports published on 127.0.0.1. Images are built
//! locally (`docker import` of the test binaries and their libraries; nothing is pulled).
//! Plain-container tests run interlock on the host: bridge IPs are reachable from it.
//!
//! INTERLOCK_SKIP_DOCKER=1 marks these tests ignored (build.rs) on a machine without Docker;
//! they fail otherwise, never pass silently.

use interlock_testkit as common;

use common::engine::{
    backend_image, docker, docker_quiet, ensure_swarm, http_get, import_image,
    run_backend_container, wait_until,
};
use common::{free_port, Proc};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Docker tests share one engine: run them one at a time.
static ENGINE: Mutex<()> = Mutex::new(());

const BACKEND_IMAGE: &str = "interlock-test/backend:dev";
const PROXY_IMAGE: &str = "interlock-test/interlock:dev";

/// Builds the two test images once per test run, and makes sure a swarm is active.
fn prepare() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        backend_image(BACKEND_IMAGE);
        import_image(PROXY_IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));
        ensure_swarm();
    });
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
    fn new(test: &str) -> Swarm {
        prepare();
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
            "/var/run/docker.sock:/var/run/docker.sock",
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::9090",
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
        let out = Command::new("docker")
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
            let ok = Command::new("docker")
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

/// `interlock check --docker --docker-mode swarm ARGS`: its exit code and standard output.
fn check_swarm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_interlock"))
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

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn swarm_tasks_are_routed_scaled_and_rolled_without_errors() {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let sw = Swarm::new("roll");
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

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn label_changes_go_live_fast_and_a_bad_label_stays_isolated() {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let sw = Swarm::new("labels");
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

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn canary_splits_by_task_count_and_vip_mode_uses_one_upstream() {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let sw = Swarm::new("canary");
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
    // Traffic to a VIP needs IPVS in the kernel; this sandbox's kernel has none (dockerd logs
    // "Could not get ipvs family information"), so the VIP itself cannot answer here.
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

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn check_reads_the_live_engine_and_names_the_bad_label() {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let sw = Swarm::new("check");
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
    let (code, text) = check_swarm(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("ok    {good}")), "{text}");
    assert!(text.contains(&format!("ERROR {bad}")), "{text}");
    assert!(
        text.contains("label com.docker.lb.port=\"80x\": expected a port number"),
        "{text}"
    );
}

/// A unix-socket relay to the real engine that the test can cut and restore: from
/// interlock's side, exactly a daemon that goes away and comes back.
struct EngineRelay {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EngineRelay {
    fn start(path: &Path, rt: &tokio::runtime::Runtime) -> EngineRelay {
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
                conns.spawn(async move {
                    if let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
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

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn containers_mode_survives_engine_loss_and_resyncs() {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    prepare();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = format!("ilt{}-ctr", std::process::id());
    let sock = std::env::temp_dir().join(format!("{id}.sock"));
    let mut relay = EngineRelay::start(&sock, &rt);
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
        run_backend_container(&full, BACKEND_IMAGE, name, host, &[]);
        containers.lock().unwrap().push(full);
    };
    let (http, admin) = (free_port(), free_port());
    let _proxy = Proc(
        Command::new(env!("CARGO_BIN_EXE_interlock"))
            .args([
                "--docker",
                "--docker-mode",
                "containers",
                "--docker-poll-ms",
                "250",
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{http}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
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
    let _relay = EngineRelay::start(&sock, &rt);
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

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn check_covers_every_cluster_and_names_networks_the_proxies_cannot_reach() {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let sw = Swarm::new("clusters");
    // A second network that prod's proxies are not attached to.
    let other = format!("{}-other", sw.prefix);
    docker(&["network", "create", "-d", "overlay", "--attachable", &other]);
    struct NetGuard(String);
    impl Drop for NetGuard {
        fn drop(&mut self) {
            for _ in 0..40 {
                let ok = Command::new("docker")
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
    let (code, text) = check_swarm(&[]);
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
    let (code, text) = check_swarm(&["--cluster", "prod"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains(&dev), "{text}");
}
