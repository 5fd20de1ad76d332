//! Fan-out of one controller to many proxies (issue 15): a controller (the release binary,
//! file provider) holding one cluster of 10,000 services, and N proxies' long polls (mutual
//! TLS, each with the cluster's client certificate, as `interlock proxy` polls) held by this
//! process. After every client holds the snapshot, one label changes in the services file;
//! the figures are the time from that write to each client holding the new version (p50,
//! p99, max), the controller's CPU time and RSS, and the bytes the clients received
//! (gzip-compressed, as proxies accept them).
//!
//! Not a test and not run in CI: `cargo bench --bench fanout` (N = 100 and 1,000; set
//! `FANOUT=100,1000,2000` to choose). Every connection is to 127.0.0.1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use interlock::tls::control::{client_config, ControlTlsFiles};
use interlock_testkit::node::{Node, Scratch};
use rustls::pki_types::ServerName;

const SERVICES: usize = 10_000;

fn services_file(changed: bool) -> String {
    let mut out = String::with_capacity(SERVICES * 200);
    for i in 0..SERVICES {
        let port = if changed && i == 0 { 9002 } else { 9001 };
        out.push_str(&format!(
            "[[service]]\nname = \"svc-{i}\"\nendpoints = [\"10.0.{}.{}:{port}\"]\n[service.labels]\n\
             \"com.docker.lb.hosts\" = \"svc-{i}.example.com\"\n\"com.docker.lb.service_cluster\" = \"prod\"\n\n",
            i / 250,
            i % 250 + 1
        ));
    }
    out
}

/// CPU seconds (user + system) and RSS (KiB) of process `pid`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the state.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let rss = interlock_testkit::node::rss_kib(pid).unwrap_or(0);
    (cpu, rss)
}

struct Client {
    /// When it got the changed snapshot (since the file write), once it has.
    got_change: Arc<AtomicU64>,
}

/// One proxy's long poll loop: holds the latest tag; records when the tag after `first`
/// arrives.
async fn poll_loop(
    tls: tokio_rustls::TlsConnector,
    api: u16,
    bytes: Arc<AtomicU64>,
    first_tag: Arc<tokio::sync::OnceCell<String>>,
    changed_at: Arc<tokio::sync::OnceCell<Instant>>,
    got_change: Arc<AtomicU64>,
    ready: Arc<AtomicU64>,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api))
        .await
        .unwrap();
    let stream = tls
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tag: Option<String> = None;
    loop {
        // As `interlock proxy` asks (gzip accepted: the bytes counted are compressed).
        let mut req = http::Request::get("/v1/snapshot?cluster=prod&wait=60")
            .header(http::header::HOST, "127.0.0.1")
            .header(http::header::ACCEPT_ENCODING, "gzip");
        if let Some(t) = &tag {
            req = req.header(http::header::IF_NONE_MATCH, t.as_str());
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let new_tag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if tag.is_none() {
            let _ = first_tag.set(new_tag.clone().unwrap_or_default());
            ready.fetch_add(1, Ordering::Relaxed);
        } else if new_tag != tag {
            if let Some(at) = changed_at.get() {
                got_change.store(at.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
                return;
            }
        }
        tag = new_tag;
    }
}

async fn run(n: usize) {
    let s = Scratch::new("fanout");
    s.issue_certs(&["127.0.0.1"], &["prod"]);
    s.write_services(&services_file(false));
    let api = interlock_testkit::free_port();
    let ctl = Node::start("controller", &s.controller_args(api)).await;
    let pid = ctl.pid();
    let tls = client_config(&ControlTlsFiles {
        ca: s.path("ca.pem").into(),
        cert: s.path("proxy-prod.pem").into(),
        key: s.path("proxy-prod.key").into(),
    })
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let bytes = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let first_tag = Arc::new(tokio::sync::OnceCell::new());
    let changed_at = Arc::new(tokio::sync::OnceCell::new());
    let (cpu0, _) = usage(pid);
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..n {
        let got = Arc::new(AtomicU64::new(0));
        tokio::spawn(poll_loop(
            connector.clone(),
            api,
            bytes.clone(),
            first_tag.clone(),
            changed_at.clone(),
            got.clone(),
            ready.clone(),
        ));
        clients.push(Client { got_change: got });
    }
    while ready.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let initial = start.elapsed();
    let (cpu1, rss_held) = usage(pid);
    let initial_bytes = bytes.swap(0, Ordering::Relaxed);

    // One label changes; every client should get the new version.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = changed_at.set(Instant::now());
    s.write_services(&services_file(true));
    let deadline = Instant::now() + Duration::from_secs(120);
    while clients
        .iter()
        .any(|c| c.got_change.load(Ordering::Relaxed) == 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (cpu2, rss_after) = usage(pid);
    let mut times: Vec<f64> = clients
        .iter()
        .map(|c| c.got_change.load(Ordering::Relaxed))
        .filter(|us| *us > 0)
        .map(|us| us as f64 / 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let change_bytes = bytes.load(Ordering::Relaxed);
    println!(
        "{n:>5} proxies | initial fetch: {:.2} s, {:.1} MiB, controller CPU {:.2} s | change: {}/{n} got it, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {:.1} MiB sent, controller CPU {:.2} s | RSS {} MiB holding, {} MiB after",
        initial.as_secs_f64(),
        initial_bytes as f64 / 1048576.0,
        cpu1 - cpu0,
        times.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        change_bytes as f64 / 1048576.0,
        cpu2 - cpu1,
        rss_held / 1024,
        rss_after / 1024,
    );
    drop(ctl);
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) is a
    // build check only.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("FANOUT")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("one controller, one cluster of {SERVICES} services, N proxies' long polls");
    for n in sizes {
        rt.block_on(run(n));
    }
}
