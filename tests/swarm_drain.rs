//! Drain before stop on a real swarm (see docs/testing.md): a stop-first rolling update of a
//! backend service under load loses no request with the proxy's retries turned off
//! (`com.docker.lb.retries=off`), and a request in flight to a task that leaves finishes.
//!
//! Why it holds: Swarm sets a task's desired state to `shutdown` before its container is told
//! to stop (Docker waits about 2 s more before SIGTERM, for its own load balancer), and
//! interlock takes such a task out of its routes at once (the Docker provider polls tasks
//! fast for a few seconds after a service event); the backend (`examples/backend.rs
//! --lame-duck 3`) goes on serving for 3 s after SIGTERM, then stops accepting and finishes
//! what is in flight, well within its `--stop-grace-period`. On the way in, the backend's
//! HEALTHCHECK makes Swarm report a new task running only once it serves.
//!
//! That the test can fail: with tasks routed while their containers run (whatever Swarm
//! wants), the same update lost 10 of 22,322 requests (502: refused once the lame duck
//! ended), each old task leaving the routes 3 to 6 s after its SIGTERM.
//!
//! On the private one-node swarm of testkit/src/multinode.rs (tests/multinode/bed.sh): a
//! dockerd of its own in a network namespace of its own, removed at the end (also on panic);
//! the machine's own engine is never used. Like tests/docker.rs, interlock (the all-in-one
//! role, the bed's socket mounted) runs as a container on the backend's attachable overlay
//! network, its port published on the node's address, which the test reaches through the
//! bed's switch. Images are imported from the test binaries (nothing is pulled).
//!
//! INTERLOCK_SKIP_DOCKER=1 or INTERLOCK_SKIP_MULTINODE=1 mark the test ignored (build.rs); on
//! a machine that cannot host the bed it fails, never passes silently.

use interlock_testkit as common;

use common::engine::{
    backend_image, docker, docker_command, docker_quiet, http_get, http_get_within, import_image,
    use_daemon, wait_until,
};
use common::multinode::{missing_tools, Bed, BedNode, Load};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BACKEND_IMAGE: &str = "interlock-test/backend:drain";
/// [`BACKEND_IMAGE`] with a HEALTHCHECK: Swarm reports a task running once it serves.
const HEALTHY_BACKEND_IMAGE: &str = "interlock-test/backend:drain-healthy";
const PROXY_IMAGE: &str = "interlock-test/interlock:drain";
const REPLICAS: usize = 3;
/// How long a backend goes on serving after SIGTERM.
const LAME_DUCK_S: u64 = 3;
/// The slow requests in flight across the update: long enough that the first task to leave
/// gets SIGTERM, ends its lame duck and stops accepting while one is in flight (the update
/// starts about a second after them; Docker stops a task's container about 3 s after Swarm
/// set it to shutdown).
const SLOW_MS: u64 = 10_000;

/// The test's network, proxy container and backend service, removed on drop.
struct Drain {
    network: String,
    proxy: String,
    service: String,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Drain {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- interlock logs ---\n{}", logs(&self.proxy));
            eprintln!(
                "--- backend logs ---\n{}",
                logs_of(&["service", "logs", "--raw", &self.service])
            );
        }
        docker_quiet(&["rm", "-f", &self.proxy]);
        docker_quiet(&["service", "rm", &self.service]);
        // The network is removable once the service's tasks are gone.
        for _ in 0..60 {
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

/// stdout and stderr of `docker ARGS`.
fn logs_of(args: &[&str]) -> String {
    let out = docker_command().args(args).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn logs(container: &str) -> String {
    logs_of(&["logs", container])
}

/// The bed's daemon socket's path (what the proxy container mounts).
fn socket(node: &BedNode) -> &str {
    node.host.trim_start_matches("unix://")
}

/// The IDs of the service's tasks Swarm wants running and reports running.
fn running_tasks(service: &str) -> BTreeSet<String> {
    docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}} {{.CurrentState}}",
        "--no-trunc",
    ])
    .lines()
    .filter(|l| l.contains(" Running"))
    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
    .collect()
}

/// Distinct backends (task IDs) answering over `n` fresh-connection requests, all 200.
fn backends_seen(addr: SocketAddr, host: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| http_get(addr, host, "/"))
        .filter(|r| r.status == 200)
        .filter_map(|r| r.backend)
        .collect()
}

fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let r = http_get(admin, "admin", "/metrics")?;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// Now, in seconds since midnight UTC (the clock of the daemons' log timestamps).
fn wall_seconds() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (now.as_secs() % 86_400) as f64 + f64::from(now.subsec_micros()) / 1e6
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (`2026-12-01T06:56:14.903477982Z`).
fn log_seconds(ts: &str) -> Option<f64> {
    let time = ts.split_once('T')?.1.strip_suffix('Z')?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// `HH:MM:SS.mmm` of seconds since midnight.
fn clock(s: f64) -> String {
    let ms = (s * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A task's address on its network.
fn task_address(task: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{range .NetworksAttachments}}{{range .Addresses}}{{.}} {{end}}{{end}}",
        task,
    ])
    .split_whitespace()
    .next()
    .and_then(|a| a.split('/').next())
    .unwrap_or_default()
    .to_string()
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
#[cfg_attr(skip_multinode, ignore = "INTERLOCK_SKIP_MULTINODE=1")]
fn stop_first_rolling_update_loses_no_request_with_retries_off() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "this test starts a dockerd of its own and needs {missing:?}"
    );
    let t0 = Instant::now();
    let bed = Bed::up(1, 0);
    let node = bed.manager().clone();
    use_daemon(&node.host);
    backend_image(BACKEND_IMAGE);
    common::engine::with_healthcheck(BACKEND_IMAGE, HEALTHY_BACKEND_IMAGE);
    import_image(PROXY_IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));
    eprintln!(
        "bed {} ({}) up in {:.1} s, images on it at {:.1} s",
        node.hostname,
        node.addr,
        bed.started_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let prefix = format!("ild{}", std::process::id());
    let network = format!("{prefix}-net");
    let proxy = format!("{prefix}-proxy");
    let service = format!("{prefix}-web");
    let host = format!("web.{prefix}.test");
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
        &format!("{}:/var/run/docker.sock", socket(&node)),
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
        // The default task poll: the fast polls after a service event do the work.
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
    let drain = Drain {
        http: port("8080/tcp"),
        admin: port("9090/tcp"),
        network: network.clone(),
        proxy: proxy.clone(),
        service: service.clone(),
    };
    let (http, admin) = (drain.http, drain.admin);
    wait_until(Duration::from_secs(20), || {
        http_get(admin, "admin", "/healthz").is_some_and(|r| r.status == 200)
    });

    let lame_duck = LAME_DUCK_S.to_string();
    docker(&[
        "service",
        "create",
        "-d",
        "--name",
        &service,
        "--network",
        &network,
        "--replicas",
        &REPLICAS.to_string(),
        // Each task answers with its own ID: a replaced task answers with a new one.
        "--env",
        "BACKEND_NAME={{.Task.ID}}",
        "--stop-grace-period",
        "15s",
        "--update-order",
        "stop-first",
        "--update-parallelism",
        "1",
        "--update-delay",
        "500ms",
        "--label",
        &format!("com.docker.lb.hosts={host}"),
        "--label",
        "com.docker.lb.port=9001",
        "--label",
        "com.docker.lb.retries=off",
        HEALTHY_BACKEND_IMAGE,
        "--listen",
        "0.0.0.0:9001",
        "--lame-duck",
        &lame_duck,
    ]);
    wait_until(Duration::from_secs(60), || {
        backends_seen(http, &host, 4 * REPLICAS).len() == REPLICAS
    });
    let before = running_tasks(&service);
    assert_eq!(before.len(), REPLICAS, "{before:?}");
    assert_eq!(
        backends_seen(http, &host, 4 * REPLICAS),
        before,
        "each task answers with its ID"
    );
    // The switch is in force: the route's labels say so.
    let routes = http_get(admin, "admin", "/routes").expect("admin /routes answers");
    let routes = String::from_utf8_lossy(&routes.body).replace(' ', "");
    assert!(routes.contains(r#""retries":"off""#), "{routes}");
    eprintln!(
        "{REPLICAS} tasks routed at {:.1} s: {before:?}",
        t0.elapsed().as_secs_f64()
    );

    // The routed addresses over time (wall clock, seconds of the day, as in the logs).
    let watching = Arc::new(AtomicBool::new(true));
    let timeline = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<(f64, BTreeSet<String>)> = Vec::new();
            while watching.load(Ordering::Relaxed) {
                if let Some(r) = http_get(admin, "admin", "/routes") {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    let addrs: BTreeSet<String> = v["routes"][0]["endpoints"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e["addr"].as_str())
                                .filter_map(|a| a.split(':').next())
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    if seen.last().is_none_or(|(_, last)| *last != addrs) {
                        seen.push((wall_seconds(), addrs));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };

    // One slow request per task (round robin over three endpoints, nothing else in
    // flight), in flight when the update starts.
    let slow: Vec<_> = (0..REPLICAS)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 30 }));
            let host = host.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                // The answer comes SLOW_MS after the request: the read waits longer than
                // that (a read timeout of exactly SLOW_MS raced the answer by milliseconds).
                let wait = Duration::from_millis(SLOW_MS) + Duration::from_secs(10);
                let r = http_get_within(http, &host, &format!("/slow?ms={SLOW_MS}"), wait);
                (r.map(|r| (r.status, r.backend)), start.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // Keep-alive load, bounded in count and time: 4 clients, a request every 5 ms each.
    let load = Load::start(
        http,
        &host,
        4,
        40_000,
        Duration::from_secs(90),
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_secs(1));
    let update_start = Instant::now();
    eprintln!("{} docker service update --force", clock(wall_seconds()));
    // Without -d: returns once the update has converged.
    docker(&["service", "update", "--quiet", "--force", &service]);
    let update_took = update_start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let report = load.finish();

    let slow: Vec<_> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    watching.store(false, Ordering::Relaxed);
    let timeline = timeline.join().unwrap();
    for (at, addrs) in &timeline {
        eprintln!("{} routes {addrs:?}", clock(*at));
    }
    let after = running_tasks(&service);
    let answering = backends_seen(http, &host, 4 * REPLICAS);
    let upstream_errors = metric(
        admin,
        &format!("interlock_upstream_errors_total{{service=\"{service}\"}}"),
    )
    .unwrap_or(0.0);
    let backend_logs = logs_of(&["service", "logs", "--raw", "-t", &service]);
    // Each old task: when its address left the routes, when its container got SIGTERM.
    let mut drained = Vec::new();
    for task in &before {
        let addr = task_address(task);
        let left = timeline
            .iter()
            .find(|(_, addrs)| !addrs.contains(&addr))
            .map(|(at, _)| *at);
        let sigterm = backend_logs
            .lines()
            .find(|l| l.contains(&format!("backend {task}: stopping")))
            .and_then(|l| log_seconds(l.split_whitespace().next()?));
        eprintln!(
            "task {task} ({addr}): left the routes at {}, SIGTERM at {}",
            left.map_or("never".into(), clock),
            sigterm.map_or("never".into(), clock)
        );
        drained.push((task.clone(), left, sigterm));
    }
    let finished_in_flight = backend_logs
        .lines()
        .filter(|l| l.contains("finishing the requests in flight (1 slow)"))
        .count();
    eprintln!(
        "stop-first update of {REPLICAS} tasks (lame duck {LAME_DUCK_S} s, retries off) took {:.1} s; \
         load: {} requests, {} failed, {} client reconnects after an idle close; by task: {:?}; \
         upstream errors: {upstream_errors}",
        update_took.as_secs_f64(),
        report.requests,
        report.failures,
        report.retried_idle_closes,
        report.backends,
    );
    eprintln!("{backend_logs}");
    for (r, took) in &slow {
        eprintln!("slow request: {r:?} in {:.1} s", took.as_secs_f64());
    }
    eprintln!(
        "backends that stopped accepting with a slow request in flight: {finished_in_flight}; \
         tasks after: {after:?}"
    );

    assert_eq!(
        report.failures, 0,
        "requests failed during the update: {:?}",
        report.samples
    );
    assert!(
        report.requests >= 500,
        "too little load to mean anything: {}",
        report.requests
    );
    // Every task was replaced, and only the new ones answer.
    assert_eq!(after.len(), REPLICAS, "{after:?}");
    assert!(after.is_disjoint(&before), "{before:?} -> {after:?}");
    assert_eq!(answering, after, "only the new tasks answer");
    assert!(
        after.iter().all(|t| report.backends.contains_key(t)),
        "the load reached every new task: {:?}",
        report.backends
    );
    assert_eq!(upstream_errors, 0.0, "no upstream failed");
    // Each old task left the routes before its container was told to stop.
    for (task, left, sigterm) in &drained {
        let (Some(left), Some(sigterm)) = (left, sigterm) else {
            panic!("task {task}: left the routes at {left:?}, SIGTERM at {sigterm:?}");
        };
        assert!(
            left < sigterm,
            "task {task} was still routed when it got SIGTERM ({} >= {})",
            clock(*left),
            clock(*sigterm)
        );
    }
    // The slow requests went one to each old task, and all finished with 200.
    let slow_backends: BTreeSet<String> = slow
        .iter()
        .filter_map(|(r, _)| r.as_ref().and_then(|(_, b)| b.clone()))
        .collect();
    assert!(
        slow.iter().all(|(r, _)| matches!(r, Some((200, Some(_))))),
        "{slow:?}"
    );
    assert_eq!(slow_backends, before, "one slow request per old task");
    // At least the first task to leave got SIGTERM, served its lame duck and stopped
    // accepting while its slow request was still in flight; it finished (200 above).
    assert!(
        finished_in_flight >= 1,
        "no backend stopped with a request in flight:\n{backend_logs}"
    );
    drop(drain);
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
