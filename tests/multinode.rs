//! examples/swarm/stack.yml on a real multi-node swarm started by the test itself
//! (testkit/src/multinode.rs): 3 managers and 2 workers, each a private Docker daemon in a
//! network namespace of its own. A controller runs on each manager, prod's proxies on both
//! workers (node labels, host-mode published ports), and the backends only on workers, so no
//! manager has a task on the apps network.
//!
//! One test shares the bed across the scenarios (they run in order, each under a bounded
//! keep-alive load at the workers' proxies) and prints one line per scenario:
//! `scenario <name>: requests=N failures=M ...` (run with --nocapture to see them as they
//! come). It fails at the end if any scenario failed. INTERLOCK_SKIP_DOCKER=1 or
//! INTERLOCK_SKIP_MULTINODE=1 mark it ignored (build.rs); on a machine that cannot host the bed
//! it fails.

use interlock_testkit as common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::multinode::{missing_tools, probe, Bed, BedNode, Load, LoadReport};
use common::node::{succeed, Scratch};

const IMAGE: &str = "interlock-test/interlock:multinode";
const BACKEND_IMAGE: &str = "interlock-test/backend:multinode";
/// [`BACKEND_IMAGE`] with a HEALTHCHECK (exec form): a task runs once it serves.
const HEALTHY_BACKEND_IMAGE: &str = "interlock-test/backend:multinode-healthy";
const STACK: &str = "interlock";
const HOST: &str = "web.test";
const WEB: &str = "web";
const REPLICAS: usize = 4;
/// The proxies' published port on each worker (every node has its own address).
const PROD_PORT: u16 = 80;

/// What a scenario found.
struct Verdict {
    load: LoadReport,
    /// Why it failed, if it did.
    failed: Option<String>,
    note: String,
}

impl Verdict {
    fn of(load: LoadReport, note: impl Into<String>) -> Verdict {
        let failed = (load.failures > 0).then(|| {
            let mut samples = load.samples.clone();
            samples.sort();
            samples.dedup();
            format!(
                "{} of {} requests failed, e.g. {:?}",
                load.failures, load.requests, samples
            )
        });
        Verdict {
            load,
            failed,
            note: note.into(),
        }
    }

    fn fail(mut self, why: impl Into<String>) -> Verdict {
        let why = why.into();
        self.failed = Some(match self.failed.take() {
            Some(before) => format!("{before}; {why}"),
            None => why,
        });
        self
    }
}

/// The bed with the stack deployed on it.
struct World {
    bed: Bed,
    /// The prod apps network (whatever the stack file calls it).
    apps: String,
    _certs: Scratch,
}

impl World {
    fn manager(&self) -> &BedNode {
        self.bed.manager()
    }

    fn m(&self, args: &[&str]) -> String {
        self.manager().docker(args)
    }

    /// Worker `i`'s proxy (host-mode published port on the worker's own address).
    fn proxy(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.bed.workers()[i].addr, PROD_PORT))
    }

    fn worker(&self, i: usize) -> &BedNode {
        self.bed.workers()[i]
    }

    /// Running tasks of `svc` as `(task id, node hostname)`, as the managers see them.
    fn running_tasks(&self, svc: &str) -> Vec<(String, String)> {
        let out = self.m(&[
            "service",
            "ps",
            svc,
            "--no-trunc",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.ID}} {{.Node}} {{.CurrentState}}",
        ]);
        out.lines()
            .filter(|l| l.contains(" Running "))
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect()
    }

    /// The backends' names of the running tasks: `<task id>@<node>`.
    fn running_backends(&self) -> BTreeSet<String> {
        self.running_tasks(WEB)
            .into_iter()
            .map(|(id, node)| format!("{id}@{node}"))
            .collect()
    }

    /// The container of `svc`'s task on `node`, if one runs there.
    fn container_on(&self, node: &BedNode, svc: &str) -> Option<String> {
        node.try_docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={STACK}_{svc}"),
        ])
        .ok()
        .and_then(|o| o.lines().next().map(str::to_string))
    }

    /// Waits until the controller's container on manager 1 has published prod's snapshot
    /// (it has read Docker), then a second for the proxies' long polls; its container id.
    fn controller_ready(&self, limit: Duration) -> Option<String> {
        let id = self.controller_ready_on(self.manager(), limit);
        std::thread::sleep(Duration::from_secs(1));
        id
    }

    /// The managers (one controller replica each).
    fn managers(&self) -> Vec<&BedNode> {
        self.bed.nodes.iter().filter(|n| n.manager).collect()
    }

    /// Waits until `node`'s controller container has published prod's snapshot; its id.
    fn controller_ready_on(&self, node: &BedNode, limit: Duration) -> Option<String> {
        let mut id = None;
        wait_for(limit, || {
            id = self.container_on(node, "controller");
            id.as_ref().is_some_and(|c| {
                container_logs(node, c)
                    .lines()
                    .any(|l| l.contains("snapshot published") && l.contains("prod"))
            })
        })?;
        id
    }

    /// Waits until every manager's controller replica has published prod's snapshot.
    fn all_controllers_ready(&self, limit: Duration) -> bool {
        let start = Instant::now();
        self.managers().into_iter().all(|n| {
            self.controller_ready_on(n, limit.saturating_sub(start.elapsed()))
                .is_some()
        })
    }

    /// How many lines of worker `i`'s current proxy container's log contain `what`.
    fn proxy_says(&self, i: usize, what: &str) -> usize {
        let node = self.worker(i);
        self.container_on(node, "proxy-prod")
            .map(|c| container_logs(node, &c))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }

    fn answers(&self, i: usize) -> bool {
        matches!(probe(self.proxy(i), HOST), Ok((200, _)))
    }
}

/// The two proxies' loads finished, as one report.
fn both(loads: [Load; 2]) -> LoadReport {
    let [mut load, b] = loads.map(Load::finish);
    load.requests += b.requests;
    load.failures += b.failures;
    load.samples.extend(b.samples);
    load
}

/// Polls `f` every 200 ms until it holds or `limit` passes; how long it took.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The load of one scenario: 3 keep-alive clients, bounded in count and time.
fn load_at(addr: SocketAddr, max_time: Duration) -> Load {
    Load::start(addr, HOST, 3, 200_000, max_time, Duration::from_millis(2))
}

fn deploy(bed: Bed) -> World {
    let manager = bed.manager().clone();
    // The image helpers of testkit/src/engine.rs use the `docker` CLI of this process's
    // environment: point it at node 1 (never the machine's own engine), then copy the images
    // to the other nodes. Nothing is pulled.
    std::env::set_var("DOCKER_HOST", &manager.host);
    common::engine::build_image(IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));
    common::engine::backend_image(BACKEND_IMAGE);
    common::engine::with_healthcheck(BACKEND_IMAGE, HEALTHY_BACKEND_IMAGE);
    bed.spread_image(IMAGE);
    bed.spread_image(BACKEND_IMAGE);
    bed.spread_image(HEALTHY_BACKEND_IMAGE);

    for w in bed.workers() {
        manager.docker(&[
            "node",
            "update",
            "--label-add",
            "interlock.cluster=prod",
            &w.hostname,
        ]);
    }
    let certs = Scratch::new("multinode");
    certs.issue_certs(&["controller"], &["prod", "dev"]);

    // The stack file as it is now. Its controllers (one per manager) mount their node's
    // Docker socket by the standard path; on this bed every daemon has its own socket, so
    // the copy deployed mounts `sockets/<node's hostname>.sock` (a Swarm mount template), a
    // link to that node's own socket.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/swarm/stack.yml");
    let text = std::fs::read_to_string(&file).unwrap();
    let sockets = bed.root.join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    for n in bed.nodes.iter().filter(|n| n.manager) {
        let link = sockets.join(format!("{}.sock", n.hostname));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(n.host.trim_start_matches("unix://"), &link).unwrap();
    }
    let own_socket = format!("{}/{{{{.Node.Hostname}}}}.sock", sockets.display());
    let mut mounts = 0;
    let text: String = text
        .lines()
        .map(|l| {
            if l.contains("/var/run/docker.sock") && !l.trim_start().starts_with('#') {
                mounts += 1;
                l.replacen("/var/run/docker.sock", &own_socket, 1)
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
    let deployed = bed.root.join("stack.yml");
    std::fs::write(&deployed, text.clone()).unwrap();
    let apps = if text.contains("PROD_APPS_NETWORK") {
        format!("{}-apps-prod", bed.prefix)
    } else {
        format!("{}-apps", bed.prefix)
    };
    succeed(
        Command::new("docker")
            .env("DOCKER_HOST", &manager.host)
            .args(["stack", "deploy", "-c"])
            .arg(&deployed)
            .arg(STACK)
            .env("INTERLOCK_IMAGE", IMAGE)
            .env("INTERLOCK_CERTS", &certs.0)
            .env("PROD_HTTP_PORT", PROD_PORT.to_string())
            .env("DEV_HTTP_PORT", "8081")
            .env("PROD_PLACEMENT", "node.labels.interlock.cluster == prod")
            // No node is labelled for dev: no dev proxy runs (and none on a manager).
            .env("DEV_PLACEMENT", "node.labels.interlock.cluster == dev")
            .env("APPS_NETWORK", format!("{}-apps", bed.prefix))
            .env("PROD_APPS_NETWORK", format!("{}-apps-prod", bed.prefix))
            .env("DEV_APPS_NETWORK", format!("{}-apps-dev", bed.prefix)),
        "docker stack deploy",
    );

    // The backends: workers only, each task answering with its task id and node.
    manager.docker(&[
        "service",
        "create",
        "-d",
        "-q",
        "--name",
        WEB,
        "--network",
        &apps,
        "--replicas",
        &REPLICAS.to_string(),
        "--constraint",
        "node.role == worker",
        "--env",
        "BACKEND_NAME={{.Task.ID}}@{{.Node.Hostname}}",
        "--label",
        &format!("com.docker.lb.hosts={HOST}"),
        "--label",
        "com.docker.lb.port=9001",
        "--label",
        "com.docker.lb.service_cluster=prod",
        "--update-parallelism",
        "1",
        "--update-delay",
        "2s",
        "--update-order",
        "start-first",
        "--update-failure-action",
        "pause",
        "--stop-grace-period",
        "5s",
        "--restart-condition",
        "any",
        "--restart-delay",
        "1s",
        BACKEND_IMAGE,
        "--listen",
        "0.0.0.0:9001",
    ]);
    World {
        bed,
        apps,
        _certs: certs,
    }
}

/// 1: both proxies route to every running backend task, on every node.
fn every_endpoint(w: &World) -> Verdict {
    let converged = wait_for(Duration::from_secs(60), || {
        w.running_tasks(WEB).len() == REPLICAS && w.answers(0) && w.answers(1)
    });
    let expected = w.running_backends();
    let loads = [0, 1].map(|i| load_at(w.proxy(i), Duration::from_secs(6)));
    std::thread::sleep(Duration::from_secs(6));
    let [a, b] = loads.map(Load::finish);
    let mut load = a.clone();
    load.requests += b.requests;
    load.failures += b.failures;
    load.samples.extend(b.samples.clone());
    let seen = |r: &LoadReport| r.backends.keys().cloned().collect::<BTreeSet<_>>();
    let nodes: BTreeSet<String> = expected
        .iter()
        .filter_map(|b| b.split('@').nth(1).map(str::to_string))
        .collect();
    let note = format!(
        "converged={:?} tasks={} on nodes {:?}; worker-1 proxy saw {}, worker-2 proxy saw {}",
        converged,
        expected.len(),
        nodes,
        a.backends.len(),
        b.backends.len()
    );
    let mut v = Verdict::of(load, note);
    if converged.is_none() {
        v = v.fail(format!(
            "{HOST} not routed by both proxies to {REPLICAS} running tasks within 60 s"
        ));
    }
    for (i, r) in [&a, &b].into_iter().enumerate() {
        if seen(r) != expected {
            v = v.fail(format!(
                "worker-{} proxy: backends answering {:?} != running tasks {:?}",
                i + 1,
                seen(r),
                expected
            ));
        }
    }
    v
}

/// 3: worker 2 drained (its proxy and backends go), load on worker 1's proxy; set active again.
fn drain_worker(w: &World) -> Verdict {
    let w2 = w.worker(1).hostname.clone();
    let load = load_at(w.proxy(0), Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    w.m(&["node", "update", "--availability", "drain", &w2]);
    let moved = wait_for(Duration::from_secs(40), || {
        let tasks = w.running_tasks(WEB);
        tasks.len() == REPLICAS && tasks.iter().all(|(_, n)| *n != w2)
    });
    // Some more load on the moved tasks only.
    std::thread::sleep(Duration::from_secs(3));
    let report = load.finish();
    w.m(&["node", "update", "--availability", "active", &w2]);
    let back = wait_for(Duration::from_secs(40), || {
        w.container_on(w.worker(1), "proxy-prod").is_some() && w.answers(1)
    });
    let mut v = Verdict::of(
        report,
        format!("backends moved off worker-2 in {moved:?}; its proxy back in {back:?}"),
    );
    if moved.is_none() {
        v = v.fail("the backends did not all move to worker-1 within 40 s");
    }
    if back.is_none() {
        v = v.fail("worker-2's proxy did not serve again within 40 s of reactivation");
    }
    v
}

/// 2: a rolling update of the backends (start-first, one at a time), load at both proxies.
fn rolling_update(w: &World) -> Verdict {
    let before = w.running_backends();
    let loads = [0, 1].map(|i| load_at(w.proxy(i), Duration::from_secs(120)));
    std::thread::sleep(Duration::from_secs(1));
    w.m(&["service", "update", "-d", "-q", "--force", WEB]);
    let done = update_completed(w, WEB, Duration::from_secs(100));
    // The proxies follow the last task change.
    std::thread::sleep(Duration::from_secs(2));
    let load = both(loads);
    let after = w.running_backends();
    let nodes: BTreeSet<String> = after
        .iter()
        .filter_map(|b| b.split('@').nth(1).map(str::to_string))
        .collect();
    let mut v = Verdict::of(
        load,
        format!("update completed in {done:?}; new tasks on {nodes:?}"),
    );
    if done.is_none() {
        v = v.fail("the rolling update did not complete within 100 s");
    }
    if !before.is_disjoint(&after) {
        v = v.fail("some task was not replaced");
    }
    v
}

/// 4: worker 2's dockerd killed (SIGKILL), load on worker 1's proxy; started again, it rejoins.
fn worker_daemon_killed(w: &World) -> Verdict {
    let node = w.worker(1);
    let w2 = node.hostname.clone();
    let load = load_at(w.proxy(0), Duration::from_secs(150));
    std::thread::sleep(Duration::from_secs(1));
    w.bed.kill_daemon(node);
    let down = wait_for(Duration::from_secs(60), || {
        w.m(&["node", "inspect", &w2, "--format", "{{.Status.State}}"]) == "down"
    });
    let moved = wait_for(Duration::from_secs(60), || {
        let tasks = w.running_tasks(WEB);
        tasks.len() == REPLICAS && tasks.iter().all(|(_, n)| *n != w2)
    });
    std::thread::sleep(Duration::from_secs(2));
    w.bed.start_daemon(node);
    let rejoined = wait_for(Duration::from_secs(60), || {
        w.m(&["node", "inspect", &w2, "--format", "{{.Status.State}}"]) == "ready"
    });
    let proxy_back = wait_for(Duration::from_secs(60), || w.answers(1));
    let report = load.finish();
    let mut v = Verdict::of(
        report,
        format!(
            "node down after {down:?}, backends moved after {moved:?} more, \
             rejoined {rejoined:?} after restart, its proxy serving {proxy_back:?} later"
        ),
    );
    if down.is_none() {
        v = v.fail("the managers did not see worker-2 down within 60 s");
    }
    if rejoined.is_none() {
        v = v.fail("worker-2 did not rejoin within 60 s of its daemon's restart");
    }
    if proxy_back.is_none() {
        v = v.fail("worker-2's proxy did not serve again within 60 s of the rejoin");
    }
    v
}

/// Kills the proxy container on worker `i` (Swarm restarts it); how the restarted proxy
/// answered within `limit`: the first 200, or the statuses it gave meanwhile.
fn restart_proxy(w: &World, i: usize, limit: Duration) -> Result<Duration, String> {
    let node = w.worker(i);
    let old = w
        .container_on(node, "proxy-prod")
        .ok_or("no proxy container on the worker")?;
    node.docker(&["kill", &old]);
    let start = Instant::now();
    let mut seen = BTreeSet::new();
    let mut new = None;
    while start.elapsed() < limit {
        if new.is_none() {
            new = w.container_on(node, "proxy-prod").filter(|c| *c != old);
        }
        if new.is_some() {
            match probe(w.proxy(i), HOST) {
                Ok((200, _)) => return Ok(start.elapsed()),
                Ok((status, _)) => {
                    seen.insert(status.to_string());
                }
                Err(_) => {
                    seen.insert("no answer".to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the proxies said about their snapshots and state file, before and after.
    let said = |id: &str| -> Vec<String> {
        container_logs(node, id)
            .lines()
            .filter(|l| {
                (l.contains("snapshot") || l.contains("state"))
                    && (l.contains("WARN") || l.contains("ERROR") || l.contains("cannot"))
            })
            .map(|l| l.chars().take(240).collect())
            .take(2)
            .collect()
    };
    Err(match new {
        None => format!("no new proxy container within {limit:?}"),
        Some(new) => format!(
            "the restarted proxy did not answer 200 within {limit:?} (it answered: {seen:?}; \
             the killed proxy logged {:?}, the restarted one {:?})",
            said(&old),
            said(&new)
        ),
    })
}

/// 5: every controller replica gone (placed where no node is: a global service cannot be
/// scaled to 0), worker 2's proxy killed and restarted by Swarm: it serves its saved
/// snapshot; worker 1's proxy, under load, never fails.
fn proxy_restart_controller_down(w: &World) -> Verdict {
    let ctl = format!("{STACK}_controller");
    let nowhere = "node.hostname == nowhere";
    let load = load_at(w.proxy(0), Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    w.m(&[
        "service",
        "update",
        "-d",
        "-q",
        "--constraint-add",
        nowhere,
        &ctl,
    ]);
    let gone = wait_for(Duration::from_secs(30), || {
        w.managers()
            .into_iter()
            .all(|n| w.container_on(n, "controller").is_none())
    });
    let restarted = restart_proxy(w, 1, Duration::from_secs(30));
    w.m(&[
        "service",
        "update",
        "-d",
        "-q",
        "--constraint-rm",
        nowhere,
        &ctl,
    ]);
    let start = Instant::now();
    let ready = w
        .all_controllers_ready(Duration::from_secs(60))
        .then(|| start.elapsed());
    let back = wait_for(Duration::from_secs(60), || w.answers(1));
    let report = load.finish();
    let mut v = Verdict::of(
        report,
        format!(
            "controller gone in {gone:?}; restarted proxy served after {:?}; \
             controller back and published in {ready:?}, then served after {back:?}",
            restarted.as_ref().ok()
        ),
    );
    if gone.is_none() {
        v = v.fail("the controllers' containers did not go within 30 s");
    }
    if let Err(e) = restarted {
        v = v.fail(format!("controller down: {e}"));
    }
    if ready.is_none() {
        v = v.fail("the controllers did not publish prod's snapshot within 60 s of their return");
    }
    if back.is_none() {
        v = v.fail("worker-2's proxy did not serve within 60 s of the controller's return");
    }
    v
}

/// 6: a broken label on the routed service, then a proxy restart: the restarted proxy keeps
/// the service's last good routes; then the controller's container is killed too (Swarm
/// restarts it) and the proxy restarted again: still the last good routes.
fn broken_label_restart(w: &World) -> Verdict {
    let load = load_at(w.proxy(0), Duration::from_secs(120));
    let controller = w.controller_ready(Duration::from_secs(30));
    w.m(&[
        "service",
        "update",
        "-d",
        "-q",
        "--label-add",
        "com.docker.lb.port=notaport",
        WEB,
    ]);
    // The controller reports the broken label (so the change did reach it).
    let reported = wait_for(Duration::from_secs(15), || {
        controller
            .as_ref()
            .is_some_and(|c| container_logs(w.manager(), c).contains("notaport"))
    });
    // Both proxies keep the last good routes: 3 s of load at worker 2's proxy too.
    let window = load_at(w.proxy(1), Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(3));
    let window = window.finish();
    let kept = window.failures == 0 && window.requests > 0 && w.answers(0);
    let restarted = restart_proxy(w, 1, Duration::from_secs(30));
    // The controller restarted with the label still broken, then the proxy again.
    let mut controller_back = None;
    if let Some(c) = &controller {
        w.manager().docker(&["kill", c]);
        let start = Instant::now();
        // The restarted controller has read Docker (its snapshot published).
        controller_back = wait_for(Duration::from_secs(30), || {
            w.controller_ready(Duration::from_secs(30))
                .is_some_and(|n| n != *c)
        })
        .map(|_| start.elapsed());
    }
    let kept_after_controller = w.answers(0) && w.answers(1);
    let restarted_again = restart_proxy(w, 1, Duration::from_secs(30));
    w.m(&[
        "service",
        "update",
        "-d",
        "-q",
        "--label-add",
        "com.docker.lb.port=9001",
        WEB,
    ]);
    let fixed = wait_for(Duration::from_secs(30), || w.answers(0) && w.answers(1));
    let mut report = load.finish();
    report.requests += window.requests;
    report.failures += window.failures;
    report.samples.extend(window.samples.iter().cloned());
    let mut v = Verdict::of(
        report,
        format!(
            "controller reported the label after {reported:?}; kept before the restart: \
             {kept}; restarted proxy served after {:?}; controller restarted in \
             {controller_back:?}, both serving then: {kept_after_controller}, proxy restarted \
             again served after {:?}; label fixed, both serving after {fixed:?}",
            restarted.as_ref().ok(),
            restarted_again.as_ref().ok()
        ),
    );
    if reported.is_none() {
        v = v.fail("the controller did not report the broken label within 15 s");
    }
    if !kept {
        let mut samples = window.samples.clone();
        samples.dedup();
        // What worker 2's proxy logged meanwhile (upstream errors, table swaps).
        let said: Vec<String> = w
            .container_on(w.worker(1), "proxy-prod")
            .map(|c| container_logs(w.worker(1), &c))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("swapped"))
            .map(|l| l.chars().take(300).collect())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .take(12)
            .collect();
        v = v.fail(format!(
            "a proxy stopped routing the service when its label broke (worker-2's proxy: \
             {} of {} requests failed, e.g. {samples:?}; worker-1's answers: {}; worker-2's \
             proxy logged, newest first: {said:#?})",
            window.failures,
            window.requests,
            w.answers(0)
        ));
    }
    if let Err(e) = restarted {
        v = v.fail(format!("broken label, proxy restarted: {e}"));
    }
    if controller_back.is_none() {
        v = v.fail("the controller's container was not restarted within 30 s");
    }
    if !kept_after_controller {
        v = v.fail("a proxy stopped routing the service after the controller restarted");
    }
    if let Err(e) = restarted_again {
        v = v.fail(format!(
            "broken label, controller and then proxy restarted: {e}"
        ));
    }
    if fixed.is_none() {
        v = v.fail("the service was not routed within 30 s of its label being fixed");
    }
    v
}

/// 8: the controller replicas (one per manager) killed one by one under load at both
/// proxies, each killed only once the one before is back (Swarm restarts it) and has
/// published: no request fails, and no proxy fetches a snapshot or swaps its table (the
/// replicas publish the same content under the same tag), however often it moves.
fn controller_replicas_killed(w: &World) -> Verdict {
    let ready = w.all_controllers_ready(Duration::from_secs(60));
    let loads = [0, 1].map(|i| load_at(w.proxy(i), Duration::from_secs(150)));
    std::thread::sleep(Duration::from_secs(1));
    let counts = |what: &str| [0, 1].map(|i| w.proxy_says(i, what));
    let swaps_before = counts("routing table swapped");
    let fetched_before = counts("new snapshot from the controller");
    let moves_before = counts("controller poll failed");
    let mut back = Vec::new();
    let mut missing = Vec::new();
    for node in w.managers() {
        let Some(old) = w.container_on(node, "controller") else {
            missing.push(node.hostname.clone());
            continue;
        };
        node.docker(&["kill", &old]);
        let start = Instant::now();
        let again = wait_for(Duration::from_secs(60), || {
            w.controller_ready_on(node, Duration::from_millis(1))
                .is_some_and(|c| c != old)
        });
        back.push(again.map(|_| start.elapsed()));
        // The proxies' long polls settle on the replicas left.
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(2));
    let swaps = counts("routing table swapped");
    let fetched = counts("new snapshot from the controller");
    let moves = counts("controller poll failed");
    let load = both(loads);
    let diff =
        |x: [usize; 2], y: [usize; 2]| [x[0].saturating_sub(y[0]), x[1].saturating_sub(y[1])];
    let (swapped, refetched, moved) = (
        diff(swaps, swaps_before),
        diff(fetched, fetched_before),
        diff(moves, moves_before),
    );
    let mut v = Verdict::of(
        load,
        format!(
            "{} replicas killed in turn, each back and published after {back:?}; per proxy: \
             table swaps {swapped:?}, snapshots fetched {refetched:?}, polls that moved to \
             another replica {moved:?}",
            back.len()
        ),
    );
    if !ready {
        v = v.fail("not every manager's controller replica had published before the kills");
    }
    if !missing.is_empty() {
        v = v.fail(format!("no controller replica on {missing:?}"));
    }
    if back.iter().any(Option::is_none) {
        v = v.fail("a killed replica was not back and published within 60 s");
    }
    if swapped != [0, 0] || refetched != [0, 0] {
        v = v.fail(format!(
            "the proxies refetched or swapped with nothing changed: swaps {swapped:?}, \
             snapshots {refetched:?}"
        ));
    }
    if moved.contains(&0) {
        // Every replica was killed, so each proxy's was.
        v = v.fail("a proxy's poll never moved: the kills did not reach its replica");
    }
    v
}

/// Waits (at most `limit`) until the last update of service `svc` completed.
fn update_completed(w: &World, svc: &str, limit: Duration) -> Option<Duration> {
    wait_for(limit, || {
        w.m(&[
            "service",
            "inspect",
            svc,
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
        ]) == "completed"
    })
}

/// 10: drain before stop across the cluster: the backends get what docs/swarm.md asks of
/// them (a 3 s lame duck after SIGTERM, a HEALTHCHECK, stop_grace_period 15 s) and
/// `com.docker.lb.retries=off`; then a stop-first rolling update (one task at a time) under
/// load at both workers' proxies, which learn of each task leaving through the controller:
/// no request may fail, since nothing is retried.
fn stop_first_update_retries_off(w: &World) -> Verdict {
    w.m(&[
        "service",
        "update",
        "-d",
        "-q",
        "--image",
        HEALTHY_BACKEND_IMAGE,
        "--args",
        "--listen 0.0.0.0:9001 --lame-duck 3",
        "--label-add",
        "com.docker.lb.retries=off",
        "--update-order",
        "stop-first",
        "--update-delay",
        "1s",
        "--stop-grace-period",
        "15s",
        WEB,
    ]);
    let prepared = update_completed(w, WEB, Duration::from_secs(120));
    let ready = wait_for(Duration::from_secs(30), || {
        w.running_backends().len() == REPLICAS && w.answers(0) && w.answers(1)
    });
    let middle = w.running_backends();
    let loads = [0, 1].map(|i| load_at(w.proxy(i), Duration::from_secs(150)));
    std::thread::sleep(Duration::from_secs(1));
    w.m(&["service", "update", "-d", "-q", "--force", WEB]);
    let done = update_completed(w, WEB, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    let load = both(loads);
    let after = w.running_backends();
    let mut v = Verdict::of(
        load,
        format!(
            "prepared (lame duck, HEALTHCHECK, retries off) in {prepared:?}; stop-first \
             update with retries off completed in {done:?}"
        ),
    );
    if prepared.is_none() || ready.is_none() {
        v = v.fail("the backends' new settings were not rolled out within 120 s");
    }
    if done.is_none() {
        v = v.fail("the stop-first update did not complete within 120 s");
    }
    if !middle.is_disjoint(&after) || after.len() != REPLICAS {
        v = v.fail(format!(
            "not every task was replaced: {middle:?} -> {after:?}"
        ));
    }
    v
}

/// What probing one address every 20 ms (a fresh connection each) saw.
#[derive(Debug, Default)]
struct Outage {
    probes: usize,
    failed: usize,
    /// The longest run of failed probes: first failure to the next answer.
    longest: Duration,
}

/// Probes `addr` every 20 ms until `stop`: how long it did not answer 200.
fn watch_outage(addr: SocketAddr, stop: &std::sync::atomic::AtomicBool) -> Outage {
    let mut o = Outage::default();
    let mut down_since: Option<Instant> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        o.probes += 1;
        if matches!(probe(addr, HOST), Ok((200, _))) {
            if let Some(t) = down_since.take() {
                o.longest = o.longest.max(t.elapsed());
            }
        } else {
            o.failed += 1;
            down_since.get_or_insert_with(Instant::now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(t) = down_since {
        o.longest = o.longest.max(t.elapsed());
    }
    o
}

/// 9: the proxies upgraded (the interlock image replaced: `service update --force`, with
/// the stack's update settings: one node at a time, stop-first, host-mode ports). Measured:
/// how long each node's published port did not answer (a fresh connection every 20 ms), the
/// keep-alive load at each node, and a client that, like an external load balancer, sends a
/// request the first node refuses to the other node: that one loses nothing.
fn proxy_upgrade(w: &World) -> Verdict {
    use std::sync::atomic::{AtomicBool, Ordering};
    let svc = format!("{STACK}_proxy-prod");
    let before: Vec<Option<String>> = [0, 1]
        .map(|i| w.container_on(w.worker(i), "proxy-prod"))
        .into();
    let stop = AtomicBool::new(false);
    let (outages, (balanced, redispatched), done, loads) = std::thread::scope(|scope| {
        let watchers = [0, 1].map(|i| {
            let (addr, stop) = (w.proxy(i), &stop);
            scope.spawn(move || watch_outage(addr, stop))
        });
        // The external balancer: node 1 first, node 2 when node 1 does not answer (and the
        // other way round every other request), a fresh connection each time. A node that
        // refuses the connection, or closes it before any byte, gets none: on this bed a
        // host-mode port is dockerd's userland proxy (no iptables), which accepts on the
        // container's behalf and closes when the container's port is not there, where a
        // kernel's NAT answers "refused". (interlock itself answers every connection it took:
        // tests/process.rs.)
        let balancer = {
            let (nodes, stop) = ([w.proxy(0), w.proxy(1)], &stop);
            scope.spawn(move || {
                let mut report = LoadReport::default();
                let mut redispatched = 0;
                let mut turn = 0;
                while !stop.load(Ordering::Relaxed) {
                    turn += 1;
                    let first = nodes[turn % 2];
                    let other = nodes[(turn + 1) % 2];
                    report.requests += 1;
                    let answer = match probe(first, HOST) {
                        Err(e) if e.starts_with("connect") || e.starts_with("closed without") => {
                            redispatched += 1;
                            probe(other, HOST)
                        }
                        a => a,
                    };
                    if !matches!(answer, Ok((200, _))) {
                        report.failures += 1;
                        if report.samples.len() < 8 {
                            report.samples.push(format!("{answer:?}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (report, redispatched)
            })
        };
        let loads = [0, 1].map(|i| load_at(w.proxy(i), Duration::from_secs(150)));
        std::thread::sleep(Duration::from_secs(1));
        w.m(&["service", "update", "-d", "-q", "--force", &svc]);
        let done = update_completed(w, &svc, Duration::from_secs(120));
        // Both new proxies answer before the watch ends.
        wait_for(Duration::from_secs(30), || w.answers(0) && w.answers(1));
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let loads = loads.map(Load::finish);
        (
            watchers.map(|h| h.join().unwrap()),
            balancer.join().unwrap(),
            done,
            loads,
        )
    });
    let after: Vec<Option<String>> = [0, 1]
        .map(|i| w.container_on(w.worker(i), "proxy-prod"))
        .into();
    let [a, b] = &loads;
    let mut v = Verdict::of(
        balanced.clone(),
        format!(
            "update completed in {done:?}; per node, port not answering at most {:?} and \
             {:?} ({} and {} of {} and {} probes failed); keep-alive load per node: {} of {} \
             and {} of {} failed; external balancer: {} of {} failed, {} sent to the other \
             node",
            outages[0].longest,
            outages[1].longest,
            outages[0].failed,
            outages[1].failed,
            outages[0].probes,
            outages[1].probes,
            a.failures,
            a.requests,
            b.failures,
            b.requests,
            balanced.failures,
            balanced.requests,
            redispatched,
        ),
    );
    if done.is_none() {
        v = v.fail("the proxies' update did not complete within 120 s");
    }
    if before
        .iter()
        .zip(&after)
        .any(|(b, a)| b == a || a.is_none())
    {
        v = v.fail(format!(
            "not every proxy was replaced: {before:?} -> {after:?}"
        ));
    }
    v
}

/// A container's output (stdout and stderr) on `node`.
fn container_logs(node: &BedNode, id: &str) -> String {
    Command::new("docker")
        .env("DOCKER_HOST", &node.host)
        .args(["logs", id])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
}

/// What dockerd logs at `level=error` on this bed whatever the controller does: on a kernel
/// without IPVS whenever a node's service load balancers change (tasks come and go), and when
/// an overlay network's bridge is set up in a daemon that sees the host's /sys.
fn bed_noise(line: &str) -> bool {
    line.contains("error reading the kernel parameter net.ipv4.vs.")
        || line.contains("ipvs")
        || line.contains("firewall mark")
        || line.contains("default vlan on bridge")
}

/// 7: 10 s of steady state: manager 1's dockerd (the controller's engine) logs no errors.
fn quiet_engine_log(w: &World) -> Verdict {
    let loads = [0, 1].map(|i| load_at(w.proxy(i), Duration::from_secs(13)));
    // Earlier scenarios' task churn settles first.
    std::thread::sleep(Duration::from_secs(3));
    let before = w.manager().daemon_log().len();
    std::thread::sleep(Duration::from_secs(10));
    let log = w.manager().daemon_log();
    let load = both(loads);
    let (noise, errors): (Vec<&str>, Vec<&str>) = log[before.min(log.len())..]
        .lines()
        .filter(|l| l.contains("level=error"))
        .partition(|l| bed_noise(l));
    let mut v = Verdict::of(
        load,
        format!(
            "{} error lines in 10 s, {} more of the bed's own (no IPVS, bridge VLAN)",
            errors.len(),
            noise.len()
        ),
    );
    if !errors.is_empty() {
        let mut kinds: Vec<String> = errors
            .iter()
            .map(|l| {
                l.split_once("msg=")
                    .map_or(*l, |(_, m)| m)
                    .chars()
                    .take(160)
                    .collect()
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        v = v.fail(format!(
            "the manager's dockerd logged {} errors in 10 s of steady state: {:?}",
            errors.len(),
            kinds
        ));
    }
    v
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
#[cfg_attr(skip_multinode, ignore = "INTERLOCK_SKIP_MULTINODE=1")]
fn swarm_of_five_nodes_routes_every_task_through_failures() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "the multi-node bed needs {missing:?} (INTERLOCK_SKIP_MULTINODE=1 skips this test)"
    );
    let t0 = Instant::now();
    let bed = Bed::up(3, 2);
    println!(
        "multinode: bed of {} nodes ({}) up in {:.1} s",
        bed.nodes.len(),
        bed.nodes
            .iter()
            .map(|n| format!(
                "{} {} {}",
                n.hostname,
                n.addr,
                if n.manager { "manager" } else { "worker" }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        bed.started_in.as_secs_f64()
    );
    let world = deploy(bed);
    println!(
        "multinode: images and stack deployed at {:.1} s (apps network {})",
        t0.elapsed().as_secs_f64(),
        world.apps
    );

    type Scenario = fn(&World) -> Verdict;
    // (name, scenario, whether it needs the service routed at all to mean anything)
    let scenarios: [(&str, Scenario, bool); 10] = [
        ("1-every-endpoint-routed", every_endpoint, false),
        ("3-worker-drained", drain_worker, true),
        ("2-rolling-update", rolling_update, true),
        ("4-worker-daemon-killed", worker_daemon_killed, true),
        (
            "5-proxy-restart-controller-down",
            proxy_restart_controller_down,
            true,
        ),
        ("6-broken-label-proxy-restart", broken_label_restart, true),
        (
            "8-controller-replicas-killed",
            controller_replicas_killed,
            true,
        ),
        ("9-proxy-upgrade", proxy_upgrade, true),
        (
            "10-stop-first-update-retries-off",
            stop_first_update_retries_off,
            true,
        ),
        ("7-engine-log-quiet", quiet_engine_log, false),
    ];
    let mut failed = Vec::new();
    for (name, run, needs_routes) in scenarios {
        let start = Instant::now();
        if needs_routes && !world.answers(0) && !world.answers(1) {
            // Not run: its outcome would only repeat that nothing is routed.
            let why = format!("not run: no proxy routes {HOST} (see scenario 1)");
            println!("scenario {name}: requests=0 failures=0 FAIL ({why})");
            failed.push(format!("{name}: {why}"));
            continue;
        }
        let verdict = catch_unwind(AssertUnwindSafe(|| run(&world))).unwrap_or_else(|p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Verdict {
                load: LoadReport::default(),
                failed: Some(format!("panicked: {why}")),
                note: String::new(),
            }
        });
        println!(
            "scenario {name}: requests={} failures={} {} ({:.1} s; {}; {} kept-alive connections closed idle, sent again)",
            verdict.load.requests,
            verdict.load.failures,
            if verdict.failed.is_some() { "FAIL" } else { "pass" },
            start.elapsed().as_secs_f64(),
            verdict.note,
            verdict.load.retried_idle_closes,
        );
        if let Some(why) = verdict.failed {
            println!("  {name}: {why}");
            failed.push(format!("{name}: {why}"));
        }
    }
    println!(
        "multinode: all scenarios done at {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    drop(world);
    println!(
        "multinode: bed removed at {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} scenario(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
