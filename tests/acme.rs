//! Automatic HTTPS (issue 14) against a real ACME server: Debian's `pebble` and its DNS
//! server `pebble-challtestsrv` (`testkit/src/pebble.rs`), the interlock binary as child
//! processes, real TLS, and clients that verify against pebble's issuing root (`curl
//! --cacert`, or a rustls client with that root alone).
//!
//! - HTTP-01 and TLS-ALPN-01 issuance by the all-in-one role, the state directory's files
//!   0600, and a restart with the same `--acme-state` serving the stored certificate with no
//!   new order;
//! - a renewal under load (certificates living 30 s): the served serial changes, no request
//!   fails;
//! - the CA down at renewal time: the old certificate keeps serving, failed orders counted,
//!   `last_error` in `/routes`, the host and reason logged;
//! - a controller doing ACME for two clusters, each proxy on its own loopback address: each
//!   serves its own cluster's certificate, and no proxy's `--state-file` holds the other
//!   cluster's key or certificate;
//! - 20 hosts labelled at once: time from the services file written to a valid certificate
//!   served by every proxy (p50 and max printed, `--nocapture`).
//!
//! Without `pebble` installed these tests fail (the harness says which package to install);
//! the test command (`scripts/test.sh`) installs it when missing.

use interlock_testkit as common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::node::{eventually, metric_value, Node, Scratch};
use common::pebble::{Pebble, PebbleOptions};
use common::pem::{holds, long_strings, pem_blocks, pem_texts};
use common::TestBackend;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EMAIL: &str = "ops@example.com";

// ---------------------------------------------------------------------------------------
// Services, processes and ports.
// ---------------------------------------------------------------------------------------

/// One `[[service]]` of the services file asking ACME for `hosts` (comma-separated).
fn acme_service(name: &str, hosts: &str, backend: SocketAddr, cluster: Option<&str>) -> String {
    let cluster = cluster
        .map(|c| format!("\"com.docker.lb.service_cluster\" = \"{c}\"\n"))
        .unwrap_or_default();
    format!(
        "[[service]]\nname = \"{name}\"\nendpoints = [\"{backend}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"{hosts}\"\n\"com.docker.lb.ssl_acme\" = \"true\"\n{cluster}\n"
    )
}

/// A port free for TCP on every address of `ips` (a moment ago).
fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let port = common::free_port();
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on {ips:?}");
}

/// The ACME flags of a role, for `pebble` and the state directory `state`.
fn acme_args(pebble: &Pebble, state: &Path, challenge: &str) -> Vec<String> {
    [
        "--acme-directory",
        &pebble.directory_url(),
        "--acme-email",
        EMAIL,
        "--acme-ca-root",
        pebble.listener_ca().to_str().unwrap(),
        "--acme-state",
        state.to_str().unwrap(),
        "--acme-agree-tos",
        "--acme-challenge",
        challenge,
    ]
    .map(String::from)
    .to_vec()
}

/// An all-in-one interlock on 127.0.0.1: plain `http`, TLS `https`, this scratch's
/// `services.toml`, ACME from `pebble` with state in `state`.
async fn all_in_one(
    s: &Scratch,
    pebble: &Pebble,
    state: &Path,
    challenge: &str,
    http: u16,
    https: u16,
) -> Node {
    let mut args: Vec<String> = [
        "run",
        "--config",
        &s.path("services.toml"),
        "--watch-interval-ms",
        "50",
        "--listen",
        &format!("127.0.0.1:{http}"),
        "--tls-listen",
        &format!("127.0.0.1:{https}"),
    ]
    .map(String::from)
    .to_vec();
    args.extend(acme_args(pebble, state, challenge));
    Node::start("interlock", &args).await
}

/// A proxy of `cluster` on `ip` (plain `http`, TLS `https`), saving to `state_file`.
async fn proxy(
    s: &Scratch,
    api: u16,
    cluster: &str,
    ip: Ipv4Addr,
    http: u16,
    https: u16,
    state_file: &str,
) -> Node {
    let mut args = s.proxy_args(api, cluster, &format!("proxy-{cluster}"));
    args.extend(
        [
            "--listen",
            &format!("{ip}:{http}"),
            "--tls-listen",
            &format!("{ip}:{https}"),
            "--state-file",
            state_file,
        ]
        .map(String::from),
    );
    Node::start(&format!("proxy {cluster} {ip}"), &args).await
}

/// The sum of every series of the counter family `name` (0 when it has none yet).
async fn family_sum(node: &Node, name: &str) -> f64 {
    let (status, text) = node.admin_get("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn orders(node: &Node, kind: &str, result: &str) -> f64 {
    let (_, text) = node.admin_get("/metrics").await;
    metric_value(
        &text,
        "interlock_acme_orders_total",
        &[&format!("kind=\"{kind}\""), &format!("result=\"{result}\"")],
    )
    .unwrap_or(0.0)
}

/// `/routes`' `acme` entry for the host set `hosts` (`null` when there is none).
async fn acme_status(node: &Node, hosts: &str) -> serde_json::Value {
    let (status, body) = node.admin_get("/routes").await;
    assert_eq!(status, 200, "{body}");
    let routes: serde_json::Value = serde_json::from_str(&body).expect("/routes is JSON");
    routes["acme"][hosts].clone()
}

// ---------------------------------------------------------------------------------------
// Clients: curl and rustls, trusting pebble's issuing root only.
// ---------------------------------------------------------------------------------------

/// `curl --cacert ROOT --resolve host:port:ip https://host:port/`: `Ok(body)` on a 200,
/// `Err(what went wrong)` otherwise.
async fn curl_https(root: &Path, host: &str, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    let args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "5".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "--cacert".into(),
        root.display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:{ip}"),
        format!("https://{host}:{port}/"),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    if out.status.success() && code == "200" {
        Ok(body.to_string())
    } else {
        Err(format!(
            "curl exit {:?}, status {code}: {}{body}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A TLS client trusting only the PEM roots in `root` (`None`: trusting anything), with no
/// session resumption.
fn tls_client(root: Option<&Path>) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match root {
        Some(root) => {
            let mut store = rustls::RootCertStore::empty();
            let pem = std::fs::read(root).unwrap();
            for der in pem_blocks(&String::from_utf8_lossy(&pem), "CERTIFICATE") {
                store.add(CertificateDer::from(der)).unwrap();
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(common::tls::AnyCert::new())
            .with_no_client_auth(),
    };
    // Every handshake a full one: a resumed session carries the certificate of the session
    // it resumes, not the one served now, and is not verified again.
    let mut config = config;
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A new connection to `ip:port` with SNI `host`, one `GET /` (`Connection: close`):
/// the served leaf certificate (DER) and the response's status and body.
async fn tls_get(
    tls: &tokio_rustls::TlsConnector,
    ip: Ipv4Addr,
    port: u16,
    host: &str,
) -> Result<(Vec<u8>, u16, String), String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(host.to_string()).unwrap();
        let mut s = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let leaf = s.get_ref().1.peer_certificates().ok_or("no certificate")?[0].to_vec();
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        // A peer closing without close_notify ends the read with an error: what came counts.
        let _ = s.read_to_end(&mut out).await;
        let (status, body) = common::node::parse_response(&out)
            .ok_or_else(|| format!("no whole response: {:?}", String::from_utf8_lossy(&out)))?;
        Ok((leaf, status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

/// Only the handshake: the served leaf (DER), or why it failed.
async fn served_leaf(
    tls: &tokio_rustls::TlsConnector,
    ip: Ipv4Addr,
    port: u16,
    host: &str,
) -> Result<Vec<u8>, String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(host.to_string()).unwrap();
        let s = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(s.get_ref().1.peer_certificates().ok_or("no certificate")?[0].to_vec())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("no handshake within 5 s".into()))
}

/// Waits (`limit`) until `ip:port` serves `host` a certificate that verifies against `root`;
/// that leaf, or a panic with the last error.
async fn until_valid(root: &Path, ip: Ipv4Addr, port: u16, host: &str, limit: u64) -> Vec<u8> {
    let tls = tls_client(Some(root));
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(limit) {
        match served_leaf(&tls, ip, port, host).await {
            Ok(leaf) => return leaf,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{ip}:{port} served no valid certificate for {host} within {limit} s: {last}");
}

// ---------------------------------------------------------------------------------------
// DER and PEM, just enough.
// ---------------------------------------------------------------------------------------

/// A DER element at the start of `b`: (tag, header length, content length).
fn der_header(b: &[u8]) -> (u8, usize, usize) {
    let tag = b[0];
    let first = b[1] as usize;
    if first < 0x80 {
        return (tag, 2, first);
    }
    let n = first & 0x7f;
    let len = b[2..2 + n]
        .iter()
        .fold(0usize, |acc, x| (acc << 8) | *x as usize);
    (tag, 2 + n, len)
}

/// The serial number of a certificate (DER), in hex.
fn serial(cert: &[u8]) -> String {
    let (_, h, _) = der_header(cert); // Certificate
    let tbs = &cert[h..];
    let (_, h, _) = der_header(tbs); // TBSCertificate
    let mut rest = &tbs[h..];
    let (tag, h, len) = der_header(rest);
    if tag == 0xa0 {
        rest = &rest[h + len..]; // [0] version
    }
    let (tag, h, len) = der_header(rest);
    assert_eq!(tag, 0x02, "serialNumber is an INTEGER");
    rest[h..h + len]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.map(Result::unwrap) {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// Asserts every file under the ACME state directory is readable by its owner only.
fn assert_private(state: &Path) {
    let files = files_under(state);
    assert!(!files.is_empty(), "{} holds no file", state.display());
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------

/// The harness itself: the directory answers over the listener certificate, the issuing
/// root is fetched, A records are taken, and a restarted CA has a new root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pebble_harness_serves_a_directory_and_its_root() {
    let mut pebble = Pebble::start(PebbleOptions {
        http_port: common::free_port(),
        tls_port: common::free_port(),
        validity_secs: 60,
        ..Default::default()
    });
    let dir = |p: &Pebble| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
            .arg(p.listener_ca())
            .arg(p.directory_url())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(dir(&pebble).contains("newOrder"), "{}", dir(&pebble));
    let root = std::fs::read_to_string(pebble.fetch_root()).unwrap();
    assert_eq!(pem_blocks(&root, "CERTIFICATE").len(), 1);
    assert!(pebble.intermediate_pem().contains("BEGIN CERTIFICATE"));
    pebble.add_a("a.test", "127.0.0.2");
    pebble.stop();
    assert!(!pebble.running());
    pebble.restart();
    assert!(dir(&pebble).contains("newOrder"));
    let again = std::fs::read_to_string(pebble.fetch_root()).unwrap();
    assert_ne!(root, again, "a restarted pebble has a new root");
}

/// a. HTTP-01 issuance by the all-in-one role, then d. a restart with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http01_issuance_then_a_restart_serves_the_stored_certificate_without_a_new_order() {
    let s = Scratch::new("acme-http01");
    let state = s.0.join("acme");
    let (http, https) = (common::free_port(), common::free_port());
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: 3600,
        ..Default::default()
    });
    let backend = TestBackend::named("a-backend").await;
    s.write_services(&acme_service("a", "a.test", backend.addr, None));
    let mut node = all_in_one(&s, &pebble, &state, "http-01", http, https).await;
    let root = pebble.fetch_root();

    let leaf = until_valid(&root, Ipv4Addr::LOCALHOST, https, "a.test", 60).await;
    let body = curl_https(&root, "a.test", Ipv4Addr::LOCALHOST, https)
        .await
        .unwrap_or_else(|e| panic!("curl through the issued certificate: {e}"));
    assert_eq!(body, "a-backend");
    assert_eq!(orders(&node, "issue", "ok").await, 1.0);
    assert_eq!(orders(&node, "issue", "error").await, 0.0);
    let (_, metrics) = node.admin_get("/metrics").await;
    let expiry = metric_value(
        &metrics,
        "interlock_certificate_expiry_timestamp_seconds",
        &["host=\"a.test\"", "source=\"acme\""],
    )
    .unwrap_or_else(|| panic!("no expiry series for a.test from acme:\n{metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now + 3000.0..now + 3700.0).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    let status = acme_status(&node, "a.test").await;
    assert!(
        status["not_after"].is_string() || status["not_after"].is_number(),
        "{status}"
    );
    assert!(status["last_error"].is_null(), "{status}");
    assert_private(&state);

    // d. The same state directory after a restart: the stored certificate, no order.
    node.kill();
    drop(node);
    let node = all_in_one(&s, &pebble, &state, "http-01", http, https).await;
    let again = until_valid(&root, Ipv4Addr::LOCALHOST, https, "a.test", 20).await;
    assert_eq!(
        serial(&again),
        serial(&leaf),
        "a new certificate after the restart"
    );
    let body = curl_https(&root, "a.test", Ipv4Addr::LOCALHOST, https)
        .await
        .unwrap();
    assert_eq!(body, "a-backend");
    // Give a wrongly started order time to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        family_sum(&node, "interlock_acme_orders_total").await,
        0.0,
        "the restarted process ordered a certificate"
    );
    assert_eq!(
        serial(
            &served_leaf(
                &tls_client(Some(&root)),
                Ipv4Addr::LOCALHOST,
                https,
                "a.test"
            )
            .await
            .unwrap()
        ),
        serial(&leaf)
    );
    assert_private(&state);
}

/// b. TLS-ALPN-01 issuance: the CA validates on interlock's TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_alpn01_issuance() {
    let s = Scratch::new("acme-alpn");
    let state = s.0.join("acme");
    let (http, https) = (common::free_port(), common::free_port());
    // The CA's HTTP-01 port is one where nothing listens: only TLS-ALPN-01 can succeed.
    let pebble = Pebble::start(PebbleOptions {
        http_port: common::free_port(),
        tls_port: https,
        validity_secs: 3600,
        ..Default::default()
    });
    let backend = TestBackend::named("alpn-backend").await;
    s.write_services(&acme_service("a", "a.test", backend.addr, None));
    let node = all_in_one(&s, &pebble, &state, "tls-alpn-01", http, https).await;
    let root = pebble.fetch_root();
    until_valid(&root, Ipv4Addr::LOCALHOST, https, "a.test", 60).await;
    let body = curl_https(&root, "a.test", Ipv4Addr::LOCALHOST, https)
        .await
        .unwrap_or_else(|e| panic!("curl through the issued certificate: {e}"));
    assert_eq!(body, "alpn-backend");
    assert_eq!(orders(&node, "issue", "ok").await, 1.0);
    assert_private(&state);
}

/// c. A renewal under load: certificates live 30 s (renewed at about 20 s); new TLS
/// connections, each verified against pebble's root, never fail while the served
/// certificate changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_under_load_changes_the_serial_with_no_failed_request() {
    let s = Scratch::new("acme-renew");
    let state = s.0.join("acme");
    let (http, https) = (common::free_port(), common::free_port());
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: 30,
        ..Default::default()
    });
    let backend = TestBackend::named("renew-backend").await;
    s.write_services(&acme_service("a", "a.test", backend.addr, None));
    let node = all_in_one(&s, &pebble, &state, "http-01", http, https).await;
    let root = pebble.fetch_root();
    let first = until_valid(&root, Ipv4Addr::LOCALHOST, https, "a.test", 60).await;
    let first = serial(&first);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let serials = Arc::new(Mutex::new(BTreeSet::from([first.clone()])));
    let tls = tls_client(Some(&root));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures, serials, tls) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            serials.clone(),
            tls.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match tls_get(&tls, Ipv4Addr::LOCALHOST, https, "a.test").await {
                    Ok((leaf, 200, body)) if body == "renew-backend" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        serials.lock().unwrap().insert(serial(&leaf));
                    }
                    Ok((_, status, body)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {status}: {body}")),
                    Err(e) => failures.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Until a second serial has been served for a while (45 s at most: renewal is due at
    // about 20 s of a 30 s life).
    let start = Instant::now();
    let renewed = eventually(Duration::from_secs(45), || {
        let n = serials.lock().unwrap().len();
        async move { n >= 2 }
    })
    .await;
    if renewed.is_some() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let serials = serials.lock().unwrap().clone();
    let ok = ok.load(Ordering::SeqCst);
    println!(
        "renewal under load: requests ok={ok} failed={} serials={serials:?} in {:?}",
        failures.len(),
        start.elapsed()
    );
    assert!(
        renewed.is_some(),
        "no renewal within 45 s of a 30 s certificate (serials {serials:?}); renew orders: ok {} error {}",
        orders(&node, "renew", "ok").await,
        orders(&node, "renew", "error").await
    );
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 50, "only {ok} requests");
    assert!(orders(&node, "renew", "ok").await >= 1.0);
}

/// e. The CA down at renewal time: the old certificate keeps serving, failed orders are
/// counted, `/routes` and the log say what failed for which host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_ca_down_the_old_certificate_keeps_serving_and_the_failure_shows() {
    let s = Scratch::new("acme-down");
    let state = s.0.join("acme");
    let (http, https) = (common::free_port(), common::free_port());
    let mut pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: 30,
        ..Default::default()
    });
    let backend = TestBackend::named("down-backend").await;
    s.write_services(&acme_service("a", "a.test", backend.addr, None));
    let node = all_in_one(&s, &pebble, &state, "http-01", http, https).await;
    let root = pebble.fetch_root();
    let leaf = until_valid(&root, Ipv4Addr::LOCALHOST, https, "a.test", 60).await;
    pebble.stop();
    let issued = Instant::now();

    // Renewal is due at about 20 s: wait for its failure (45 s at most).
    let failed = eventually(Duration::from_secs(45), || async {
        orders(&node, "renew", "error").await + orders(&node, "issue", "error").await >= 1.0
    })
    .await;
    assert!(
        failed.is_some(),
        "no failed order counted {:?} after the CA went down",
        issued.elapsed()
    );
    let any = tls_client(None);
    let served = served_leaf(&any, Ipv4Addr::LOCALHOST, https, "a.test")
        .await
        .unwrap();
    assert_eq!(
        serial(&served),
        serial(&leaf),
        "the old certificate is no longer served"
    );
    let (_, status, body) = tls_get(&any, Ipv4Addr::LOCALHOST, https, "a.test")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "down-backend"));
    // The failure is counted when the order ends; /routes shows it once the manager has
    // published its state and the table carries it, a moment later.
    let shown = eventually(Duration::from_secs(10), || async {
        acme_status(&node, "a.test").await["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    let status = acme_status(&node, "a.test").await;
    assert!(shown.is_some(), "no last_error in /routes: {status}");
    assert!(
        status["not_after"].is_string() || status["not_after"].is_number(),
        "{status}"
    );
    assert!(
        node.log()
            .iter()
            .any(|l| l.contains("a.test") && (l.contains("WARN") || l.contains("ERROR"))),
        "no warning naming a.test:\n{}",
        node.log().join("\n")
    );
    // Failures keep being counted as the client retries (the retry comes within 30 s).
    let before = orders(&node, "renew", "error").await;
    let grew = eventually(Duration::from_secs(30), || async {
        orders(&node, "renew", "error").await > before
    })
    .await;
    assert!(grew.is_some(), "renew errors stayed at {before}");
    let served = served_leaf(&any, Ipv4Addr::LOCALHOST, https, "a.test")
        .await
        .unwrap();
    assert_eq!(serial(&served), serial(&leaf));
    // `check` on the same state directory names the service and the CA's reason.
    let out = std::process::Command::new(common::node::bin())
        .args([
            "check",
            "--config",
            &s.path("services.toml"),
            "--acme-state",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("ERROR a"), "{report}");
    assert!(report.contains("ssl_acme=\"true\""), "{report}");
    assert!(report.contains("last order failed"), "{report}");
}

/// A controller with ACME and `interlock certs` for `clusters`, in scratch `s`.
async fn acme_controller(s: &Scratch, pebble: &Pebble, clusters: &[&str]) -> (Node, u16) {
    s.issue_certs(&["127.0.0.1"], clusters);
    acme_controller_on(s, pebble, common::free_port()).await
}

/// The controller of [`acme_controller`] (certificates issued), its API on `api`.
async fn acme_controller_on(s: &Scratch, pebble: &Pebble, api: u16) -> (Node, u16) {
    let mut args = s.controller_args(api);
    args.extend(acme_args(pebble, &s.0.join("acme"), "http-01"));
    (Node::start("controller", &args).await, api)
}

/// f. A controller doing ACME for two clusters: each proxy (its own loopback address,
/// the same ports) serves its own cluster's certificate, and its state file holds nothing
/// of the other cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_cluster_gets_its_own_certificate_and_no_proxy_holds_the_others() {
    let dev_ip = Ipv4Addr::new(127, 0, 0, 2);
    let prod_ip = Ipv4Addr::new(127, 0, 0, 3);
    let (http, https) = (
        free_port_on(&[dev_ip, prod_ip]),
        free_port_on(&[dev_ip, prod_ip]),
    );
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: 3600,
        ..Default::default()
    });
    pebble.add_a("dev.test", &dev_ip.to_string());
    pebble.add_a("prod.test", &prod_ip.to_string());
    let s = Scratch::new("acme-clusters");
    let (dev_be, prod_be) = (
        TestBackend::named("dev-backend").await,
        TestBackend::named("prod-backend").await,
    );
    s.write_services(&format!(
        "{}{}",
        acme_service("dev-web", "dev.test", dev_be.addr, Some("dev")),
        acme_service("prod-web", "prod.test", prod_be.addr, Some("prod")),
    ));
    let (ctl, api) = acme_controller(&s, &pebble, &["dev", "prod"]).await;
    let (dev_state, prod_state) = (s.path("dev-state.json"), s.path("prod-state.json"));
    let dev = proxy(&s, api, "dev", dev_ip, http, https, &dev_state).await;
    let prod = proxy(&s, api, "prod", prod_ip, http, https, &prod_state).await;
    let root = pebble.fetch_root();

    let dev_leaf = until_valid(&root, dev_ip, https, "dev.test", 60).await;
    let prod_leaf = until_valid(&root, prod_ip, https, "prod.test", 60).await;
    assert_eq!(
        curl_https(&root, "dev.test", dev_ip, https).await.unwrap(),
        "dev-backend"
    );
    assert_eq!(
        curl_https(&root, "prod.test", prod_ip, https)
            .await
            .unwrap(),
        "prod-backend"
    );
    // Neither proxy has the other's host (no certificate for it, no route).
    assert!(curl_https(&root, "prod.test", dev_ip, https).await.is_err());
    assert!(curl_https(&root, "dev.test", prod_ip, https).await.is_err());
    assert!(orders(&ctl, "issue", "ok").await >= 2.0);
    assert_private(&s.0.join("acme"));

    // The state files, once both have saved a snapshot with the certificate.
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .replace("\\n", "\n")
    };
    let saved = eventually(Duration::from_secs(15), || {
        let (d, p) = (read(&dev_state), read(&prod_state));
        let ok = holds(&d, &dev_leaf) && holds(&p, &prod_leaf);
        async move { ok }
    })
    .await;
    let (d, p) = (read(&dev_state), read(&prod_state));
    assert!(
        saved.is_some(),
        "the proxies' state files do not hold their certificates (dev {} bytes, prod {} bytes)",
        d.len(),
        p.len()
    );
    assert!(!d.contains("prod.test"), "dev's state file names prod.test");
    assert!(!p.contains("dev.test"), "prod's state file names dev.test");
    assert!(
        !holds(&d, &prod_leaf),
        "dev's state file holds prod's certificate"
    );
    assert!(
        !holds(&p, &dev_leaf),
        "prod's state file holds dev's certificate"
    );
    // Private keys: none shared between the two files, and none of the controller's ACME
    // account key(s) in either.
    let keys = |t: &str| -> BTreeSet<String> { pem_texts(t, "PRIVATE KEY").into_iter().collect() };
    let (dk, pk) = (keys(&d), keys(&p));
    assert!(!dk.is_empty(), "dev's state file holds no private key");
    assert!(!pk.is_empty(), "prod's state file holds no private key");
    assert!(
        dk.is_disjoint(&pk),
        "a private key in both clusters' state files"
    );
    // The account (instant-acme's credentials, its key among them): no long string of it
    // in either state file.
    let account = std::fs::read_to_string(s.0.join("acme").join("account.json"))
        .expect("the controller saved its ACME account");
    let account: serde_json::Value = serde_json::from_str(&account).unwrap();
    let secrets = long_strings(&account);
    assert!(!secrets.is_empty(), "no key in account.json: {account}");
    for secret in &secrets {
        assert!(
            !d.contains(secret.as_str()) && !p.contains(secret.as_str()),
            "a proxy's state file holds the ACME account's {secret:.12}..."
        );
    }
    for f in files_under(&s.0.join("acme")) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let name = f.display().to_string();
        for k in keys(&text) {
            let (in_dev, in_prod) = (dk.contains(&k), pk.contains(&k));
            if name.contains("account") {
                assert!(
                    !in_dev && !in_prod,
                    "the ACME account key ({name}) in a proxy's state file"
                );
            }
            if name.contains("prod.test") {
                assert!(!in_dev, "prod's key ({name}) in dev's state file");
            }
            if name.contains("dev.test") {
                assert!(!in_prod, "dev's key ({name}) in prod's state file");
            }
        }
    }

    // The controller restarted on the same --acme-state: no order, and the proxies keep
    // serving the same certificates.
    drop(ctl);
    let (ctl, _) = acme_controller_on(&s, &pebble, api).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        family_sum(&ctl, "interlock_acme_orders_total").await,
        0.0,
        "the restarted controller ordered again"
    );
    let any = tls_client(None);
    for (ip, host, leaf) in [
        (dev_ip, "dev.test", &dev_leaf),
        (prod_ip, "prod.test", &prod_leaf),
    ] {
        let served = served_leaf(&any, ip, https, host).await.unwrap();
        assert_eq!(
            serial(&served),
            serial(leaf),
            "{host} after the controller's restart"
        );
    }
    drop((dev, prod));
}

/// g. 20 hosts labelled at once on a controller and two proxies: per host, the time from
/// the services file written to a valid certificate served by both proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_hosts_labelled_at_once_are_served_by_every_proxy_in_time() {
    const HOSTS: usize = 20;
    let ips = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 4)];
    let (http, https) = (free_port_on(&ips), free_port_on(&ips));
    // Validations reach the first proxy (names resolve to 127.0.0.1).
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: 3600,
        ..Default::default()
    });
    let s = Scratch::new("acme-twenty");
    let backend = TestBackend::named("many").await;
    s.write_services("");
    let (_ctl, api) = acme_controller(&s, &pebble, &["web"]).await;
    let mut proxies = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let state = s.path(&format!("proxy-{i}.json"));
        proxies.push(proxy(&s, api, "web", *ip, http, https, &state).await);
    }
    let root = pebble.fetch_root();
    let tls = tls_client(Some(&root));

    let hosts: Vec<String> = (0..HOSTS).map(|i| format!("h{i:02}.test")).collect();
    let services: String = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| acme_service(&format!("svc{i:02}"), h, backend.addr, Some("web")))
        .collect();
    let written = Instant::now();
    s.write_services(&services);

    // Per (host, proxy): when a handshake first verified against pebble's root.
    let mut served: Vec<Vec<Option<Duration>>> = vec![vec![None; ips.len()]; HOSTS];
    let limit = Duration::from_secs(120);
    while served.iter().flatten().any(Option::is_none) && written.elapsed() < limit {
        let mut checks = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            for (p, ip) in ips.iter().enumerate() {
                if served[h][p].is_none() {
                    let (tls, host, ip) = (tls.clone(), host.clone(), *ip);
                    checks.push(tokio::spawn(async move {
                        let ok = served_leaf(&tls, ip, https, &host).await.is_ok();
                        (h, p, ok.then(|| written.elapsed()))
                    }));
                }
            }
        }
        for c in checks {
            let (h, p, at) = c.await.unwrap();
            served[h][p] = at;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<String> = hosts
        .iter()
        .zip(&served)
        .filter(|(_, t)| t.iter().any(Option::is_none))
        .map(|(h, t)| format!("{h} {t:?}"))
        .collect();
    let mut per_host: Vec<Duration> = served
        .iter()
        .filter_map(|t| {
            t.iter()
                .copied()
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .max()
        })
        .collect();
    per_host.sort();
    if let (Some(p50), Some(max)) = (per_host.get(per_host.len() / 2), per_host.last()) {
        println!(
            "acme 20 hosts, controller + {} proxies: label to valid certificate on every proxy: p50 {:.2} s, max {:.2} s ({} of {HOSTS} hosts)",
            ips.len(),
            p50.as_secs_f64(),
            max.as_secs_f64(),
            per_host.len()
        );
    }
    assert!(
        missing.is_empty(),
        "not served within {limit:?}: {missing:?}"
    );
    // Every host reaches the backend through a certificate curl verifies, on both proxies.
    for ip in ips {
        let body = curl_https(&root, &hosts[HOSTS - 1], ip, https)
            .await
            .unwrap();
        assert_eq!(body, "many");
    }
}

/// A plain `[[service]]` routed at `host` (no certificate of its own).
fn plain_service(name: &str, host: &str, backend: SocketAddr) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nendpoints = [\"{backend}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"{host}\"\n\n"
    )
}

/// Faults, each for one host only: a name the CA refuses (`blocked.test`, pebble's
/// blocklist), a challenge that cannot validate (`novalid.test`: its DNS answer points
/// where nothing listens), a corrupt certificate file in the state directory (ordered
/// again), and two processes sharing `--acme-state` asking for the same host (one order:
/// the second takes the first one's certificate). Each problem is logged with its host
/// and shown in `/routes`; `good.test` gets its certificate and every host keeps its
/// plain HTTP route.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_stay_with_their_host_and_a_shared_state_orders_once() {
    let s = Scratch::new("acme-faults");
    let state = s.0.join("acme");
    let (http, https) = (common::free_port(), common::free_port());
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: 3600,
        blocked: vec!["blocked.test".into()],
    });
    pebble.add_a("novalid.test", "127.0.0.9");
    let backend = TestBackend::named("faults-backend").await;
    s.write_services(&format!(
        "{}{}{}{}",
        acme_service("good", "good.test", backend.addr, None),
        acme_service("blocked", "blocked.test", backend.addr, None),
        acme_service("novalid", "novalid.test", backend.addr, None),
        plain_service("plain", "plain.test", backend.addr),
    ));
    let node = all_in_one(&s, &pebble, &state, "http-01", http, https).await;
    let root = pebble.fetch_root();
    let good = until_valid(&root, Ipv4Addr::LOCALHOST, https, "good.test", 60).await;
    for host in ["blocked.test", "novalid.test"] {
        let failed = eventually(Duration::from_secs(60), || async {
            acme_status(&node, host).await["last_error"].is_string()
        })
        .await;
        let status = acme_status(&node, host).await;
        assert!(failed.is_some(), "{host}: no last_error: {status}");
        assert!(status["not_after"].is_null(), "{host}: {status}");
        assert!(
            node.log()
                .iter()
                .any(|l| l.contains(host) && l.contains("ACME order failed")),
            "{host} not named in a log line:\n{}",
            node.log().join("\n")
        );
    }
    let refused = acme_status(&node, "blocked.test").await["last_error"].to_string();
    assert!(
        refused.contains("rejectedIdentifier") || refused.contains("blocked"),
        "{refused}"
    );
    // Every host keeps its plain HTTP route; the good certificate keeps serving.
    for host in ["good.test", "blocked.test", "novalid.test", "plain.test"] {
        let answer =
            common::node::try_http(SocketAddr::from(([127, 0, 0, 1], http)), host, "/").await;
        assert_eq!(answer.map(|a| a.0), Some(200), "{host}");
    }
    let any = tls_client(None);
    assert_eq!(
        serial(
            &served_leaf(&any, Ipv4Addr::LOCALHOST, https, "good.test")
                .await
                .unwrap()
        ),
        serial(&good)
    );
    drop(node);

    // A corrupt certificate file: logged, ordered again, served.
    let file = state.join("certs/good.test.json");
    std::fs::write(&file, b"{ not json").unwrap();
    let node = all_in_one(&s, &pebble, &state, "http-01", http, https).await;
    let again = until_valid(&root, Ipv4Addr::LOCALHOST, https, "good.test", 60).await;
    assert_ne!(
        serial(&again),
        serial(&good),
        "a new certificate replaced the corrupt file"
    );
    assert!(
        node.log().iter().any(|l| l.contains("corrupt")),
        "the corrupt file is not logged:\n{}",
        node.log().join("\n")
    );
    drop(node);

    // Two processes sharing the state directory, asking for a new host at once: one order.
    s.write_services(&acme_service("shared", "shared.test", backend.addr, None));
    let (http2, https2) = (common::free_port(), common::free_port());
    let first = all_in_one(&s, &pebble, &state, "http-01", http, https).await;
    let second = all_in_one(&s, &pebble, &state, "http-01", http2, https2).await;
    let a = until_valid(&root, Ipv4Addr::LOCALHOST, https, "shared.test", 60).await;
    let b = until_valid(&root, Ipv4Addr::LOCALHOST, https2, "shared.test", 60).await;
    assert_eq!(
        serial(&a),
        serial(&b),
        "both serve the one certificate ordered"
    );
    let ordered = orders(&first, "issue", "ok").await + orders(&second, "issue", "ok").await;
    assert_eq!(ordered, 1.0, "the host was ordered {ordered} times");
}
