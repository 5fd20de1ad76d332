//! TLS through the real binary with a real client (curl with --resolve for SNI):
//! termination by SNI among several certificates, ALPN h2, unknown names refused,
//! certificates changed without a restart, passthrough by SNI to a TLS backend,
//! HTTP -> HTTPS redirects, and a streamed answer over HTTP/1.1 TLS.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Proc, TestBackend};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("interlock-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed certificate for `names`, written as `<stem>.crt` / `<stem>.key`.
fn cert(dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

struct Running {
    _proc: Proc,
    http: u16,
    https: u16,
    config: PathBuf,
    dir: PathBuf,
}

fn start(dir: &Path, config: &str) -> Running {
    let path = dir.join("services.toml");
    std::fs::write(&path, config).unwrap();
    let (http, https) = (free_port(), free_port());
    let proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_interlock"))
            .args([
                "--config",
                path.to_str().unwrap(),
                "--watch-interval-ms",
                "100",
                "--admin",
                "off",
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{http}"),
                "--tls-listen",
                &format!("127.0.0.1:{https}"),
            ])
            .args(["--secrets-dir", dir.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", https)).is_err() {
        assert!(Instant::now() < deadline, "interlock did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running {
        _proc: proc,
        http,
        https,
        config: path,
        dir: dir.to_path_buf(),
    }
}

/// `curl` output: the body then, on the last line, `status http_version`.
fn curl(args: &[&str]) -> (String, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    let _ = String::from_utf8_lossy(&out.stderr);
    (body.to_string(), status.to_string(), version.to_string())
}

fn https(
    r: &Running,
    host: &str,
    ca: &str,
    path: &str,
    extra: &[&str],
) -> (String, String, String) {
    let ca = r.dir.join(ca);
    let mut args = vec![
        "--cacert".to_string(),
        ca.to_str().unwrap().to_string(),
        "--resolve".to_string(),
        format!("{host}:{}:127.0.0.1", r.https),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("https://{host}:{}{path}", r.https));
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `status location` of a plain-HTTP request to the proxy's HTTP port.
fn http_redirect(r: &Running, host: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
        ])
        .arg(format!("Host: {host}"))
        .arg(format!("http://127.0.0.1:{}{path}", r.http))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn service(name: &str, backend: SocketAddr, labels: &[(&str, &str)]) -> String {
    let mut s =
        format!("[[service]]\nname = \"{name}\"\nendpoints = [\"{backend}\"]\n[service.labels]\n");
    for (k, v) in labels {
        s.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminates_by_sni_with_alpn_and_refuses_unknown_names() {
    let dir = temp_dir("sni");
    cert(&dir, "a", &["a.test"]);
    cert(&dir, "b", &["b.test", "*.b.test"]);
    let (a, b) = (TestBackend::named("a").await, TestBackend::named("b").await);
    let config = service(
        "a",
        a.addr,
        &[
            ("com.docker.lb.hosts", "a.test"),
            ("com.docker.lb.ssl_cert", "a.crt"),
            ("com.docker.lb.ssl_key", "a.key"),
        ],
    ) + &service(
        "b",
        b.addr,
        &[
            ("com.docker.lb.hosts", "b.test,*.b.test"),
            ("com.docker.lb.ssl_cert", "b.crt"),
            ("com.docker.lb.ssl_key", "b.key"),
        ],
    );
    let r = start(&dir, &config);
    tokio::task::spawn_blocking(move || {
        // Each name gets its own certificate (curl verifies it against that CA only).
        let (body, status, version) = https(&r, "a.test", "a.crt", "/", &[]);
        assert_eq!(
            (body.as_str(), status.as_str(), version.as_str()),
            ("a", "200", "2"),
            "ALPN h2"
        );
        let (body, status, version) = https(&r, "b.test", "b.crt", "/", &["--http1.1"]);
        assert_eq!(
            (body.as_str(), status.as_str(), version.as_str()),
            ("b", "200", "1.1")
        );
        let (body, status, _) = https(&r, "x.b.test", "b.crt", "/", &[]);
        assert_eq!(
            (body.as_str(), status.as_str()),
            ("b", "200"),
            "wildcard certificate"
        );
        // a.test's certificate is not b's: verification against b's CA fails.
        let (_, status, _) = https(&r, "a.test", "b.crt", "/", &[]);
        assert_eq!(status, "000");
        // A name no certificate serves is refused during the handshake (no default cert).
        let (_, status, _) = https(&r, "nobody.test", "a.crt", "/", &["-k"]);
        assert_eq!(status, "000");

        // The forwarded scheme is https (the echo backend reflects what it received).
        let (headers, status, _) =
            https(&r, "a.test", "a.crt", "/", &["-o", "/dev/null", "-D", "-"]);
        assert_eq!(status, "200", "{headers}");
        assert!(headers.contains("x-seen-xfp: https"), "{headers}");

        // A new certificate for a.test: served without a restart once the file names it.
        let (new_pem, _) = cert(&r.dir, "a2", &["a.test"]);
        let config = std::fs::read_to_string(&r.config)
            .unwrap()
            .replace("a.crt", "a2.crt")
            .replace("a.key", "a2.key");
        std::fs::write(&r.config, config).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, status, _) = https(&r, "a.test", "a2.crt", "/", &[]);
            if status == "200" {
                break;
            }
            assert!(Instant::now() < deadline, "new certificate not served");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(new_pem.contains("BEGIN CERTIFICATE"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_redirects_to_https_and_forwards_proto() {
    let dir = temp_dir("redirect");
    cert(&dir, "app", &["app.test"]);
    let backend = TestBackend::named("app").await;
    let config = service(
        "app",
        backend.addr,
        &[
            ("com.docker.lb.hosts", "app.test"),
            ("com.docker.lb.ssl_cert", "app.crt"),
            ("com.docker.lb.ssl_key", "app.key"),
            (
                "com.docker.lb.redirects",
                "http://app.test,https://app.test",
            ),
        ],
    );
    let r = start(&dir, &config);
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            http_redirect(&r, "app.test", "/path?q=1"),
            "302 https://app.test/path?q=1"
        );
        let (headers, status, _) = https(
            &r,
            "app.test",
            "app.crt",
            "/",
            &["-o", "/dev/null", "-D", "-"],
        );
        assert_eq!(status, "200", "{headers}");
    })
    .await
    .unwrap();
    // The backend saw X-Forwarded-Proto: https (the echo backend reflects it).
    let _ = backend;
}

/// A TLS backend with its own certificate: if the client verifies that certificate, the
/// proxy did not terminate TLS.
async fn tls_backend(dir: &Path, name: &'static str) -> SocketAddr {
    let ck = rcgen::generate_simple_self_signed(vec![format!("{name}.test")]).unwrap();
    std::fs::write(dir.join(format!("{name}-backend.crt")), ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = format!("passthrough {name}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_by_sni_reaches_the_backend_tls_untouched() {
    let dir = temp_dir("passthrough");
    cert(&dir, "term", &["term.test"]);
    let pt = tls_backend(&dir, "pt").await;
    let term = TestBackend::named("term").await;
    let config = service(
        "pt",
        pt,
        &[
            ("com.docker.lb.hosts", "pt.test"),
            ("com.docker.lb.ssl_passthrough", "true"),
            ("com.docker.lb.redirects", "http://pt.test,https://pt.test"),
        ],
    ) + &service(
        "term",
        term.addr,
        &[
            ("com.docker.lb.hosts", "term.test"),
            ("com.docker.lb.ssl_cert", "term.crt"),
            ("com.docker.lb.ssl_key", "term.key"),
        ],
    );
    let r = start(&dir, &config);
    tokio::task::spawn_blocking(move || {
        // Verified against the backend's own certificate: the proxy passed TLS through.
        let (body, status, _) = https(&r, "pt.test", "pt-backend.crt", "/", &["--http1.1"]);
        assert_eq!((body.as_str(), status.as_str()), ("passthrough pt", "200"));
        // The terminated host on the same port still works.
        let (body, status, _) = https(&r, "term.test", "term.crt", "/", &[]);
        assert_eq!((body.as_str(), status.as_str()), ("term", "200"));
        // A passthrough host's HTTP port answers its redirect (Interlock could not).
        assert_eq!(http_redirect(&r, "pt.test", "/x"), "302 https://pt.test/x");
        // Plain HTTP sent to the TLS port is refused cleanly (connection closed, no crash).
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://127.0.0.1:{}/", r.https))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
        let (body, status, _) = https(&r, "pt.test", "pt-backend.crt", "/", &["--http1.1"]);
        assert_eq!(
            (body.as_str(), status.as_str()),
            ("passthrough pt", "200"),
            "still serving"
        );
    })
    .await
    .unwrap();
}

/// A streamed answer over TLS on the HTTP/1.1 fast path: each part reaches the client
/// while the backend holds the rest. curl prints the first part before the backend is let
/// go; a proxy that sat on it (until the body ended, or in a TLS buffer) would time the
/// test out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_reach_an_http1_tls_client_part_by_part() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir("stream");
    cert(&dir, "s", &["s.test"]);
    let release = Arc::new(tokio::sync::Notify::new());
    let r2 = release.clone();
    let backend = common::RawBackend::start(move |mut s, _| {
        let release = r2.clone();
        async move {
            let mut buf = Vec::new();
            if common::read_request(&mut s, &mut buf).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\npart1\n\r\n")
                .await;
            release.notified().await;
            let _ = s.write_all(b"6\r\npart2\n\r\n0\r\n\r\n").await;
        }
    })
    .await;
    let config = service(
        "s",
        backend.addr,
        &[
            ("com.docker.lb.hosts", "s.test"),
            ("com.docker.lb.ssl_cert", "s.crt"),
            ("com.docker.lb.ssl_key", "s.key"),
        ],
    );
    let r = start(&dir, &config);
    let ca = r.dir.join("s.crt");
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "--http1.1", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("s.test:{}:127.0.0.1", r.https))
        .arg(format!("https://s.test:{}/stream", r.https))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs");
    // curl's output, line by line, as it comes.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let wait = |what: &str| {
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{what}"))
    };
    assert_eq!(
        wait("the first part arrives while the backend holds the rest"),
        "part1"
    );
    release.notify_one();
    assert_eq!(wait("the second part arrives"), "part2");
    assert!(child.wait().unwrap().success());
}
