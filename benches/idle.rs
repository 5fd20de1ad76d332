//! Memory per idle connection (issue 16): the release binary as a child process (one
//! worker, like the load harness pins it), a trivial backend in this process, then, each
//! kept open while the next kind is measured:
//! - N idle plain keep-alive connections (`GET /` answered on each, then idle);
//! - M idle upgrade tunnels (an HTTP/1.1 `Upgrade: websocket` through the proxy to the
//!   backend, which answers 101 and then waits);
//! - T idle TLS connections (handshake, `GET /` over TLS 1.3, then idle).
//!
//! The figure for each kind is the growth of the child's RSS (`VmRSS` of /proc/PID/status)
//! over the connections opened, 1 s after the last one was answered. The upstream
//! connections the proxy pools (at most the batch size, 200) are counted in the plain figure.
//!
//! Not a test and not run in CI: `cargo bench --bench idle`. `IDLE_CONNS`, `IDLE_TUNNELS`,
//! `IDLE_TLS` (10,000, 1,000 and 1,000 by default; 0 skips a kind), `IDLE_BIN` (another
//! binary, e.g. a build of an earlier commit). This process holds about N + 2M + T file
//! descriptors and the child N + 2M + T too: the soft limit of open files is raised to the
//! hard one, and the bench stops at once if that is not enough (`ulimit -Hn`). Every
//! connection is to 127.0.0.1.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use interlock_testkit::node::{rss_kib, Node, Scratch};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections opened at once (as the harness's `idle_conns.py` does).
const BATCH: usize = 200;
/// TLS connections opened at once: the one worker spends ~1 ms on each handshake, and a
/// listener backlog (128) overflowing makes the kernel drop SYNs (retried after 1, 3, 7 s).
const TLS_BATCH: usize = 50;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

/// Raises this process's soft limit of open files to its hard limit (the child inherits
/// it); returns the limit now in force.
fn raise_fd_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024);
    // No libc binding in the tree: `prlimit` (util-linux) on our own PID.
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Reads until `buf` holds a whole head (and the Content-Length body after it); returns
/// the head's length, or `None` at the end of the stream.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(end + 4 + len);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The backend: `hello` to every request, 101 to an upgrade (then holds the tunnel, echoing).
async fn backend(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(len) = read_message(&mut s, &mut buf).await {
                let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
                buf.drain(..len);
                if head.contains("\r\nupgrade:") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
                        )
                        .await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One request on `s`, its answer read whole; the status code.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &[u8]) -> Option<u16> {
    s.write_all(req).await.ok()?;
    // A TLS stream may keep what was written in its buffer until flushed.
    s.flush().await.ok()?;
    let mut buf = Vec::new();
    let len = read_message(s, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..len]);
    head.split_whitespace().nth(1)?.parse().ok()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: idle.example\r\n\r\n";
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nhost: idle.example\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Opens `n` connections with `open`, `BATCH` at a time; each must be answered `status`
/// within 10 s, else it counts as failed.
async fn open_all<T, F, Fut>(n: usize, batch: usize, status: u16, open: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<(T, u16)>>,
{
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    while held.len() + failed < n {
        let batch = batch.min(n - held.len() - failed);
        let opened = futures_util::future::join_all((0..batch).map(|_| async {
            tokio::time::timeout(Duration::from_secs(10), open())
                .await
                .ok()
                .flatten()
        }))
        .await;
        for o in opened {
            match o {
                Some((s, got)) if got == status => held.push(s),
                _ => failed += 1,
            }
        }
    }
    if failed > 0 {
        println!("  ({failed} of {n} failed)");
    }
    held
}

/// RSS of `pid` in KiB once it has settled (1 s after the last connection).
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss_kib(pid).unwrap_or(0)
}

fn report(what: &str, n: usize, before: u64, after: u64) {
    if n == 0 {
        return;
    }
    let per = (after as f64 - before as f64) / n as f64;
    println!(
        "{what:<34} {n:>6} | RSS {:>7} -> {:>7} KiB | {per:>6.2} KiB each",
        before, after
    );
}

async fn run(conns: usize, tunnels: usize, tls_conns: usize) {
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = backend_listener.local_addr().unwrap().port();
    tokio::spawn(backend(backend_listener));

    let s = Scratch::new("idle");
    std::fs::write(
        s.path("services.toml"),
        format!(
            "[[service]]\nname = \"idle\"\nendpoints = [\"127.0.0.1:{backend_port}\"]\n\
             [service.labels]\n\"com.docker.lb.default_backend\" = \"true\"\n\
             \"com.docker.lb.port\" = \"{backend_port}\"\n"
        ),
    )
    .unwrap();
    let pem = interlock_testkit::tls::issue(&["idle.example"], 4_000_000_000);
    std::fs::write(s.path("cert.pem"), &pem.cert).unwrap();
    std::fs::write(s.path("key.pem"), &pem.key).unwrap();
    let port = interlock_testkit::free_port();
    let tls_port = interlock_testkit::free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], interlock_testkit::free_port()));
    let bin = std::env::var("IDLE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| interlock_testkit::node::bin().to_path_buf());
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--config",
        &s.path("services.toml"),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--tls-cert",
        &s.path("cert.pem"),
        "--tls-key",
        &s.path("key.pem"),
        "--threads",
        "1",
        "--idle-timeout",
        "600",
    ]);
    let node = Node::spawn_command("idle", cmd, admin).ready().await;
    let pid = node.pid();
    println!("{} (pid {pid}), one worker", bin.display());

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Warm-up: the table, the pool and the allocator's first pages.
    for _ in 0..3 {
        open_all(BATCH, BATCH, 200, || async {
            let mut c = TcpStream::connect(addr).await.ok()?;
            let status = request(&mut c, GET).await?;
            Some(((), status))
        })
        .await;
    }
    let start = settled_rss(pid).await;
    println!(
        "{:<34} {:>6} | RSS {start:>7} KiB",
        "started, warmed up", ""
    );

    let plain = open_all(conns, BATCH, 200, || async {
        let mut c = TcpStream::connect(addr).await.ok()?;
        let status = request(&mut c, GET).await?;
        Some((c, status))
    })
    .await;
    let after_plain = settled_rss(pid).await;
    report(
        "idle plain keep-alive connections",
        plain.len(),
        start,
        after_plain,
    );

    let held_tunnels = open_all(tunnels, BATCH, 101, || async {
        let mut c = TcpStream::connect(addr).await.ok()?;
        let status = request(&mut c, UPGRADE).await?;
        Some((c, status))
    })
    .await;
    let after_tunnels = settled_rss(pid).await;
    report(
        "idle upgrade tunnels",
        held_tunnels.len(),
        after_plain,
        after_tunnels,
    );

    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let held_tls = open_all(tls_conns, TLS_BATCH, 200, || async {
        let mut c = interlock_testkit::tls::try_connect_to(tls_addr, "idle.example")
            .await
            .ok()?;
        let status = request(&mut c, GET).await?;
        Some((c, status))
    })
    .await;
    let after_tls = settled_rss(pid).await;
    report(
        "idle TLS connections",
        held_tls.len(),
        after_tunnels,
        after_tls,
    );
    drop((plain, held_tunnels, held_tls));
    drop(node);
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) is a
    // build check only.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let conns = count("IDLE_CONNS", 10_000);
    let tunnels = count("IDLE_TUNNELS", 1_000);
    let tls_conns = count("IDLE_TLS", 1_000);
    let need = (conns + 2 * tunnels + tls_conns + 1_000) as u64;
    let limit = raise_fd_limit();
    if limit < need {
        eprintln!(
            "open files limit {limit} < {need} needed: raise it (ulimit -n {need}) or lower IDLE_CONNS"
        );
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(conns, tunnels, tls_conns));
}
