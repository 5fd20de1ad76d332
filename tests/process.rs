//! The real `interlock` binary as an operator runs it: a services file on disk, real
//! backends on 127.0.0.1, signals, the admin listener and the log on stderr.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::node::{eventually, http, metric_value, parse_response, Node};
use common::{free_port, TestBackend};
use http::Response;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A services file in the temp directory with a unique name, removed on drop.
struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "interlock-process-test-{}-{}.toml",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let file = ConfigFile { path };
        file.write(text);
        file
    }

    /// Replaces the content atomically (write a sibling, rename over), so the watcher never
    /// reads a half-written file.
    fn write(&self, text: &str) {
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One `[[service]]` entry routing `host` to `addr`, with extra label lines.
fn service_toml(name: &str, host: &str, addr: SocketAddr, extra_labels: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"{host}\"\n{extra_labels}\n"
    )
}

/// `interlock run` with its proxy listener: a [`Node`] plus the address traffic goes to.
struct Interlock {
    node: Node,
    proxy: SocketAddr,
}

impl std::ops::Deref for Interlock {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for Interlock {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl Interlock {
    /// Starts `interlock run` on `config` with fresh loopback ports and waits until its
    /// admin listener answers (it binds after the proxy listener). Retries with other ports
    /// if one was taken between picking and binding.
    async fn start(config: &Path, extra: &[&str]) -> Interlock {
        for _ in 0..5 {
            let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut args = vec![
                "run".to_string(),
                "--config".into(),
                config.display().to_string(),
                "--listen".into(),
                proxy.to_string(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            match Node::spawn("interlock", &args, admin, &[])
                .try_ready()
                .await
            {
                Ok(node) => return Interlock { node, proxy },
                Err(mut node) => {
                    let log = node.log().join("\n");
                    assert!(
                        log.contains("binding the"),
                        "interlock did not start:\n{log}"
                    );
                    // A port was taken in the meantime: try others.
                    node.kill();
                }
            }
        }
        panic!("could not start interlock on free ports");
    }

    /// GET through the proxy with the given Host.
    async fn get(&self, host: &str, path: &str) -> (u16, String) {
        http(self.proxy, host, path).await
    }

    /// Waits for the process to exit, at most `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A new host in the file routes within ~2 s; an invalid file keeps the last good routes
/// and is counted as a reload failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_a_host_and_survives_an_invalid_file() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let first = service_toml("a", "a.test", a.addr, "");
    let file = ConfigFile::new(&first);
    let p = Interlock::start(&file.path, &["--watch-interval-ms", "100"]).await;

    assert_eq!(p.get("a.test", "/").await, (200, "a".to_string()));
    assert_eq!(
        p.get("b.test", "/").await.0,
        503,
        "b.test is not routed yet"
    );

    file.write(&format!(
        "{first}{}",
        service_toml("b", "b.test", b.addr, "")
    ));
    let took = eventually(Duration::from_secs(2), || async {
        p.get("b.test", "/").await == (200, "b".to_string())
    })
    .await;
    assert!(
        took.is_some(),
        "b.test did not route within 2 s of the change"
    );
    assert_eq!(p.get("a.test", "/").await, (200, "a".to_string()));
    assert_eq!(
        p.metric("interlock_reload_failures_total", &[]).await,
        Some(0.0)
    );

    file.write("[[service]\nname = \"broken");
    let counted = eventually(Duration::from_secs(3), || async {
        p.metric("interlock_reload_failures_total", &[])
            .await
            .is_some_and(|v| v >= 1.0)
    })
    .await;
    assert!(counted.is_some(), "the invalid file was not counted");
    assert_eq!(p.get("a.test", "/").await, (200, "a".to_string()));
    assert_eq!(p.get("b.test", "/").await, (200, "b".to_string()));
    assert!(
        p.log().iter().any(|l| l.contains("is not valid")),
        "the invalid file was not logged: {:?}",
        p.log()
    );
}

fn check(config: &Path) -> (i32, String, String) {
    let out = Command::new(common::node::bin())
        .arg("check")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("running interlock check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` lists the route `url` with the endpoint `addr`.
fn assert_route(out: &str, url: &str, addr: SocketAddr) {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{url} ->")))
        .unwrap_or_else(|| panic!("route {url} not listed:\n{out}"));
    assert!(line.contains(&addr.to_string()), "{line}");
}

/// `interlock check` prints each good service's routes and each bad service's exact label
/// error; it exits 1 when any service has errors, 0 when all are clean.
#[test]
fn check_reports_routes_and_label_errors_with_exit_codes() {
    let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let good = format!(
        "{}{}",
        service_toml("web", "web.test", addr, ""),
        service_toml(
            "api",
            "api.test",
            addr,
            "\"com.docker.lb.context_root\" = \"/api\""
        )
    );
    let file = ConfigFile::new(&good);
    let (code, out, err) = check(&file.path);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("ok    web"), "{out}");
    assert_route(&out, "http://web.test/", addr);
    assert_route(&out, "http://api.test/api", addr);
    assert!(out.contains("0 with errors"), "{out}");

    file.write(&format!(
        "{good}{}",
        service_toml(
            "bad",
            "bad.test",
            addr,
            "\"com.docker.lb.port\" = \"99999\""
        )
    ));
    let (code, out, err) = check(&file.path);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert_route(&out, "http://web.test/", addr);
    let error_line = out
        .lines()
        .skip_while(|l| !l.starts_with("ERROR bad"))
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| panic!("no error listed under the bad service:\n{out}"));
    for want in [
        "com.docker.lb.port",
        "99999",
        "expected a port number from 1 to 65535",
    ] {
        assert!(error_line.contains(want), "{want:?} missing: {error_line}");
    }
    assert!(out.contains("1 with errors"), "{out}");

    // A file that is not TOML at all is a different failure: exit 2, reason on stderr.
    file.write("this is not toml");
    let (code, out, err) = check(&file.path);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("is not valid"), "{err}");
}

/// A list-valued label with several bad entries: `check` names every one of them, each with
/// what was expected, so one run finds them all.
#[test]
fn check_names_every_bad_entry_of_a_list_label() {
    let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let file = ConfigFile::new(&service_toml(
        "multi",
        "web.test, bad host ,under_score-.test,api.test",
        addr,
        "\"com.docker.lb.websocket_endpoints\" = \"/ws,socket,chat\"",
    ));
    let (code, out, err) = check(&file.path);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let errors: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("ERROR multi"))
        .filter(|l| l.contains("error:"))
        .collect();
    for (label, value, expected) in [
        (
            "com.docker.lb.hosts",
            "\"bad host\"",
            "expected host names such as",
        ),
        (
            "com.docker.lb.hosts",
            "\"under_score-.test\"",
            "expected host names such as",
        ),
        (
            "com.docker.lb.websocket_endpoints",
            "\"socket\"",
            "expected an absolute path",
        ),
        (
            "com.docker.lb.websocket_endpoints",
            "\"chat\"",
            "expected an absolute path",
        ),
    ] {
        assert!(
            errors
                .iter()
                .any(|l| l.contains(&format!("{label}={value}")) && l.contains(expected)),
            "no error line for {label}={value}:\n{out}"
        );
    }
    assert_eq!(errors.len(), 4, "{out}");
}

/// Interlock (drain timeout 10 s) routing `slow.test` to a backend that answers `slow`
/// 1.5 s after each request; the backend and the services file live as long as the test
/// holds them.
async fn slow_service() -> (TestBackend, ConfigFile, Interlock) {
    let backend = TestBackend::with(|req| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        common::echo("slow", &req)
    })
    .await;
    let file = ConfigFile::new(&service_toml("slow", "slow.test", backend.addr, ""));
    let p = Interlock::start(&file.path, &["--drain-timeout", "10"]).await;
    (backend, file, p)
}

/// SIGTERM while a slow request is in flight: the request completes, then the process
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (slow, _file, mut p) = slow_service().await;

    let proxy = p.proxy;
    let in_flight = tokio::spawn(async move { http(proxy, "slow.test", "/work").await });
    let reached = eventually(Duration::from_secs(5), || async {
        slow.requests.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(reached.is_some(), "the request never reached the backend");

    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(kill.success());

    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slow"));
    let exit = p
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("interlock did not exit after SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "draining waited for the drain timeout: {:?}",
        sent.elapsed()
    );
}

/// Reads one HTTP/1.1 answer's head from `s` (until the blank line); "" when the
/// connection closed first.
async fn answer_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// SIGTERM reaches a proxy whose listener holds connections it has not accepted yet (the
/// process was stopped while clients connected and sent their requests), and one more that
/// was accepted but has not sent all of its request (the listener hands a connection over
/// with its first bytes): every one of them is answered and then
/// closed cleanly, none reset by the listener's close (the one accepted before the signal
/// is told `Connection: close`); a connection idle between requests closes; a connection
/// made after that is refused; the process exits 0.
/// This is what a proxy replaced in place (a stop-first update on a host port) owes the
/// clients that reached it just before its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_connections_already_made_then_refuses_new_ones() {
    let backend = TestBackend::with(|req| async move { common::echo("made", &req) }).await;
    let file = ConfigFile::new(&service_toml("made", "made.test", backend.addr, ""));
    let mut p = Interlock::start(&file.path, &["--drain-timeout", "10"]).await;
    let request = b"GET / HTTP/1.1\r\nHost: made.test\r\n\r\n";

    // Idle between requests: one answered, kept alive.
    let mut idle = TcpStream::connect(p.proxy).await.unwrap();
    idle.write_all(request).await.unwrap();
    assert!(answer_head(&mut idle).await.starts_with("HTTP/1.1 200"));
    // Accepted (with its first bytes), the rest of its request not sent yet.
    let (first, rest) = request.split_at(16);
    let mut fresh = TcpStream::connect(p.proxy).await.unwrap();
    fresh.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let pid = p.pid().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig}");
    };
    // Stopped: the kernel completes these handshakes, nobody accepts them.
    signal("-STOP");
    let mut queued = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(p.proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        queued.push(s);
    }
    signal("-TERM");
    signal("-CONT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    fresh.write_all(rest).await.unwrap();

    let mut answers = Vec::new();
    for s in queued.iter_mut() {
        answers.push(answer_head(s).await);
    }
    let unanswered = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .count();
    assert_eq!(
        unanswered, 0,
        "connections queued at SIGTERM not answered 200: {answers:?}"
    );
    // At SIGCONT the process sees the pending SIGTERM and the queued connections at the
    // same instant, in no order the kernel promises (the signal may reach another thread
    // than the one that returns from epoll): a connection served before the signal was seen
    // is answered as any connection just before a SIGTERM (kept alive), then closed as idle
    // once it is; the others are answered with `Connection: close`. Either way the client
    // has its answer and then a clean close, never a reset.
    for (i, s) in queued.iter_mut().enumerate() {
        // What is left of the answer's body, then EOF; a reset is an error.
        let end =
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
        assert!(
            matches!(end, Ok(Ok(_))),
            "queued connection {i} is closed, not reset, after its answer: {end:?}"
        );
    }
    let first = answer_head(&mut fresh).await;
    assert!(
        first.starts_with("HTTP/1.1 200")
            && first.to_ascii_lowercase().contains("connection: close"),
        "the connection accepted before SIGTERM, its request sent after: {first:?}"
    );
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle keep-alive connection closes: {closed:?}"
    );
    let later = eventually(Duration::from_secs(5), || async {
        TcpStream::connect(p.proxy).await.is_err()
    })
    .await;
    assert!(later.is_some(), "new connections are refused after SIGTERM");
    let exit = p
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("interlock did not exit after SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}

/// A request whose answer is still on its way from a slow upstream when SIGTERM comes is
/// answered with `Connection: close`, and then the connection closes cleanly: also when the
/// request was already there when the connection was accepted (the process was stopped
/// while the client connected and sent it), so that the connection never waited for its
/// client and had no idle watchdog armed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_upstream_wait_closes_the_connection_after_its_answer() {
    let (_backend, _file, mut p) = slow_service().await;
    let pid = p.pid().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig}");
    };
    signal("-STOP");
    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .await
        .unwrap();
    signal("-CONT");
    // The request is at the backend, which answers 1.5 s after it came.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal("-TERM");
    let head = tokio::time::timeout(Duration::from_secs(5), answer_head(&mut s))
        .await
        .expect("an answer");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("connection: close"),
        "the answer in flight at SIGTERM: {head:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
    assert!(matches!(end, Ok(Ok(_))), "then a clean close: {end:?}");
    let exit = p
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("interlock did not exit after SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}

/// Peak resident memory (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// 1 GiB uploaded through the binary arrives complete, and the proxy's memory stays
/// bounded: the body is streamed, never buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_through_with_bounded_memory() {
    const TOTAL: u64 = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let sink = TestBackend::with(move |req| {
        let counter = counter.clone();
        async move {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                        }
                    }
                    Err(_) => break,
                }
            }
            counter.store(n, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from(n.to_string())))
        }
    })
    .await;
    let file = ConfigFile::new(&service_toml("sink", "sink.test", sink.addr, ""));
    let p = Interlock::start(&file.path, &[]).await;
    let before = peak_rss(p.pid());

    let mut s = TcpStream::connect(p.proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: sink.test\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {TOTAL}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0x5a_u8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < TOTAL {
        s.write_all(&chunk).await.expect("proxy stopped reading");
        sent += CHUNK as u64;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("no response after the upload")
        .unwrap();
    let (status, body) = parse_response(&out).expect("an HTTP response");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, TOTAL.to_string());
    assert_eq!(received.load(Ordering::SeqCst), TOTAL);

    let peak = peak_rss(p.pid());
    eprintln!(
        "1 GiB through interlock in {:?}; peak RSS {} MiB (before the upload: {} MiB)",
        started.elapsed(),
        peak >> 20,
        before >> 20
    );
    assert!(
        peak < 100 << 20,
        "peak RSS {} MiB exceeds 100 MiB",
        peak >> 20
    );
}

/// The admin listener: /healthz, /routes as JSON, and /metrics with per-service request
/// counts, the table generation and open connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_routes_and_metrics() {
    let web = TestBackend::named("web").await;
    let file = ConfigFile::new(&service_toml(
        "web",
        "web.test",
        web.addr,
        "\"com.docker.lb.context_root\" = \"/app\"",
    ));
    let p = Interlock::start(&file.path, &[]).await;

    let (status, body) = p.admin_get("/healthz").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("ok generation="), "{body}");

    let (status, body) = p.admin_get("/routes").await;
    assert_eq!(status, 200);
    let routes: serde_json::Value = serde_json::from_str(&body).expect("/routes is JSON");
    let list = routes["routes"].as_array().expect("a routes array");
    let route = list
        .iter()
        .find(|r| r["host"] == "web.test")
        .unwrap_or_else(|| panic!("web.test missing from /routes: {body}"));
    assert_eq!(route["context_root"], "/app");
    assert_eq!(route["services"][0], "web");
    assert_eq!(route["endpoints"][0]["addr"], web.addr.to_string());

    assert_eq!(p.get("web.test", "/app/x").await, (200, "web".to_string()));
    let metrics = p.admin_get("/metrics").await.1;
    let served = metric_value(
        &metrics,
        "interlock_requests_total",
        &["service=\"web\"", "class=\"2xx\""],
    );
    assert_eq!(served, Some(1.0), "{metrics}");
    let generation = metric_value(&metrics, "interlock_table_generation", &[]);
    assert!(generation.is_some_and(|g| g >= 1.0), "{metrics}");
    assert!(
        metric_value(&metrics, "interlock_open_connections", &[]).is_some(),
        "{metrics}"
    );
    assert_eq!(p.admin_get("/nope").await.0, 404);
}

/// An HTTP/2 request with prior knowledge (curl, cleartext): the status.
fn curl_h2c(proxy: SocketAddr, host: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--http2-prior-knowledge", "--max-time", "5", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{proxy}{path}"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--access-log --log-format json` writes one JSON line per request on stderr, with the
/// status and the path: for requests of the HTTP/1.1 fast path and for HTTP/2 requests
/// (served through the service), forwarded or answered by the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_in_json_names_status_and_path() {
    let web = TestBackend::named("web").await;
    let file = ConfigFile::new(&service_toml("web", "web.test", web.addr, ""));
    let p = Interlock::start(&file.path, &["--access-log", "--log-format", "json"]).await;

    assert_eq!(p.get("web.test", "/logged/path?q=1").await.0, 200);
    assert_eq!(p.get("missing.test", "/nowhere").await.0, 503);
    let proxy = p.proxy;
    let h2 = tokio::task::spawn_blocking(move || {
        (
            curl_h2c(proxy, "web.test", "/h2/logged?q=1"),
            curl_h2c(proxy, "missing.test", "/h2/nowhere"),
        )
    })
    .await
    .unwrap();
    assert_eq!(h2, ("200 2".to_string(), "503 2".to_string()));

    let find = |path: &str| {
        p.log().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["path"] == path).then_some(v)
        })
    };
    let paths = ["/logged/path", "/nowhere", "/h2/logged", "/h2/nowhere"];
    let mut found = Vec::new();
    let _ = eventually(Duration::from_secs(3), || {
        found = paths.iter().filter_map(|path| find(path)).collect();
        std::future::ready(found.len() == paths.len())
    })
    .await;
    let [ok, miss, h2_ok, h2_miss] = <[_; 4]>::try_from(found)
        .unwrap_or_else(|_| panic!("missing JSON access lines: {:?}", p.log()));
    for ok in [&ok, &h2_ok] {
        assert_eq!(ok["status"], 200, "{ok}");
        assert_eq!(ok["method"], "GET", "{ok}");
        assert_eq!(ok["service"], "web", "{ok}");
    }
    for miss in [&miss, &h2_miss] {
        assert_eq!(miss["status"], 503, "{miss}");
    }
    // Every line on stderr is JSON, the start-up messages included.
    for line in p.log() {
        assert!(
            serde_json::from_str::<serde_json::Value>(&line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_the_pool_idle_timeout() {
    let backend = TestBackend::named("b").await;
    let config = ConfigFile::new(&service_toml("b", "b.test", backend.addr, ""));
    let p = Interlock::start(&config.path, &["--pool-idle-timeout", "0.3"]).await;
    for _ in 0..3 {
        assert_eq!(p.get("b.test", "/").await.0, 200);
    }
    let opened = backend.connections.load(Ordering::SeqCst);
    assert!(opened >= 1);
    // The backend keeps connections open forever; interlock must close its idle one.
    let closed = eventually(Duration::from_secs(5), || async {
        backend.closed.load(Ordering::SeqCst) >= opened
    })
    .await;
    assert!(
        closed.is_some(),
        "{opened} upstream connection(s) opened, {} closed",
        backend.closed.load(Ordering::SeqCst)
    );
    // And the next request simply opens a new one.
    assert_eq!(p.get("b.test", "/").await.0, 200);
}

/// The all-in-one role with `--state-file`: a service whose label broke keeps its last good
/// routes after a restart; without the file it is not routed after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_a_broken_services_last_good_routes_across_a_restart_with_its_state_file() {
    let web = TestBackend::named("web").await;
    let file = ConfigFile::new(&service_toml("web", "web.test", web.addr, ""));
    let state = file.path.with_extension("state.json");
    let with_state = [
        "--watch-interval-ms",
        "50",
        "--state-file",
        state.to_str().unwrap(),
    ];
    let mut first = Interlock::start(&file.path, &with_state).await;
    assert_eq!(first.get("web.test", "/").await, (200, "web".to_string()));
    file.write(&service_toml(
        "web",
        "web.test",
        web.addr,
        "\"com.docker.lb.context_root\" = \"no-slash\"",
    ));
    eventually(Duration::from_secs(5), || async {
        first.logged(&["web", "com.docker.lb.context_root"])
    })
    .await
    .expect("the broken label is reported");
    assert_eq!(first.get("web.test", "/").await, (200, "web".to_string()));
    first.kill();

    let second = Interlock::start(&file.path, &with_state).await;
    assert_eq!(second.get("web.test", "/").await, (200, "web".to_string()));
    assert!(
        second.logged(&["web", "kept its last good routes"]),
        "{:?}",
        second.log()
    );
    drop(second);

    let blind = Interlock::start(&file.path, &["--watch-interval-ms", "50"]).await;
    assert_eq!(blind.get("web.test", "/").await.0, 503);
    let _ = std::fs::remove_file(&state);
}
