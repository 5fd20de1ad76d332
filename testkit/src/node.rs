//! The real `interlock` binary as a child process (any role), and plain HTTP/1.1 helpers
//! to talk to it: what the process, control-plane and soak tests share.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `interlock` binary cargo built for the integration tests: beside the test
/// executable's `deps/` folder (`target/<profile>/interlock`).
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>");
        let bin = profile.join("interlock");
        assert!(
            bin.is_file(),
            "{} is missing: run the tests with cargo test",
            bin.display()
        );
        bin
    })
}

/// A running `interlock` process, killed on drop; its stderr is collected line by line
/// and printed if the test fails.
pub struct Node {
    pub child: Child,
    pub admin: SocketAddr,
    pub name: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.log().join("\n"));
        }
    }
}

impl Node {
    /// Spawns `interlock ARGS --admin <free port>` and waits until its admin listener
    /// answers `/healthz`.
    pub async fn start(name: &str, args: &[String]) -> Node {
        let admin = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let node = Self::spawn(name, args, admin, &[]);
        node.ready().await
    }

    /// Spawns without waiting; `env` is added to the child's environment.
    pub fn spawn(name: &str, args: &[String], admin: SocketAddr, env: &[(&str, &str)]) -> Node {
        let mut cmd = Command::new(bin());
        cmd.args(args).envs(env.iter().copied());
        Self::spawn_command(name, cmd, admin)
    }

    /// Spawns `cmd` (the binary with its arguments, or a wrapper that runs it, e.g.
    /// `nsenter`) with `--admin <admin>` added, without waiting.
    pub fn spawn_command(name: &str, mut cmd: Command, admin: SocketAddr) -> Node {
        let mut child = cmd
            .args(["--admin", &admin.to_string()])
            .env_remove("INTERLOCK_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the interlock binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Node {
            child,
            admin,
            name: name.to_string(),
            stderr,
        }
    }

    /// Waits (20 s at most) until `/healthz` answers (200 serving, or 503 while a proxy
    /// has no table yet); panics with the log if not.
    pub async fn ready(self) -> Node {
        match self.try_ready().await {
            Ok(node) => node,
            Err(node) => panic!("{} did not start:\n{}", node.name, node.log().join("\n")),
        }
    }

    /// Waits (20 s at most) until `/healthz` answers (200 or 503: the process is up); the
    /// node back as `Err` if it exited or never answered.
    pub async fn try_ready(mut self) -> Result<Node, Node> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Err(self);
            }
            if let Some((200 | 503, _)) = try_http(self.admin, "admin", "/healthz").await {
                return Ok(self);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(self)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether some stderr line contains every one of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log()
            .iter()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin, "admin", path).await
    }

    /// The value of an unlabelled metric, or of the first series whose line contains every
    /// string of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let (status, text) = try_http(self.admin, "admin", "/metrics").await?;
        assert_eq!(status, 200);
        metric_value(&text, name, labels)
    }
}

/// Resident memory (VmRSS) of process `pid` in KiB, if it is running.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The value of metric `name` in a Prometheus text exposition (see [`Node::metric`]).
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): status and body.
pub async fn try_http(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    parse_response(&out)
}

pub async fn http(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    try_http(addr, host, path)
        .await
        .unwrap_or_else(|| panic!("no HTTP answer from {addr} for {host}{path}"))
}

/// Status and body of a complete HTTP/1.1 response with a Content-Length body.
pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `check` until it holds or `timeout` passes; returns how long it took.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Runs `cmd` to its end and returns its output; panics, naming `what` and showing the
/// command's stderr, when it fails.
pub fn succeed(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch directory (services file, certificates), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "interlock-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    /// Replaces `services.toml` atomically (write a sibling, rename over it), so a watcher
    /// never reads half a file.
    pub fn write_services(&self, text: &str) {
        let tmp = self.0.join("services.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join("services.toml")).unwrap();
    }

    /// `interlock controller` on this directory's `services.toml` (watched every 50 ms) and
    /// certificates, its snapshot API on 127.0.0.1:`api`.
    pub fn controller_args(&self, api: u16) -> Vec<String> {
        [
            "controller",
            "--config",
            &self.path("services.toml"),
            "--watch-interval-ms",
            "50",
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--control-ca",
            &self.path("ca.pem"),
            "--control-cert",
            &self.path("controller.pem"),
            "--control-key",
            &self.path("controller.key"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `interlock proxy` of `cluster` following the controller at 127.0.0.1:`api` (polls held
    /// 5 s), with this directory's CA and the client certificate `stem.pem`/`stem.key`
    /// (normally `proxy-<cluster>`); the caller adds its listeners.
    pub fn proxy_args(&self, api: u16, cluster: &str, stem: &str) -> Vec<String> {
        [
            "proxy",
            "--controller",
            &format!("https://127.0.0.1:{api}"),
            "--cluster",
            cluster,
            "--poll-wait",
            "5",
            "--control-ca",
            &self.path("ca.pem"),
            "--control-cert",
            &self.path(&format!("{stem}.pem")),
            "--control-key",
            &self.path(&format!("{stem}.key")),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `interlock certs` into this directory: the controller's certificate for `names`, a
    /// client certificate per cluster (`""`: the default cluster).
    pub fn issue_certs(&self, names: &[&str], clusters: &[&str]) {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["certs", "--out"]).arg(&self.0);
        for n in names {
            cmd.args(["--controller-name", n]);
        }
        for c in clusters {
            match *c {
                "" => cmd.arg("--default-cluster"),
                c => cmd.args(["--cluster", c]),
            };
        }
        succeed(&mut cmd, "interlock certs");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
