//! Soak: sustained keep-alive load through the real `interlock` binary while the services
//! file churns every 100-200 ms (services added, removed, re-hosted, moved to another
//! context root, scaled, re-weighted, given a broken label, and now and then an unparsable
//! file). Bounded in time: `INTERLOCK_SOAK_SECS` of load (default 60) on the all-in-one
//! `interlock run`, then a shorter phase (`INTERLOCK_SOAK_SPLIT_SECS`, default a quarter of
//! that) on `interlock controller` + one `interlock proxy` with the same churn.
//!
//! Asserted: no error at all on stable hosts (status, wrong backend, connection), nothing
//! but 200 or 503 on churning hosts, every churn step visible within a bound and exactly as
//! the file says, bounded RSS growth after warm-up, no file-descriptor leak. Printed (run
//! with `--nocapture`): requests and req/s, RSS start/peak/end, fds, convergence
//! p50/p99/max, table generations and reload failures. `INTERLOCK_SOAK_SEED` (hex, printed
//! at the start) replays a run's churn.
//!
//! Convergence: every valid write also moves a marker service to a fresh host; the time from
//! the rename until that host answers is the step's convergence (tables are swapped whole,
//! so the whole step is live then). The step's own effect (new host served, removed host
//! 503, added endpoint answering, removed endpoint silent, broken label keeping the last
//! good routes) is then checked at once, and must hold. Steps are sequential: written,
//! waited for, checked, then the next one 100-200 ms after the previous write.
//!
//! `cargo test --test soak -- --nocapture` (about 80 s with the defaults).

use interlock_testkit as common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use common::node::{eventually, open_fds, rss_kib, try_http, Node, Scratch};
use common::{free_port, TestBackend};

/// Backend names; each [`TestBackend`] answers its name as the body. b0..b5 serve the
/// stable hosts (and churning ones too: an endpoint shared with a churning service must not
/// be disturbed when that service lets go of it); b6..b9 only ever serve churning services,
/// so their upstreams leave the table and come back (retired pools).
const NAMES: [&str; 10] = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9"];
/// Backends that only churning services use.
const CHURN_ONLY: std::ops::Range<usize> = 6..10;
/// The marker service's backend.
const MARKER: usize = 0;
/// Keep-alive clients on stable hosts (every answer must be 200 from the right backend).
const STABLE_CLIENTS: usize = 24;
/// Keep-alive clients on churning hosts (200 from some backend, or 503).
const CHURN_CLIENTS: usize = 8;
/// Free churning services (added, removed, re-hosted, ...).
const CHURN_SERVICES: usize = 12;
/// Load before the "start" memory and fd samples: pools, buffers and allocator arenas
/// have reached their working size by then.
const WARM_UP: Duration = Duration::from_secs(5);
/// How long one churn step may take to become visible before it counts as lost.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// One request of the load loops.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// The services file: a model of every service, rendered whole on each step
// ---------------------------------------------------------------------------------------

/// xorshift64*: deterministic churn for a given seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

/// Label values interlock must reject; the service keeps its last good routes.
const BROKEN: [(&str, &str); 5] = [
    ("com.docker.lb.port", "eighty"),
    ("com.docker.lb.hosts", "bad host!"),
    ("com.docker.lb.context_root", "no-slash"),
    ("com.docker.lb.weight", "0"),
    ("com.docker.lb.balance", "fastest"),
];

#[derive(Clone)]
struct Svc {
    name: String,
    present: bool,
    hosts: Vec<String>,
    context_root: Option<String>,
    /// Indexes into the backends.
    endpoints: Vec<usize>,
    weight: u32,
    least_conn: bool,
    /// A label that overrides a valid one with an invalid value.
    broken: Option<(&'static str, &'static str)>,
}

impl Svc {
    fn new(name: &str, hosts: &[&str], endpoints: &[usize]) -> Svc {
        Svc {
            name: name.into(),
            present: true,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            context_root: None,
            endpoints: endpoints.to_vec(),
            weight: 1,
            least_conn: false,
            broken: None,
        }
    }

    /// A path this service answers (and, with a context root, nothing else on its host).
    fn path(&self) -> String {
        match &self.context_root {
            Some(cr) => format!("{cr}/p"),
            None => "/".into(),
        }
    }

    fn bodies(&self) -> Vec<&'static str> {
        self.endpoints.iter().map(|&i| NAMES[i]).collect()
    }

    fn render(&self, out: &mut String, backends: &[SocketAddr], cluster: Option<&str>) {
        if !self.present {
            return;
        }
        let mut labels = BTreeMap::new();
        labels.insert("com.docker.lb.hosts", self.hosts.join(","));
        if let Some(cr) = &self.context_root {
            labels.insert("com.docker.lb.context_root", cr.clone());
        }
        if self.weight != 1 {
            labels.insert("com.docker.lb.weight", self.weight.to_string());
        }
        if self.least_conn {
            labels.insert("com.docker.lb.balance", "least_conn".into());
        }
        if let Some(c) = cluster {
            labels.insert("com.docker.lb.service_cluster", c.into());
        }
        if let Some((k, v)) = self.broken {
            labels.insert(k, v.into());
        }
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .map(|&i| format!("\"{}\"", backends[i]))
            .collect();
        out.push_str(&format!(
            "[[service]]\nname = \"{}\"\nendpoints = [{}]\n[service.labels]\n",
            self.name,
            eps.join(", ")
        ));
        for (k, v) in labels {
            out.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        }
        out.push('\n');
    }
}

/// What a churn step must have changed, checked with fresh connections as soon as the
/// step is visible.
enum Expect {
    /// 200 from one of `bodies`, every time.
    Serves {
        host: String,
        path: String,
        bodies: Vec<&'static str>,
    },
    /// As `Serves`, and `new` answers within `tries` requests (an endpoint just added).
    Appears {
        host: String,
        path: String,
        bodies: Vec<&'static str>,
        new: &'static str,
        tries: usize,
    },
    /// As `Serves` for `tries` requests, none from `gone` (an endpoint just removed).
    Never {
        host: String,
        path: String,
        bodies: Vec<&'static str>,
        gone: &'static str,
        tries: usize,
    },
    /// 503: no route any more.
    Gone { host: String, path: String },
}

impl Expect {
    fn serves(s: &Svc) -> Expect {
        Expect::Serves {
            host: s.hosts[0].clone(),
            path: s.path(),
            bodies: s.bodies(),
        }
    }

    async fn check(&self, proxy: SocketAddr) -> Result<(), String> {
        let get = |host: &str, path: &str| {
            let (host, path) = (host.to_string(), path.to_string());
            async move {
                try_http(proxy, &host, &path)
                    .await
                    .ok_or_else(|| format!("{host}{path}: no answer"))
            }
        };
        let from = |host: &str, path: &str, bodies: &[&str], got: &(u16, String)| {
            if got.0 == 200 && bodies.contains(&got.1.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "{host}{path}: {got:?}, expected 200 from {bodies:?}"
                ))
            }
        };
        match self {
            Expect::Serves { host, path, bodies } => {
                for _ in 0..2 * bodies.len() {
                    from(host, path, bodies, &get(host, path).await?)?;
                }
            }
            Expect::Appears {
                host,
                path,
                bodies,
                new,
                tries,
            } => {
                for _ in 0..*tries {
                    let got = get(host, path).await?;
                    from(host, path, bodies, &got)?;
                    if got.1 == *new {
                        return Ok(());
                    }
                }
                return Err(format!("{host}{path}: no answer from {new} in {tries}"));
            }
            Expect::Never {
                host,
                path,
                bodies,
                gone,
                tries,
            } => {
                for _ in 0..*tries {
                    let got = get(host, path).await?;
                    from(host, path, bodies, &got)
                        .map_err(|e| format!("{e} ({gone} was removed)"))?;
                }
            }
            Expect::Gone { host, path } => {
                let got = get(host, path).await?;
                if got.0 != 503 {
                    return Err(format!("{host}{path}: {got:?}, expected 503"));
                }
            }
        }
        Ok(())
    }
}

/// Every service of the file.
struct World {
    backends: Vec<SocketAddr>,
    cluster: Option<String>,
    /// Never change.
    stable: Vec<Svc>,
    /// Two services on `canary.test` whose weights change.
    canary: [Svc; 2],
    /// `rolling.test`, always served, whose endpoints are replaced (a rolling update).
    rolling: Svc,
    churn: Vec<Svc>,
    /// One fresh host per valid step: when it answers, the whole step is live (tables are
    /// swapped whole).
    marker: Svc,
    /// Hosts of removed or re-hosted churn services, still hit by the churn clients.
    retired: Vec<(String, String)>,
}

/// Load targets of stable hosts: host, path, the backends allowed to answer.
fn stable_targets() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    vec![
        ("a.stable.test", "/", vec!["b0"]),
        ("b.stable.test", "/x", vec!["b1", "b2"]),
        ("c.stable.test", "/", vec!["b3"]),
        ("c.stable.test", "/api/v1", vec!["b4"]),
        ("d.stable.test", "/", vec!["b1", "b5"]),
        ("www.d.stable.test", "/y", vec!["b1", "b5"]),
        ("x.wild.stable.test", "/", vec!["b2"]),
        ("canary.test", "/", vec!["b0", "b1", "b2"]),
        ("rolling.test", "/", vec!["b3", "b4", "b5"]),
    ]
}

impl World {
    fn new(backends: Vec<SocketAddr>, cluster: Option<&str>) -> World {
        let mut c_api = Svc::new("s-c-api", &["c.stable.test"], &[4]);
        c_api.context_root = Some("/api".into());
        let mut d = Svc::new("s-d", &["d.stable.test", "www.d.stable.test"], &[5, 1]);
        d.least_conn = true;
        let stable = vec![
            Svc::new("s-a", &["a.stable.test"], &[0]),
            Svc::new("s-b", &["b.stable.test"], &[1, 2]),
            Svc::new("s-c", &["c.stable.test"], &[3]),
            c_api,
            d,
            Svc::new("s-wild", &["*.wild.stable.test"], &[2]),
        ];
        let churn = (0..CHURN_SERVICES)
            .map(|i| {
                let mut s = Svc::new(
                    &format!("c{i}"),
                    &[&format!("c{i}-v0.churn.test")],
                    &[pool(i).start + i % pool(i).len()],
                );
                s.present = i % 2 == 0;
                s
            })
            .collect();
        World {
            backends,
            cluster: cluster.map(String::from),
            stable,
            canary: [
                Svc::new("canary-v1", &["canary.test"], &[0, 1]),
                Svc::new("canary-v2", &["canary.test"], &[2]),
            ],
            rolling: Svc::new("rolling", &["rolling.test"], &[3, 4]),
            churn,
            marker: Svc::new("marker", &["m0.marker.test"], &[MARKER]),
            retired: Vec::new(),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let all = self
            .stable
            .iter()
            .chain(&self.canary)
            .chain([&self.rolling, &self.marker])
            .chain(&self.churn);
        for s in all {
            s.render(&mut out, &self.backends, self.cluster.as_deref());
        }
        out
    }

    /// Services in the file now.
    fn service_count(&self) -> usize {
        self.stable.len() + 4 + self.churn.iter().filter(|s| s.present).count()
    }

    /// Churn hosts for the churn clients: current ones and recently retired ones.
    fn churn_targets(&self) -> Vec<(String, String)> {
        let mut t: Vec<(String, String)> = self
            .churn
            .iter()
            .filter(|s| s.present)
            .flat_map(|s| s.hosts.iter().map(|h| (h.clone(), s.path())))
            .collect();
        t.extend(self.retired.iter().cloned());
        t
    }

    fn retire(&mut self, host: String, path: String) {
        self.retired.push((host, path));
        if self.retired.len() > 8 {
            self.retired.remove(0);
        }
    }

    fn broken_count(&self) -> usize {
        self.churn
            .iter()
            .filter(|s| s.present && s.broken.is_some())
            .count()
    }

    /// Changes the model by one random step and sets the marker to `seq`. Returns the
    /// step's kind and what must hold once it is live.
    fn step(&mut self, rng: &mut Rng, seq: u64) -> (&'static str, Vec<Expect>) {
        self.marker.hosts = vec![format!("m{seq}.marker.test")];
        let roll = rng.below(100);
        if roll < 8 {
            for s in &mut self.canary {
                s.weight = 1 + rng.below(10) as u32;
            }
            let expect = Expect::Serves {
                host: "canary.test".into(),
                path: "/".into(),
                bodies: vec!["b0", "b1", "b2"],
            };
            return ("canary weights", vec![expect]);
        }
        if roll < 20 {
            return self.roll(rng);
        }
        let i = rng.below(self.churn.len());
        let fresh = |i: usize, n: u64| format!("c{i}-v{n}.churn.test");
        let s = &mut self.churn[i];
        if !s.present {
            // One endpoint for the churn-only services, so their backends leave the table
            // often; up to three for the others.
            let n = if i < 4 { 1 } else { 1 + rng.below(3) };
            let endpoints = pick_endpoints(rng, n, pool(i));
            *s = Svc::new(&s.name.clone(), &[&fresh(i, seq)], &endpoints);
            if rng.chance(30) {
                s.hosts.push(format!("alt-{}", fresh(i, seq)));
            }
            if rng.chance(30) {
                s.context_root = Some(format!("/r{seq}"));
            }
            s.least_conn = rng.chance(20);
            return ("add", vec![Expect::serves(s)]);
        }
        let r = rng.below(100);
        if s.broken.is_some() {
            // Only endpoints may change while a label is broken: the service keeps its last
            // good labels, applied to its current endpoints.
            return match r {
                0..=49 => {
                    s.broken = None;
                    ("fix label", vec![Expect::serves(s)])
                }
                50..=74 => self.scale(i, rng, "scale (broken)"),
                _ => self.remove(i),
            };
        }
        match r {
            0..=14 => self.remove(i),
            15..=29 => {
                let old: Vec<(String, String)> =
                    s.hosts.iter().map(|h| (h.clone(), s.path())).collect();
                s.hosts = vec![fresh(i, seq)];
                let mut expect = vec![Expect::serves(s)];
                for (host, path) in old {
                    expect.push(Expect::Gone {
                        host: host.clone(),
                        path: path.clone(),
                    });
                    self.retire(host, path);
                }
                ("re-host", expect)
            }
            30..=44 => {
                let old = s.path();
                s.context_root = if s.context_root.is_some() && rng.chance(50) {
                    None
                } else {
                    Some(format!("/r{seq}"))
                };
                let mut expect = vec![Expect::serves(s)];
                if s.context_root.is_some() {
                    // The old path is on no route of the host any more.
                    expect.push(Expect::Gone {
                        host: s.hosts[0].clone(),
                        path: old,
                    });
                }
                ("context root", expect)
            }
            45..=74 => self.scale(i, rng, "scale"),
            75..=82 => {
                s.weight = 1 + rng.below(5) as u32;
                s.least_conn = rng.chance(30);
                ("weight/balance", vec![Expect::serves(s)])
            }
            _ => {
                s.broken = Some(BROKEN[rng.below(BROKEN.len())]);
                ("broken label", vec![Expect::serves(s)])
            }
        }
    }

    fn remove(&mut self, i: usize) -> (&'static str, Vec<Expect>) {
        let s = &mut self.churn[i];
        s.present = false;
        let path = s.path();
        let hosts = s.hosts.clone();
        let mut expect = Vec::new();
        for host in hosts {
            expect.push(Expect::Gone {
                host: host.clone(),
                path: path.clone(),
            });
            self.retire(host, path.clone());
        }
        ("remove", expect)
    }

    /// Adds or removes one endpoint of churn service `i`.
    fn scale(
        &mut self,
        i: usize,
        rng: &mut Rng,
        kind: &'static str,
    ) -> (&'static str, Vec<Expect>) {
        let s = &mut self.churn[i];
        let (host, path) = (s.hosts[0].clone(), s.path());
        let n = s.endpoints.len();
        if n > 1 && (n >= 4 || rng.chance(40)) {
            let gone = NAMES[s.endpoints.remove(rng.below(n))];
            let expect = Expect::Never {
                host,
                path,
                bodies: s.bodies(),
                gone,
                tries: 4 * n,
            };
            return (kind, vec![expect]);
        }
        let free: Vec<usize> = pool(i).filter(|b| !s.endpoints.contains(b)).collect();
        let new = free[rng.below(free.len())];
        s.endpoints.push(new);
        // least_conn keeps picking the same idle endpoint: only round robin must show the
        // new one within a few requests.
        let expect = if s.least_conn {
            Expect::serves(s)
        } else {
            Expect::Appears {
                host,
                path,
                bodies: s.bodies(),
                new: NAMES[new],
                tries: 20 * s.endpoints.len(),
            }
        };
        (kind, vec![expect])
    }

    /// A rolling update of `rolling.test`: one endpoint of b3..b5 replaced or added, or one
    /// removed, never none left.
    fn roll(&mut self, rng: &mut Rng) -> (&'static str, Vec<Expect>) {
        let s = &mut self.rolling;
        let free: Vec<usize> = [3, 4, 5]
            .into_iter()
            .filter(|b| !s.endpoints.contains(b))
            .collect();
        let mut gone = None;
        if s.endpoints.len() > 1 && (free.is_empty() || rng.chance(50)) {
            gone = Some(NAMES[s.endpoints.remove(rng.below(s.endpoints.len()))]);
        }
        let mut new = None;
        if !free.is_empty() && (s.endpoints.len() == 1 || rng.chance(50)) {
            let b = free[rng.below(free.len())];
            s.endpoints.push(b);
            new = Some(NAMES[b]);
        }
        let (host, path, bodies) = (s.hosts[0].clone(), s.path(), s.bodies());
        let n = s.endpoints.len();
        let mut expect = Vec::new();
        if let Some(gone) = gone {
            expect.push(Expect::Never {
                host: host.clone(),
                path: path.clone(),
                bodies: bodies.clone(),
                gone,
                tries: 4 * n + 4,
            });
        }
        if let Some(new) = new {
            expect.push(Expect::Appears {
                host,
                path,
                bodies,
                new,
                tries: 20 * n,
            });
        }
        if expect.is_empty() {
            expect.push(Expect::serves(s));
        }
        ("rolling update", expect)
    }

    /// Removes the services that use the churn-only backends (the last step of a phase).
    fn remove_churn_only(&mut self, seq: u64) -> (&'static str, Vec<Expect>) {
        self.marker.hosts = vec![format!("m{seq}.marker.test")];
        let mut expect = Vec::new();
        for i in 0..self.churn.len() {
            if pool(i) == CHURN_ONLY && self.churn[i].present {
                expect.extend(self.remove(i).1);
            }
        }
        ("remove churn-only", expect)
    }

    /// Churn-only backends some service uses now (their upstreams are in the table).
    fn used_churn_backends(&self) -> Vec<usize> {
        CHURN_ONLY
            .filter(|b| {
                self.churn
                    .iter()
                    .any(|s| s.present && s.endpoints.contains(b))
            })
            .collect()
    }
}

/// The backends churn service `i` draws its endpoints from: the first four only use the
/// churn-only backends (whose upstreams then leave the table and come back), the others
/// the stable hosts' backends (shared upstreams that must outlive any one service).
fn pool(i: usize) -> std::ops::Range<usize> {
    if i < 4 {
        CHURN_ONLY
    } else {
        0..CHURN_ONLY.start
    }
}

fn pick_endpoints(rng: &mut Rng, n: usize, pool: std::ops::Range<usize>) -> Vec<usize> {
    let mut all: Vec<usize> = pool.collect();
    (0..n).map(|_| all.remove(rng.below(all.len()))).collect()
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct LoadStats {
    requests: u64,
    ok: u64,
    /// Churn clients: 503 for a host that is (being) removed.
    unavailable: u64,
    /// Unexpected statuses, by status.
    bad_status: BTreeMap<u16, u64>,
    wrong_backend: u64,
    /// Failed connects, resets, closed connections.
    conn_errors: u64,
    timeouts: u64,
    max_latency: Duration,
    examples: Vec<String>,
}

impl LoadStats {
    fn errors(&self) -> u64 {
        self.bad_status.values().sum::<u64>()
            + self.wrong_backend
            + self.conn_errors
            + self.timeouts
    }

    fn add(&mut self, o: LoadStats) {
        self.requests += o.requests;
        self.ok += o.ok;
        self.unavailable += o.unavailable;
        for (k, v) in o.bad_status {
            *self.bad_status.entry(k).or_default() += v;
        }
        self.wrong_backend += o.wrong_backend;
        self.conn_errors += o.conn_errors;
        self.timeouts += o.timeouts;
        self.max_latency = self.max_latency.max(o.max_latency);
        for e in o.examples {
            if self.examples.len() < 10 {
                self.examples.push(e);
            }
        }
    }

    fn example(&mut self, t0: Instant, e: String) {
        if self.examples.len() < 10 {
            self.examples
                .push(format!("t={:.3}s {e}", t0.elapsed().as_secs_f64()));
        }
    }

    /// Counts one request's outcome: a 200 must come from one of `backends`; a 503 counts
    /// as unavailable where `unavailable_ok` (churning hosts), as a bad status otherwise.
    /// True when the connection failed (the caller backs off a little).
    fn record(
        &mut self,
        t0: Instant,
        target: &str,
        outcome: Outcome,
        backends: &[&str],
        unavailable_ok: bool,
    ) -> bool {
        self.requests += 1;
        match outcome {
            Outcome::Answer(200, body) if backends.contains(&body.as_str()) => self.ok += 1,
            Outcome::Answer(200, body) => {
                self.wrong_backend += 1;
                self.example(
                    t0,
                    format!("{target}: 200 from {body:?}, expected {backends:?}"),
                );
            }
            Outcome::Answer(503, _) if unavailable_ok => self.unavailable += 1,
            Outcome::Answer(status, body) => {
                *self.bad_status.entry(status).or_default() += 1;
                self.example(t0, format!("{target}: {status} {body:?}"));
            }
            Outcome::Failed(e) => {
                self.conn_errors += 1;
                self.example(t0, format!("{target}: {e}"));
                return true;
            }
            Outcome::TimedOut => {
                self.timeouts += 1;
                self.example(t0, format!("{target}: no answer in {REQUEST_TIMEOUT:?}"));
            }
        }
        false
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

enum Outcome {
    Answer(u16, String),
    Failed(String),
    TimedOut,
}

/// One request on the keep-alive connection `sender` (made first if there is none).
async fn request(
    proxy: SocketAddr,
    sender: &mut Option<Sender>,
    host: &str,
    path: &str,
) -> Outcome {
    let exchange = async {
        if sender.is_none() {
            *sender = Some(connect(proxy).await?);
        }
        let s = sender.as_mut().unwrap();
        s.ready().await.map_err(|e| format!("connection: {e}"))?;
        let req = hyper::Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok((status, body))) => Outcome::Answer(status, body),
        Ok(Err(e)) => {
            *sender = None;
            Outcome::Failed(e)
        }
        Err(_) => {
            *sender = None;
            Outcome::TimedOut
        }
    }
}

/// A stable-host client: every answer must be 200 from an allowed backend.
async fn stable_client(proxy: SocketAddr, k: usize, until: Instant, t0: Instant) -> LoadStats {
    let targets = stable_targets();
    let mut st = LoadStats::default();
    let mut sender = None;
    let mut i = k;
    while Instant::now() < until {
        let (host, path, bodies) = &targets[i % targets.len()];
        i += 1;
        let started = Instant::now();
        let outcome = request(proxy, &mut sender, host, path).await;
        st.max_latency = st.max_latency.max(started.elapsed());
        if st.record(t0, &format!("{host}{path}"), outcome, bodies, false) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    st
}

/// A churning-host client: 200 from any backend, or 503 (host just removed, or not yet
/// there); nothing else.
async fn churn_client(
    proxy: SocketAddr,
    k: usize,
    targets: Arc<Mutex<Vec<(String, String)>>>,
    until: Instant,
    t0: Instant,
) -> LoadStats {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (k as u64 + 1));
    let mut st = LoadStats::default();
    let mut sender = None;
    while Instant::now() < until {
        let (host, path) = {
            let t = targets.lock().unwrap();
            t[rng.below(t.len())].clone()
        };
        let started = Instant::now();
        let outcome = request(proxy, &mut sender, &host, &path).await;
        st.max_latency = st.max_latency.max(started.elapsed());
        if st.record(t0, &format!("{host}{path}"), outcome, &NAMES, true) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    st
}

// ---------------------------------------------------------------------------------------
// One soak phase
// ---------------------------------------------------------------------------------------

/// The processes of a phase: where traffic goes, the process that routes it (sampled for
/// memory and fds, its table generation read), and the one that watches the file (its
/// reload failures read; the same process in the all-in-one role).
struct Target<'a> {
    label: &'static str,
    proxy: SocketAddr,
    routing: &'a Node,
    watcher: &'a Node,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    /// RSS of the process watching the file (the controller in the split roles).
    watcher_rss_kib: u64,
}

struct Report {
    secs: f64,
    stable: LoadStats,
    churn: LoadStats,
    steps: usize,
    kinds: BTreeMap<&'static str, usize>,
    convergence: Vec<Duration>,
    lost_steps: usize,
    invalid_files: usize,
    rejections: Vec<Duration>,
    wrong_state: Vec<String>,
    samples: Vec<Sample>,
    fds_before: usize,
    fds_after_idle: usize,
    /// Connections the backends had open from interlock (its pooled upstream connections)
    /// when `fds_before` and `fds_after_idle` were read.
    upstream_conns: (usize, usize),
    /// Times a churn-only backend left the table (its upstream retired).
    departures: usize,
    /// The file is watched by another process (the controller), sampled too.
    separate_watcher: bool,
    /// Churn-only backends out of the table at the end, with the connections interlock
    /// still had open to them once idle (its retired pools: must be none).
    retired_open: Vec<(&'static str, usize)>,
    generations: (f64, f64),
    reload_failures: (f64, f64),
    services_rejected: Option<f64>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Report {
    /// (start after warm-up, peak, end) samples.
    fn rss(&self) -> (u64, u64, u64) {
        let start = self
            .samples
            .iter()
            .find(|s| s.at >= WARM_UP)
            .or(self.samples.first())
            .map_or(0, |s| s.rss_kib);
        let peak = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let end = self.samples.last().map_or(0, |s| s.rss_kib);
        (start, peak, end)
    }

    /// (start after warm-up, peak, end) RSS of the process watching the file.
    fn watcher_rss(&self) -> (u64, u64, u64) {
        let start = self
            .samples
            .iter()
            .find(|s| s.at >= WARM_UP)
            .or(self.samples.first())
            .map_or(0, |s| s.watcher_rss_kib);
        let peak = self
            .samples
            .iter()
            .map(|s| s.watcher_rss_kib)
            .max()
            .unwrap_or(0);
        let end = self.samples.last().map_or(0, |s| s.watcher_rss_kib);
        (start, peak, end)
    }

    fn fds(&self) -> (usize, usize, usize) {
        let start = self
            .samples
            .iter()
            .find(|s| s.at >= WARM_UP)
            .or(self.samples.first())
            .map_or(0, |s| s.fds);
        let peak = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let end = self.samples.last().map_or(0, |s| s.fds);
        (start, peak, end)
    }

    fn print(&self, label: &str) {
        let total = self.stable.requests + self.churn.requests;
        eprintln!("==== soak [{label}] {:.1} s of load ====", self.secs);
        eprintln!(
            "requests: {total} ({:.0} req/s); stable {} (ok {}, errors {}: status {:?}, \
             wrong backend {}, connection {}, timeouts {}; max latency {}); churn {} (ok {}, \
             503 {}, errors {}: status {:?}, wrong backend {}, connection {}, timeouts {}; \
             max latency {})",
            total as f64 / self.secs,
            self.stable.requests,
            self.stable.ok,
            self.stable.errors(),
            self.stable.bad_status,
            self.stable.wrong_backend,
            self.stable.conn_errors,
            self.stable.timeouts,
            ms(self.stable.max_latency),
            self.churn.requests,
            self.churn.ok,
            self.churn.unavailable,
            self.churn.errors(),
            self.churn.bad_status,
            self.churn.wrong_backend,
            self.churn.conn_errors,
            self.churn.timeouts,
            ms(self.churn.max_latency),
        );
        for e in self.stable.examples.iter().chain(&self.churn.examples) {
            eprintln!("  load error: {e}");
        }
        let mut conv = self.convergence.clone();
        conv.sort();
        eprintln!(
            "churn: {} steps ({:.1}/s) {:?}; {} invalid files; convergence p50 {} p99 {} max {} \
             over {} steps, {} lost; invalid file rejected in p50 {} max {}",
            self.steps,
            self.steps as f64 / self.secs,
            self.kinds,
            self.invalid_files,
            ms(percentile(&conv, 0.5)),
            ms(percentile(&conv, 0.99)),
            ms(conv.last().copied().unwrap_or_default()),
            conv.len(),
            self.lost_steps,
            ms(percentile(&self.rejections, 0.5)),
            ms(self.rejections.iter().max().copied().unwrap_or_default()),
        );
        for e in &self.wrong_state {
            eprintln!("  wrong state after a step: {e}");
        }
        let (r0, rp, r1) = self.rss();
        let (f0, fp, f1) = self.fds();
        eprintln!(
            "RSS: first {} / after warm-up {} / peak {} / end {} (growth {}); fds: before \
             load {} / after warm-up {} / peak {} / end of load {} / idle after load {} \
             (upstream connections before {} / idle after {})",
            mib(self.samples.first().map_or(0, |s| s.rss_kib)),
            mib(r0),
            mib(rp),
            mib(r1),
            mib(r1.saturating_sub(r0)),
            self.fds_before,
            f0,
            fp,
            f1,
            self.fds_after_idle,
            self.upstream_conns.0,
            self.upstream_conns.1,
        );
        eprintln!(
            "churn-only upstreams retired {} times; out of the table at the end, with open \
             connections: {:?}",
            self.departures, self.retired_open
        );
        let trace: Vec<String> = self
            .samples
            .iter()
            .step_by(5)
            .map(|s| {
                format!(
                    "{:.0}s:{:.1}",
                    s.at.as_secs_f64(),
                    s.rss_kib as f64 / 1024.0
                )
            })
            .collect();
        eprintln!("RSS MiB every 5 s: {}", trace.join(" "));
        if self.separate_watcher {
            let (w0, wp, w1) = self.watcher_rss();
            eprintln!(
                "controller RSS: first {} / after warm-up {} / peak {} / end {}",
                mib(self.samples.first().map_or(0, |s| s.watcher_rss_kib)),
                mib(w0),
                mib(wp),
                mib(w1)
            );
        }
        eprintln!(
            "16 MiB (the allowed growth) is {:.0} bytes per request or {:.0} KiB per table swap \
             of this run",
            16.0 * 1048576.0 / total.max(1) as f64,
            16.0 * 1024.0 / self.convergence.len().max(1) as f64
        );
        eprintln!(
            "metrics: interlock_table_generation {} -> {}; interlock_reload_failures_total {} \
             -> {}; interlock_services_rejected at the end {:?}",
            self.generations.0,
            self.generations.1,
            self.reload_failures.0,
            self.reload_failures.1,
            self.services_rejected,
        );
    }

    fn assert_ok(&self, label: &str) {
        assert_eq!(
            self.stable.errors(),
            0,
            "[{label}] stable hosts must always answer 200 from their backends: {:?}",
            self.stable.examples
        );
        assert!(self.stable.ok > 1000, "[{label}] hardly any load ran");
        assert_eq!(
            self.churn.errors(),
            0,
            "[{label}] churning hosts may answer 200 or 503, nothing else: {:?}",
            self.churn.examples
        );
        assert!(
            self.wrong_state.is_empty(),
            "[{label}] live state differs from the file: {:?}",
            self.wrong_state
        );
        assert_eq!(
            self.lost_steps, 0,
            "[{label}] churn steps never became visible"
        );
        assert!(
            self.steps >= 20,
            "[{label}] too few churn steps: {}",
            self.steps
        );
        let mut conv = self.convergence.clone();
        conv.sort();
        // The file is polled every 50 ms; 2 s leaves room for a loaded 2-core machine
        // running the unoptimised binary, yet catches a reload that stalls or queues.
        let p99 = percentile(&conv, 0.99);
        assert!(
            p99 < Duration::from_secs(2),
            "[{label}] convergence p99 {p99:?}"
        );
        // Every valid file made exactly one new table: nothing coalesced, nothing extra.
        let valid_writes = (self.steps - self.invalid_files) as f64;
        assert!(
            self.generations.1 - self.generations.0 == valid_writes,
            "[{label}] {valid_writes} valid writes but generations {:?}",
            self.generations
        );
        assert_eq!(
            self.reload_failures.1 - self.reload_failures.0,
            self.invalid_files as f64,
            "[{label}] each invalid file counts once as a reload failure"
        );

        // Memory. What the proxy legitimately holds grows with connections (32 clients, a
        // pool of idle upstream connections per endpoint, their buffers) and with the table
        // (22 services): all of that is reached during warm-up and stays flat afterwards
        // (observed: ~27 MiB after warm-up, moving by +-3 MiB as the allocator keeps or
        // returns freed pages). Allowed growth from after warm-up to the end: 16 MiB, five
        // times that wobble. What happens continuously is requests and table swaps, so that
        // is what a leak would scale with: on the default 60 s run (~200k requests, ~350
        // swaps) 16 MiB is ~80 bytes per request or ~45 KiB per swap, about the size of a
        // whole compiled table of this file. The printout gives the figures for each run.
        let (start, peak, end) = self.rss();
        let growth = end.saturating_sub(start);
        assert!(
            growth < 16 * 1024,
            "[{label}] RSS grew by {} after warm-up ({} -> {}, peak {})",
            mib(growth),
            mib(start),
            mib(end),
            mib(peak)
        );
        // The controller compiles and serves a snapshot per change: the same bound.
        if self.separate_watcher {
            let (w0, wp, w1) = self.watcher_rss();
            assert!(
                w1.saturating_sub(w0) < 16 * 1024,
                "[{label}] controller RSS grew after warm-up: {} -> {} (peak {})",
                mib(w0),
                mib(w1),
                mib(wp)
            );
        }
        // File descriptors: under the same load, the count at the end matches the count
        // after warm-up (client connections are fixed; upstream connections are bounded by
        // the backends' pools). Slack of 16 for pool connections in flux at the instant of
        // sampling. Idle after the load, no more than before it (plus the same slack for
        // pooled upstream connections that have not timed out yet).
        let (f0, _, f1) = self.fds();
        assert!(
            f1 <= f0 + 16,
            "[{label}] fds grew under the same load: {f0} -> {f1}"
        );
        // Idle: every fd gained since before the load is a pooled upstream connection the
        // backends see open too. A client connection interlock failed to close, or a socket
        // kept after its peer left, breaks the equality (slack for a close in progress).
        assert!(
            self.retired_open.iter().all(|(_, n)| *n == 0),
            "[{label}] connections to endpoints no longer in the table stay open: {:?}",
            self.retired_open
        );
        let extra_fds = self.fds_after_idle as i64 - self.fds_before as i64;
        let extra_conns = self.upstream_conns.1 as i64 - self.upstream_conns.0 as i64;
        assert!(
            (extra_fds - extra_conns).abs() <= 4,
            "[{label}] idle after the load: fds {} -> {}, but upstream connections {:?}",
            self.fds_before,
            self.fds_after_idle,
            self.upstream_conns
        );
    }
}

async fn metric(node: &Node, name: &str) -> f64 {
    node.metric(name, &[]).await.unwrap_or(0.0)
}

/// Waits until every stable host and the marker answer.
async fn wait_routed(proxy: SocketAddr, world: &World) {
    let mut targets: Vec<(String, String, Vec<&str>)> = stable_targets()
        .into_iter()
        .map(|(h, p, b)| (h.to_string(), p.to_string(), b))
        .collect();
    targets.push((
        world.marker.hosts[0].clone(),
        "/".into(),
        vec![NAMES[MARKER]],
    ));
    for (host, path, bodies) in targets {
        let ok = eventually(Duration::from_secs(15), || async {
            matches!(try_http(proxy, &host, &path).await,
                Some((200, body)) if bodies.contains(&body.as_str()))
        })
        .await;
        assert!(ok.is_some(), "{host}{path} never answered from {bodies:?}");
    }
}

/// Runs load and churn against `t` for `secs`, then reports.
async fn soak(
    t: &Target<'_>,
    scratch: &Scratch,
    backends: &[TestBackend],
    mut world: World,
    secs: u64,
    seed: u64,
) -> Report {
    let mut rng = Rng(seed);
    let open_upstream = || {
        backends
            .iter()
            .map(|b| b.connections.load(Ordering::SeqCst) - b.closed.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    wait_routed(t.proxy, &world).await;
    let fds_before = open_fds(t.routing.pid()).unwrap();
    let upstream_before = open_upstream();
    let generations_start = metric(t.routing, "interlock_table_generation").await;
    let failures_start = metric(t.watcher, "interlock_reload_failures_total").await;

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let churn_targets = Arc::new(Mutex::new(world.churn_targets()));
    let mut load = Vec::new();
    for k in 0..STABLE_CLIENTS {
        load.push((true, tokio::spawn(stable_client(t.proxy, k, until, t0))));
    }
    for k in 0..CHURN_CLIENTS {
        let targets = churn_targets.clone();
        load.push((
            false,
            tokio::spawn(churn_client(t.proxy, k, targets, until, t0)),
        ));
    }
    let (pid, watcher_pid) = (t.routing.pid(), t.watcher.pid());
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < until {
            tick.tick().await;
            samples.push(Sample {
                at: t0.elapsed(),
                rss_kib: rss_kib(pid).expect("VmRSS of the interlock process"),
                fds: open_fds(pid).expect("fds of the interlock process"),
                watcher_rss_kib: rss_kib(watcher_pid).unwrap_or(0),
            });
        }
        samples
    });

    // Churn: one step at a time, each written, waited for and checked before the next.
    let (mut steps, mut invalid_files, mut lost_steps) = (0, 0, 0);
    let mut kinds = BTreeMap::new();
    let (mut convergence, mut rejections, mut wrong_state) = (Vec::new(), Vec::new(), Vec::new());
    let mut seq = 0u64;
    let mut last_invalid = false;
    let mut departures = 0;
    let mut in_table = world.used_churn_backends();
    loop {
        // The last step takes the churn-only services out, so the end checks can see that
        // interlock let go of all their backends.
        let last = Instant::now() + Duration::from_millis(600) >= until;
        seq += 1;
        steps += 1;
        let pause = Duration::from_millis(100 + rng.below(101) as u64);
        if !last && !last_invalid && rng.chance(3) {
            // An unparsable file: counted, reported, and the last good state stays.
            last_invalid = true;
            invalid_files += 1;
            *kinds.entry("invalid file").or_insert(0) += 1;
            let before = metric(t.watcher, "interlock_reload_failures_total").await;
            scratch.write_services(&format!(
                "{}[[service]\nname = \"bad-{seq}\"\n",
                world.render()
            ));
            let written = Instant::now();
            match eventually(STEP_TIMEOUT, || async {
                metric(t.watcher, "interlock_reload_failures_total").await > before
            })
            .await
            {
                Some(_) => rejections.push(written.elapsed()),
                None => wrong_state.push(format!("step {seq}: invalid file never reported")),
            }
            tokio::time::sleep_until((written + pause).into()).await;
            continue;
        }
        last_invalid = false;
        let (kind, expects) = if last {
            world.remove_churn_only(seq)
        } else {
            world.step(&mut rng, seq)
        };
        *kinds.entry(kind).or_insert(0) += 1;
        let now_used = world.used_churn_backends();
        departures += in_table.iter().filter(|b| !now_used.contains(b)).count();
        in_table = now_used;
        scratch.write_services(&world.render());
        let written = Instant::now();
        let marker = world.marker.hosts[0].clone();
        let mut live = false;
        while written.elapsed() < STEP_TIMEOUT {
            if let Some((200, body)) = try_http(t.proxy, &marker, "/").await {
                if body == NAMES[MARKER] {
                    live = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !live {
            lost_steps += 1;
            wrong_state.push(format!(
                "step {seq} ({kind}): not live after {STEP_TIMEOUT:?}"
            ));
            if last {
                break;
            }
            continue;
        }
        convergence.push(written.elapsed());
        *churn_targets.lock().unwrap() = world.churn_targets();
        for e in &expects {
            if let Err(msg) = e.check(t.proxy).await {
                wrong_state.push(format!("step {seq} ({kind}): {msg}"));
            }
        }
        if kind == "broken label" || kind == "fix label" {
            // The gauge is set right after the table swap.
            let want = world.broken_count() as f64;
            let got = eventually(Duration::from_secs(2), || async {
                metric(t.routing, "interlock_services_rejected").await == want
            })
            .await;
            if got.is_none() {
                wrong_state.push(format!(
                    "step {seq} ({kind}): interlock_services_rejected {} != {want}",
                    metric(t.routing, "interlock_services_rejected").await
                ));
            }
        }
        if last {
            break;
        }
        tokio::time::sleep_until((written + pause).into()).await;
    }

    let (mut stable, mut churn) = (LoadStats::default(), LoadStats::default());
    for (is_stable, h) in load {
        let st = h.await.unwrap();
        if is_stable {
            stable.add(st);
        } else {
            churn.add(st);
        }
    }
    let secs_run = t0.elapsed().as_secs_f64();
    let samples = sampler.await.unwrap();
    let generations_end = metric(t.routing, "interlock_table_generation").await;
    let failures_end = metric(t.watcher, "interlock_reload_failures_total").await;
    let services_rejected = t.routing.metric("interlock_services_rejected", &[]).await;
    // Client connections closed: their server side goes within a moment; then interlock's
    // fds beyond those it had before the load are its pooled upstream connections.
    let settled = |fds: usize, conns: usize| {
        (fds as i64 - fds_before as i64 - (conns as i64 - upstream_before as i64)).abs() <= 4
    };
    let used = world.used_churn_backends();
    let retired_open = || -> Vec<(&'static str, usize)> {
        CHURN_ONLY
            .filter(|b| !used.contains(b))
            .map(|b| {
                let be = &backends[b];
                let open = be.connections.load(Ordering::SeqCst) - be.closed.load(Ordering::SeqCst);
                (NAMES[b], open)
            })
            .collect()
    };
    eventually(Duration::from_secs(3), || async {
        settled(open_fds(t.routing.pid()).unwrap(), open_upstream())
            && retired_open().iter().all(|(_, n)| *n == 0)
    })
    .await;
    let fds_after_idle = open_fds(t.routing.pid()).unwrap();
    let upstream_conns_idle = open_upstream();
    eprintln!(
        "[{}] {} services in the file at the end (at most {}), seed {seed:#x}",
        t.label,
        world.service_count(),
        world.stable.len() + 4 + CHURN_SERVICES
    );
    rejections.sort();
    Report {
        secs: secs_run,
        stable,
        churn,
        steps,
        kinds,
        convergence,
        lost_steps,
        invalid_files,
        rejections,
        wrong_state,
        samples,
        fds_before,
        fds_after_idle,
        upstream_conns: (upstream_before, upstream_conns_idle),
        retired_open: retired_open(),
        separate_watcher: t.routing.pid() != t.watcher.pid(),
        departures,
        generations: (generations_start, generations_end),
        reload_failures: (failures_start, failures_end),
        services_rejected,
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_load_while_services_churn() {
    let secs = env_secs("INTERLOCK_SOAK_SECS", 60).max(10);
    let split_secs = env_secs("INTERLOCK_SOAK_SPLIT_SECS", secs / 4).max(5);
    let seed = std::env::var("INTERLOCK_SOAK_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("soak: {secs} s all-in-one + {split_secs} s controller/proxy, seed {seed:#x}");
    let mut backends = Vec::new();
    for name in NAMES {
        backends.push(TestBackend::named(name).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();

    // Phase 1: all-in-one `interlock run`.
    let report = {
        let scratch = Scratch::new("soak");
        let world = World::new(addrs.clone(), None);
        scratch.write_services(&world.render());
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = [
            "run",
            "--config",
            &scratch.path("services.toml"),
            "--watch-interval-ms",
            "50",
            "--listen",
            &listen.to_string(),
        ]
        .map(String::from);
        let node = Node::start("interlock run", &args).await;
        let target = Target {
            label: "run",
            proxy: listen,
            routing: &node,
            watcher: &node,
        };
        let report = soak(&target, &scratch, &backends, world, secs, seed).await;
        report.print("all-in-one");
        report
    };
    report.assert_ok("all-in-one");

    // Phase 2: `interlock controller` + one `interlock proxy`, same churn, shorter.
    let report = {
        let scratch = Scratch::new("soak");
        scratch.issue_certs(&["127.0.0.1"], &["soak"]);
        let world = World::new(addrs.clone(), Some("soak"));
        scratch.write_services(&world.render());
        let api = free_port();
        let controller_args = [
            "controller",
            "--config",
            &scratch.path("services.toml"),
            "--watch-interval-ms",
            "50",
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--control-ca",
            &scratch.path("ca.pem"),
            "--control-cert",
            &scratch.path("controller.pem"),
            "--control-key",
            &scratch.path("controller.key"),
        ]
        .map(String::from);
        let controller = Node::start("controller", &controller_args).await;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy_args = [
            "proxy",
            "--controller",
            &format!("https://127.0.0.1:{api}"),
            "--cluster",
            "soak",
            "--poll-wait",
            "5",
            "--control-ca",
            &scratch.path("ca.pem"),
            "--control-cert",
            &scratch.path("proxy-soak.pem"),
            "--control-key",
            &scratch.path("proxy-soak.key"),
            "--listen",
            &listen.to_string(),
        ]
        .map(String::from);
        let proxy = Node::start("proxy", &proxy_args).await;
        let target = Target {
            label: "split",
            proxy: listen,
            routing: &proxy,
            watcher: &controller,
        };
        let report = soak(
            &target,
            &scratch,
            &backends,
            world,
            split_secs,
            seed.rotate_left(17),
        )
        .await;
        report.print("controller + proxy");
        eprintln!(
            "controller fds at the end: {:?}",
            open_fds(controller.pid())
        );
        report
    };
    report.assert_ok("controller + proxy");
}
