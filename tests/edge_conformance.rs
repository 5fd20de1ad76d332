//! Conformance defects found by an outside review (issue 12), each reproduced with the
//! exact bytes a client or backend sends, over real sockets:
//! 1. HTTP/2 routes by `:authority`; a Host field naming another host is 400;
//! 2. `Upgrade: h2c` is never forwarded (no raw tunnel past routing);
//! 3. after TLS negotiated ALPN `h2`, only the HTTP/2 preface is accepted;
//! 4. trailer fields that may not be trailers are dropped, both ways;
//! 5. a transfer coding other than `chunked` is 501, `chunked` twice 400;
//! 6. HTTP/2 reset floods are counted and logged sparingly, not one WARN each.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::h2frames::{frame, h2_get, read_frames};
use common::node::{eventually, metric_value, Node, Scratch};
use common::*;
use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// 1. HTTP/2 :authority.
// ---------------------------------------------------------------------------------------

/// One HTTP/2 request over `tx`: `:authority` from `uri`, plus a Host field if given.
async fn h2_request(
    tx: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    uri: &str,
    host: Option<&str>,
) -> (u16, Option<String>, Option<String>) {
    let mut req = http::Request::builder().uri(uri);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = bounded(
        "h2 request",
        5,
        tx.send_request(req.body(Empty::new()).unwrap()),
    )
    .await
    .unwrap();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (backend, seen) = (header("x-backend"), header("x-seen-host"));
    (resp.status().as_u16(), backend, seen)
}

#[tokio::test]
async fn h2_routes_by_authority_and_a_host_naming_another_is_400() {
    // RFC 9113 §8.3.1: the target's host is `:authority`; a Host field that names a
    // different one makes the request malformed. Before the fix, `:authority a.local` with
    // `host: b.local` was routed to b.
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let proxy = TestProxy::start(&state(vec![
        host_service("a", "a.local", &[a.endpoint()]),
        host_service("b", "b.local", &[b.endpoint()]),
    ]))
    .await;
    let (mut tx, _conn) = h2c_connect(proxy.addr).await;
    let (status, backend, _) = h2_request(&mut tx, "http://a.local/x", Some("b.local")).await;
    assert_eq!((status, backend), (400, None));
    assert_eq!(b.requests.load(Ordering::SeqCst), 0, "routed by Host");
    assert_eq!(a.requests.load(Ordering::SeqCst), 0);
    // The same host in another case agrees; no Host at all is the usual HTTP/2 request.
    // Either way the backend gets Host from :authority.
    for host in [Some("A.LOCAL"), Some("a.local"), None] {
        let got = h2_request(&mut tx, "http://a.local/x", host).await;
        assert_eq!(got.0, 200, "{host:?}");
        assert_eq!(got.1.as_deref(), Some("a"), "{host:?}");
        assert!(
            got.2
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case("a.local")),
            "{host:?}: backend saw Host {:?}",
            got.2
        );
    }
    // A port that differs is a different authority.
    let (status, ..) = h2_request(&mut tx, "http://a.local/x", Some("a.local:8080")).await;
    assert_eq!(status, 400);
    assert_eq!(b.requests.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// 2. Upgrade: h2c.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn upgrade_h2c_is_not_forwarded_and_the_request_is_served_as_http1() {
    // A backend that takes the h2c upgrade whenever it is offered. Before the fix the
    // client got its 101 and a raw tunnel to the backend.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let backend = RawBackend::start(move |mut s, _| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(req) = read_request(&mut s, &mut buf).await {
                log.lock().unwrap().push(req.head.clone());
                let answer = if req.header("upgrade").is_some() {
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                        .to_vec()
                } else {
                    ok_response("plain")
                };
                if s.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    for upgrade in ["h2c", "H2C", "websocket, h2c"] {
        let req = format!(
            "GET /u HTTP/1.1\r\nHost: app.local\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        let out = exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(status_of(&out), 200, "{upgrade}: {out}");
        assert!(out.ends_with("plain"), "{upgrade}: {out}");
    }
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for head in heads {
        let lower = head.to_ascii_lowercase();
        for field in ["upgrade:", "http2-settings:", "connection: upgrade"] {
            assert!(!lower.contains(field), "{field} forwarded: {head}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. ALPN h2 then HTTP/1.1 (through the binary, real TLS).
// ---------------------------------------------------------------------------------------

/// `interlock run` with a TLS listener on a self-signed certificate for `app.local`, and
/// the client config that trusts it with ALPN `alpn`.
struct TlsProxy {
    node: Node,
    tls: SocketAddr,
    roots: rustls::RootCertStore,
    _dir: Scratch,
}

impl TlsProxy {
    async fn start(backend: SocketAddr) -> TlsProxy {
        let dir = Scratch::new("edge-tls");
        let ck = rcgen::generate_simple_self_signed(vec!["app.local".to_string()]).unwrap();
        std::fs::write(dir.path("app.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path("app.key"), ck.signing_key.serialize_pem()).unwrap();
        dir.write_services(&format!(
            "[[service]]\nname = \"app\"\nendpoints = [\"{backend}\"]\n[service.labels]\n\
             \"com.docker.lb.hosts\" = \"app.local\"\n\"com.docker.lb.ssl_cert\" = \"app.crt\"\n\
             \"com.docker.lb.ssl_key\" = \"app.key\"\n"
        ));
        let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args: Vec<String> = [
            "run",
            "--config",
            &dir.path("services.toml"),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--tls-listen",
            &tls.to_string(),
            "--secrets-dir",
            &dir.0.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let node = Node::start("interlock", &args).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        TlsProxy {
            node,
            tls,
            roots,
            _dir: dir,
        }
    }

    /// A TLS connection to `app.local` offering only `alpn`; returns it and what was
    /// negotiated.
    async fn connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(self.tls).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("app.local").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_alpn_h2_an_http1_request_gets_goaway_and_a_close() {
    let backend = TestBackend::named("app").await;
    let p = TlsProxy::start(backend.addr).await;
    let mut tls = p.connect(b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app.local\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let frames = read_frames(&mut tls, |f| f.iter().any(|(kind, ..)| *kind == 0x7)).await;
    let goaway = frames.iter().find(|(kind, ..)| *kind == 0x7);
    let (_, _, stream, payload) = goaway.unwrap_or_else(|| panic!("no GOAWAY: {frames:?}"));
    assert_eq!(*stream, 0);
    assert_eq!(&payload[4..8], [0, 0, 0, 1], "PROTOCOL_ERROR: {frames:?}");
    // Then the connection closes: no HTTP/1.1 answer follows.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "connection left open");
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "{rest:?}"
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);

    // HTTP/2 over ALPN h2 and HTTP/1.1 over ALPN http/1.1 are served as before.
    let tls = p.connect(b"h2").await;
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://app.local/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = bounded("h2 over TLS", 5, tx.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut tls = p.connect(b"http/1.1").await;
    tls.write_all(b"GET /h1 HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 2);
    drop(p.node);
}

// ---------------------------------------------------------------------------------------
// 4. Trailers.
// ---------------------------------------------------------------------------------------

/// A backend that reads one chunked request whole (head, chunks and trailer section, as
/// bytes), records it, and answers a chunked response whose trailers carry forbidden
/// fields too.
async fn trailer_backend(log: Arc<Mutex<Vec<String>>>) -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            // The request ends with the last chunk's trailer section and a blank line.
            loop {
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(i) = text.find("\r\n0\r\n") {
                    if text[i + 5..].contains("\r\n\r\n") || text[i + 5..].starts_with("\r\n") {
                        log.lock().unwrap().push(text);
                        break;
                    }
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                      Trailer: Content-Length, Host, Set-Cookie, X-Checksum, Grpc-Status\r\n\r\n\
                      2\r\nok\r\n0\r\nContent-Length: 99\r\nHost: evil.local\r\n\
                      Transfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nX-Checksum: abc\r\n\
                      Grpc-Status: 0\r\n\r\n",
                )
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn forbidden_trailer_fields_are_dropped_both_ways() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let backend = trailer_backend(log.clone()).await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let out = exchange(
        proxy.addr,
        b"POST /t HTTP/1.1\r\nHost: app.local\r\nTE: trailers\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 5\r\n\
          Host: evil.local\r\nTransfer-Encoding: chunked\r\nAuthorization: Basic eDp5\r\n\
          X-Checksum: def\r\n\r\n",
    )
    .await;
    // Upstream: the request's trailer section keeps only X-Checksum.
    let sent = log
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("backend got the request");
    let trailer = sent.split("\r\n0\r\n").nth(1).unwrap().to_ascii_lowercase();
    assert!(trailer.contains("x-checksum: def"), "{sent:?}");
    for field in [
        "content-length",
        "host",
        "transfer-encoding",
        "authorization",
    ] {
        assert!(
            !trailer.contains(field),
            "{field} reached the backend: {sent:?}"
        );
    }
    // Downstream: the response's trailers keep X-Checksum and Grpc-Status.
    assert_eq!(status_of(&out), 200, "{out}");
    let trailer = out
        .split("\r\n0\r\n")
        .nth(1)
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(trailer.contains("x-checksum: abc"), "{out:?}");
    assert!(trailer.contains("grpc-status: 0"), "{out:?}");
    for field in ["content-length", "host", "transfer-encoding", "set-cookie"] {
        assert!(
            !trailer.contains(field),
            "{field} reached the client: {out:?}"
        );
    }
}

#[tokio::test]
async fn forbidden_trailer_fields_from_an_upstream_never_reach_a_fast_path_client() {
    // A plain GET takes the fast path, whose response writer is the proxy's own.
    let backend = RawBackend::start(|mut s, _| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                      2\r\nok\r\n0\r\nContent-Length: 99\r\nHost: evil.local\r\n\
                      Set-Cookie: a=1\r\nX-Checksum: abc\r\n\r\n",
                )
                .await;
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let out = exchange(
        proxy.addr,
        b"GET /t HTTP/1.1\r\nHost: app.local\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    let trailer = out
        .split("\r\n0\r\n")
        .nth(1)
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(trailer.contains("x-checksum: abc"), "{out:?}");
    for field in ["content-length", "host", "set-cookie"] {
        assert!(
            !trailer.contains(field),
            "{field} reached the client: {out:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. Transfer codings.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_coding_is_501_and_chunked_twice_is_400() {
    // RFC 9112 §6.1: a server that does not understand a transfer coding answers 501;
    // chunked may be applied only once (400). Both close the connection: the smuggled
    // request after the body never reaches the backend.
    let rec = Recorder::start(Framing::Strict, |_| (ok_response("rec"), false)).await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    for (te, want) in [
        ("Transfer-Encoding: identity, chunked", 501),
        ("Transfer-Encoding: gzip, chunked", 501),
        ("Transfer-Encoding: chunked;ext=1, chunked", 501),
        ("Transfer-Encoding: chunked, chunked", 400),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            400,
        ),
        ("Transfer-Encoding: Chunked, CHUNKED", 400),
    ] {
        let case = format!(
            "POST /a HTTP/1.1\r\nHost: app.local\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
             GET /smuggled HTTP/1.1\r\nHost: app.local\r\n\r\n"
        );
        let out = exchange(proxy.addr, case.as_bytes()).await;
        assert_eq!(status_of(&out), want, "{te:?}: {out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{te:?}: {out}");
    }
    assert!(rec.requests().is_empty(), "{:?}", rec.lines());
    // One plain `chunked` is still fine.
    let out = exchange(
        proxy.addr,
        b"POST /ok HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert_eq!(rec.lines(), ["POST /ok HTTP/1.1"]);
}

// ---------------------------------------------------------------------------------------
// 6. Reset floods (through the binary: its log and /metrics).
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_floods_are_counted_not_logged_one_warn_each() {
    let backend = TestBackend::named("app").await;
    let dir = Scratch::new("edge-reset");
    dir.write_services(&format!(
        "[[service]]\nname = \"app\"\nendpoints = [\"{}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"app.local\"\n",
        backend.addr
    ));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args: Vec<String> = [
        "run",
        "--config",
        &dir.path("services.toml"),
        "--listen",
        &listen.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let node = Node::start("interlock", &args).await;
    // Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM(CANCEL), over and over.
    const FLOODS: usize = 10;
    for _ in 0..FLOODS {
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        for i in 0..2000u32 {
            let stream = 1 + 2 * i;
            bytes.extend(h2_get(stream, &[]));
            bytes.extend(frame(0x3, 0, stream, &[0, 0, 0, 8]));
        }
        let _ = s.write_all(&bytes).await;
        let frames = read_frames(&mut s, |f| f.iter().any(|(kind, ..)| *kind == 0x7)).await;
        let goaway = frames.iter().find(|(kind, ..)| *kind == 0x7);
        let (.., payload) = goaway.unwrap_or_else(|| panic!("no GOAWAY: {} frames", frames.len()));
        assert_eq!(&payload[4..8], [0, 0, 0, 0xb], "ENHANCE_YOUR_CALM");
    }
    let counted = eventually(Duration::from_secs(5), || async {
        let text = node.admin_get("/metrics").await.1;
        let n = metric_value(
            &text,
            "interlock_http2_client_goaways_total",
            &["reason=\"ENHANCE_YOUR_CALM\""],
        );
        n == Some(FLOODS as f64)
    })
    .await;
    assert!(counted.is_some(), "{}", node.admin_get("/metrics").await.1);
    // At most one WARN summary for all of them, and none of h2's own lines.
    let log = node.log();
    let warns: Vec<_> = log.iter().filter(|l| l.contains("WARN")).collect();
    assert!(warns.len() <= 1, "{warns:#?}");
    assert!(!log.iter().any(|l| l.contains("reached limit")), "{log:#?}");
    // The proxy still serves.
    let (status, _) = common::node::http(listen, "app.local", "/").await;
    assert_eq!(status, 200);
}
