//! A multi-node Docker Swarm on this machine, started by the test itself
//! (`tests/multinode/bed.sh`): private Docker daemons, each in a network namespace of its own
//! with its own address on a private /24, wired by a bridge in a "switch" namespace; the host
//! has a leg (veth) into that switch, so the test process reaches every node's address. Every
//! daemon has its own data root, exec root, pid file, socket, containerd namespace and cgroup
//! parent; the machine's own Docker Engine is never used. [`Bed`] removes it all on drop (also
//! on panic), and leftovers of earlier runs whose test process is gone are removed first.
//!
//! Also here: a bounded keep-alive HTTP/1.1 load ([`Load`]) that records which backend
//! answered each request.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names of this family of beds: `ilmn<pid>` (namespaces, interfaces, cgroups, /tmp/ilmn<pid>).
const FAMILY: &str = "ilmn";

fn script() -> PathBuf {
    super::repo().join("tests/multinode/bed.sh")
}

/// Runs bed.sh; panics with its output on failure.
fn bed_sh(args: &[&str]) {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("tests/multinode/bed.sh runs");
    assert!(
        out.status.success(),
        "bed.sh {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this machine can host the bed: root, `ip`, `nsenter`, `unshare`, `dockerd`.
pub fn missing_tools() -> Vec<&'static str> {
    let mut missing = Vec::new();
    for tool in ["ip", "nsenter", "unshare", "dockerd", "docker"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(tool);
        }
    }
    let uid = Command::new("id").arg("-u").output();
    if !uid.is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        missing.push("root");
    }
    missing
}

/// One node of the bed: a dockerd of its own.
#[derive(Clone, Debug)]
pub struct BedNode {
    /// 1-based; node 1 is the first manager.
    pub index: usize,
    pub manager: bool,
    pub addr: Ipv4Addr,
    /// `unix://...`, for DOCKER_HOST.
    pub host: String,
    /// Its hostname (and Swarm node name): `<prefix>-n<index>`.
    pub hostname: String,
    dir: PathBuf,
}

impl BedNode {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.host).args(args);
        cmd
    }

    /// `docker ARGS` against this node: stdout, or stderr as the error.
    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `docker ARGS` against this node; panics with stderr on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        self.try_docker(args)
            .unwrap_or_else(|e| panic!("docker {} on {}: {e}", args.join(" "), self.hostname))
    }

    /// This node's dockerd log (it is a daemon this test started).
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Turns this node's dockerd debug log (which records every API call) on or off, as
    /// its operator would: `debug` in its daemon.json, then SIGHUP (a live reload).
    pub fn set_debug(&self, on: bool) {
        std::fs::write(self.dir.join("daemon.json"), format!("{{\"debug\": {on}}}")).unwrap();
        let pid = self.daemon_pid().expect("the node's dockerd runs");
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "SIGHUP to the node's dockerd");
    }

    /// The pid of this node's dockerd, if it runs (checked against its command line).
    pub fn daemon_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let want = self.dir.join("data");
        String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|a| Path::new(a) == want)
            .then_some(pid)
    }

    /// The network namespace this node's dockerd runs in (`/var/run/netns/<prefix>n<index>`,
    /// made by bed.sh).
    pub fn netns(&self) -> PathBuf {
        let suffix = format!("-n{}", self.index);
        let prefix = self
            .hostname
            .strip_suffix(&suffix)
            .unwrap_or(&self.hostname);
        PathBuf::from(format!("/var/run/netns/{prefix}n{}", self.index))
    }

    /// `program` run in this node's network namespace (`nsenter --net=...`, which execs it:
    /// the child's pid is the program's own); it keeps the host's file system. A process so
    /// started is killed with the bed at the latest.
    pub fn command_in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns().display()))
            .arg(program);
        cmd
    }
}

/// The running bed; everything it made goes on drop.
pub struct Bed {
    pub prefix: String,
    pub root: PathBuf,
    /// The first three octets of the private /24.
    pub net: String,
    pub nodes: Vec<BedNode>,
    /// How long `bed.sh up` took (daemons started, swarm made and joined).
    pub started_in: Duration,
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = n.daemon_log();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| !l.contains("error reading the kernel parameter"))
                    .take(10)
                    .collect();
                eprintln!(
                    "--- dockerd of {} (last lines) ---\n{}",
                    n.hostname,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        let _ = Command::new(script())
            .args(["down", &self.prefix, self.root.to_str().unwrap()])
            .stdin(Stdio::null())
            .status();
    }
}

impl Bed {
    /// Starts `managers` managers and `workers` workers (node 1 initialises the swarm),
    /// after removing leftovers of dead earlier runs.
    pub fn up(managers: usize, workers: usize) -> Bed {
        bed_sh(&["stale", FAMILY]);
        let prefix = format!("{FAMILY}{}", std::process::id());
        assert!(prefix.len() <= 11, "interface names stay under 16 bytes");
        let root = std::env::temp_dir().join(&prefix);
        let root = if root.starts_with("/tmp") {
            root
        } else {
            Path::new("/tmp").join(&prefix)
        };
        let net = free_net();
        let n = managers + workers;
        let nodes = (1..=n)
            .map(|k| {
                let dir = root.join(format!("n{k}"));
                BedNode {
                    index: k,
                    manager: k <= managers,
                    addr: format!("{net}.{}", k + 1).parse().unwrap(),
                    host: format!("unix://{}", dir.join("docker.sock").display()),
                    hostname: format!("{prefix}-n{k}"),
                    dir,
                }
            })
            .collect();
        let mut bed = Bed {
            prefix,
            root,
            net,
            nodes,
            started_in: Duration::ZERO,
        };
        let start = Instant::now();
        bed_sh(&[
            "up",
            &bed.prefix,
            bed.root.to_str().unwrap(),
            &bed.net,
            &managers.to_string(),
            &workers.to_string(),
        ]);
        bed.started_in = start.elapsed();
        bed
    }

    pub fn manager(&self) -> &BedNode {
        &self.nodes[0]
    }

    pub fn workers(&self) -> Vec<&BedNode> {
        self.nodes.iter().filter(|n| !n.manager).collect()
    }

    /// The Swarm node ID of `node` (as the manager knows it).
    pub fn node_id(&self, node: &BedNode) -> String {
        node.docker(&["info", "--format", "{{.Swarm.NodeID}}"])
    }

    /// Copies image `tag` from node 1 to every other node (`docker save | docker load`).
    pub fn spread_image(&self, tag: &str) {
        for n in &self.nodes[1..] {
            let mut save = self.nodes[0]
                .cmd(&["save", tag])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let load = n
                .cmd(&["load", "-q"])
                .stdin(save.stdout.take().unwrap())
                .output()
                .unwrap();
            assert!(save.wait().unwrap().success(), "docker save {tag}");
            assert!(
                load.status.success(),
                "docker load on {}: {}",
                n.hostname,
                String::from_utf8_lossy(&load.stderr)
            );
        }
    }

    /// SIGKILL of `node`'s dockerd (a process this test started).
    pub fn kill_daemon(&self, node: &BedNode) {
        let pid = node
            .daemon_pid()
            .unwrap_or_else(|| panic!("{}: dockerd not running", node.hostname));
        let st = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -KILL {pid}");
        let start = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `node`'s dockerd again with the flags it had.
    pub fn start_daemon(&self, node: &BedNode) {
        bed_sh(&[
            "start",
            &self.prefix,
            self.root.to_str().unwrap(),
            &self.net,
            &node.index.to_string(),
        ]);
    }
}

/// A private /24 (`10.251.X`) that no route of this machine covers.
fn free_net() -> String {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let first = std::process::id() as usize % 200;
    for i in 0..200 {
        let net = format!("10.251.{}", (first + i) % 200 + 20);
        if !routes.contains(&format!("{net}.")) {
            return net;
        }
    }
    panic!("no free 10.251.x.0/24 for the bed");
}

/// What a bounded load saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub requests: usize,
    pub failures: usize,
    /// Requests answered, by the backend's `x-backend`.
    pub backends: BTreeMap<String, usize>,
    /// A few failures, described (status, or what went wrong on the connection).
    pub samples: Vec<String>,
    /// Requests sent again on a fresh connection because a kept-alive one was closed before
    /// any byte of the answer came (what HTTP clients do; not a failure).
    pub retried_idle_closes: usize,
}

/// A few client threads sending keep-alive HTTP/1.1 GETs to `addr` for `host`, each request
/// expected to be answered 200; bounded in count and in time.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    report: Arc<Mutex<LoadReport>>,
}

impl Load {
    /// `clients` threads, at most `max_requests` in all and `max_time` long, a request every
    /// `pace` per client (zero: back to back).
    pub fn start(
        addr: SocketAddr,
        host: &str,
        clients: usize,
        max_requests: usize,
        max_time: Duration,
        pace: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let started = Instant::now();
        let deadline = started + max_time;
        let per_client = max_requests.div_ceil(clients);
        let threads = (0..clients)
            .map(|_| {
                let (stop, report, host) = (stop.clone(), report.clone(), host.to_string());
                std::thread::spawn(move || {
                    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
                    for _ in 0..per_client {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            break;
                        }
                        let outcome = request(&mut conn, addr, &host);
                        let mut r = report.lock().unwrap();
                        r.requests += 1;
                        match outcome {
                            Outcome::Ok { backend, retried } => {
                                *r.backends.entry(backend).or_default() += 1;
                                r.retried_idle_closes += usize::from(retried);
                            }
                            Outcome::Failed(why) => {
                                r.failures += 1;
                                if r.samples.len() < 8 {
                                    // When, since the load started: to line up with events.
                                    let at = started.elapsed().as_secs_f64();
                                    r.samples.push(format!("{why} (at {at:.1} s)"));
                                }
                            }
                        }
                        drop(r);
                        if !pace.is_zero() {
                            std::thread::sleep(pace);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            report,
        }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().unwrap().clone()
    }

    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Outcome {
    Ok { backend: String, retried: bool },
    Failed(String),
}

enum Attempt {
    Answer(u16, Option<String>),
    /// A reused connection closed before any byte of the answer.
    IdleClosed,
    Error(String),
}

fn request(conn: &mut Option<(TcpStream, Vec<u8>)>, addr: SocketAddr, host: &str) -> Outcome {
    let reused = conn.is_some();
    let mut attempt = once(conn, addr, host);
    let mut retried = false;
    if reused && matches!(attempt, Attempt::IdleClosed) {
        retried = true;
        attempt = once(conn, addr, host);
    }
    match attempt {
        Attempt::Answer(200, backend) => Outcome::Ok {
            backend: backend.unwrap_or_default(),
            retried,
        },
        Attempt::Answer(status, backend) => Outcome::Failed(format!(
            "status {status} (x-backend {})",
            backend.as_deref().unwrap_or("-")
        )),
        Attempt::IdleClosed => Outcome::Failed("connection closed without an answer".into()),
        Attempt::Error(e) => Outcome::Failed(e),
    }
}

/// One request on the kept-alive connection (a new one if there is none).
fn once(conn: &mut Option<(TcpStream, Vec<u8>)>, addr: SocketAddr, host: &str) -> Attempt {
    if conn.is_none() {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.set_nodelay(true);
                *conn = Some((s, Vec::new()));
            }
            Err(e) => return Attempt::Error(format!("connect: {e}")),
        }
    }
    let (s, buf) = conn.as_mut().unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: multinode-load\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        *conn = None;
        return Attempt::IdleClosed;
    }
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) if buf.is_empty() => {
                *conn = None;
                return Attempt::IdleClosed;
            }
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                *conn = None;
                return Attempt::IdleClosed;
            }
            Ok(0) => {
                *conn = None;
                return Attempt::Error("connection closed mid-head".into());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                *conn = None;
                return Attempt::Error(format!("read: {e}"));
            }
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let length: usize = field("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The backend's name keeps its case: read it from the raw head.
    let backend = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-backend")
                .then(|| v.trim().to_string())
        });
    let close = field("connection:").is_some_and(|v| v.contains("close"));
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) => {
                *conn = None;
                return Attempt::Error(format!("status {status}: body cut short"));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                *conn = None;
                return Attempt::Error(format!("status {status}: body: {e}"));
            }
        }
    }
    if close {
        *conn = None;
    }
    Attempt::Answer(status, backend)
}

/// One request on a fresh connection: status and `x-backend`, or what went wrong.
pub fn probe(addr: SocketAddr, host: &str) -> Result<(u16, Option<String>), String> {
    let mut conn = None;
    match once(&mut conn, addr, host) {
        Attempt::Answer(status, backend) => Ok((status, backend)),
        Attempt::IdleClosed => Err("closed without an answer".into()),
        Attempt::Error(e) => Err(e),
    }
}
