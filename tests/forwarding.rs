//! Forwarding through a real proxy: protocols, forwarding and hop-by-hop headers, streaming
//! bodies, upstream keep-alive and the retry rules for stale pooled connections.

use interlock_testkit as common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

fn full(b: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(b.into())
}

/// A backend that answers with the sorted, comma-joined names of the request fields it saw
/// and the request's version in `x-seen-version`.
async fn header_names_backend() -> TestBackend {
    TestBackend::with(|req: Request<Incoming>| async move {
        let mut names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut resp = echo(&names.join(","), &req);
        resp.headers_mut().insert(
            "x-seen-version",
            format!("{:?}", req.version()).parse().unwrap(),
        );
        resp
    })
    .await
}

#[tokio::test]
async fn http1_and_h2c_share_the_listener() {
    let backend = header_names_backend().await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;

    let h1 = client()
        .request(
            Request::get(proxy.url("/one"))
                .header("host", "app.local")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(h1.version(), Version::HTTP_11);
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(h1.headers()["x-seen-path"], "/one");

    // h2c with prior knowledge; the host comes from the :authority pseudo-header.
    let h2 = h2c_over(&proxy, "app.local:8080", "/two?x=1").await;
    assert_eq!(h2.version(), Version::HTTP_2);
    assert_eq!(h2.status(), 200);
    // Upstream is always HTTP/1.1, with a Host field made from the authority.
    assert_eq!(h2.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(h2.headers()["x-seen-path"], "/two?x=1");
    assert_eq!(h2.headers()["x-seen-host"], "app.local:8080");
    assert_eq!(h2.headers()["x-seen-xfh"], "app.local:8080");
    assert_eq!(h2.headers()["x-seen-xfp"], "http");

    // A Host field beside :authority must name the same host (RFC 9113 §8.3.1): the
    // backend gets the authority. One that differs is 400 (tests/edge_conformance.rs).
    let (mut tx, _conn) = h2c_connect(proxy.addr).await;
    let req = Request::get("http://app.local/three")
        .header("host", "APP.local")
        .body(full(""))
        .unwrap();
    let r = bounded("h2c request", 10, tx.send_request(req))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-seen-host"], "app.local");
}

/// One h2c request whose :authority is `authority`, sent to the proxy's socket.
async fn h2c_over(proxy: &TestProxy, authority: &str, path: &str) -> Response<Bytes> {
    let (mut tx, _conn) = h2c_connect(proxy.addr).await;
    let req = Request::get(format!("http://{authority}{path}"))
        .body(full(""))
        .unwrap();
    let resp = bounded("h2c request", 10, tx.send_request(req))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, body)
}

#[tokio::test]
async fn forwarding_headers_are_added_and_host_preserved() {
    let backend = TestBackend::named("app").await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();

    let r = send(
        &c,
        Request::get(proxy.url("/"))
            .header("host", "App.Local:8080")
            .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Host is passed through exactly as the client sent it.
    assert_eq!(r.header("x-seen-host"), Some("App.Local:8080"));
    assert_eq!(
        r.header("x-seen-xff"),
        Some("203.0.113.7, 198.51.100.2, 127.0.0.1")
    );
    assert_eq!(r.header("x-seen-xfh"), Some("App.Local:8080"));
    assert_eq!(r.header("x-seen-xfp"), Some("http"));
    assert_eq!(r.header("x-seen-real-ip"), Some("127.0.0.1"));

    // Without an incoming chain the proxy starts one; a client cannot spoof X-Real-IP or
    // X-Forwarded-Proto/-Host.
    let r = send(
        &c,
        Request::get(proxy.url("/"))
            .header("host", "app.local")
            .header("x-real-ip", "10.9.9.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.local")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.header("x-seen-xff"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-real-ip"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-xfp"), Some("http"));
    assert_eq!(r.header("x-seen-xfh"), Some("app.local"));
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let backend = header_names_backend().await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    let r = send(
        &c,
        Request::get(proxy.url("/"))
            .header("host", "app.local")
            .header("connection", "keep-alive, X-Hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authenticate", "Basic")
            .header("te", "gzip")
            .header("x-kept", "yes")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen: Vec<String> = r.text().split(',').map(str::to_string).collect();
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "upgrade",
    ] {
        assert!(!seen.iter().any(|s| s == gone), "{gone} leaked: {seen:?}");
    }
    for kept in ["host", "x-kept", "x-forwarded-for", "x-real-ip"] {
        assert!(seen.iter().any(|s| s == kept), "{kept} missing: {seen:?}");
    }
    assert_eq!(r.header("x-seen-x-hop"), None);
    assert_eq!(r.header("x-seen-keep-alive"), None);
    assert_eq!(r.header("x-seen-connection"), None);

    // `TE: trailers` is end-to-end enough to keep (gRPC needs it).
    let r = send(
        &c,
        Request::get(proxy.url("/"))
            .header("host", "app.local")
            .header("te", "trailers")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert!(r.text().split(',').any(|s| s == "te"), "{}", r.text());
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    // A raw backend, so the proxy gets exactly these bytes.
    let backend = RawBackend::start(|mut s, _| async move {
        use tokio::io::AsyncWriteExt;
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).await.is_some() {
            let resp = "HTTP/1.1 200 OK\r\n\
                        content-length: 2\r\n\
                        keep-alive: timeout=5, max=100\r\n\
                        connection: keep-alive, X-Foo\r\n\
                        x-foo: secret\r\n\
                        proxy-connection: keep-alive\r\n\
                        x-kept: yes\r\n\
                        \r\n\
                        ok";
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    for c in [client(), h2c_client()] {
        let r = get(&c, &proxy, "app.local", "/").await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert_eq!(r.header("x-kept"), Some("yes"));
        for gone in ["x-foo", "keep-alive", "proxy-connection"] {
            assert!(
                !r.headers.contains_key(gone),
                "{gone} leaked: {:?}",
                r.headers
            );
        }
        if let Some(conn) = r.header("connection") {
            assert!(!conn.to_ascii_lowercase().contains("x-foo"), "{conn}");
        }
    }
    // The same raw stream, read by the client byte for byte.
    let out = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: app.local\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 200"), "{out}");
    assert!(out.contains("x-kept: yes"), "{out}");
    assert!(!out.contains("x-foo"), "{out}");
    assert!(!out.contains("keep-alive"), "{out}");
}

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 1024; // 64 MiB

fn chunk(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; CHUNK])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_64_mib_upload() {
    // The backend counts bytes frame by frame; it never holds the body.
    let backend = TestBackend::with(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let (mut total, mut frames, mut sum) = (0u64, 0u64, 0u64);
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            total += data.len() as u64;
            frames += 1;
            sum = sum.wrapping_add(u64::from(data[0]));
        }
        let _ = sum;
        Response::new(Full::new(Bytes::from(format!("{total} {frames}"))))
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let (tx, body) = body_channel(8);
    let producer = tokio::spawn(async move {
        for i in 0..CHUNKS {
            if tx.send(chunk(i)).await.is_err() {
                return i;
            }
        }
        CHUNKS
    });
    let req = Request::post(proxy.url("/upload"))
        .header("host", "app.local")
        .body(body)
        .unwrap();
    let resp = bounded("64 MiB upload", 120, stream_client().request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = bounded("upload answer", 30, resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text).into_owned();
    let (total, frames) = text.split_once(' ').unwrap();
    assert_eq!(total.parse::<u64>().unwrap(), (CHUNK * CHUNKS) as u64);
    // Many frames: the body arrived in pieces, not as one buffered blob.
    assert!(frames.parse::<u64>().unwrap() > 1, "{text}");
    assert_eq!(producer.await.unwrap(), CHUNKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_64_mib_download() {
    let backend = TestBackend::with_stream(|_req: Request<Incoming>| async move {
        let (tx, body) = body_channel(8);
        tokio::spawn(async move {
            for i in 0..CHUNKS {
                if tx.send(chunk(i)).await.is_err() {
                    return;
                }
            }
        });
        Response::new(body.boxed())
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let resp = bounded(
        "download head",
        30,
        client().request(
            Request::get(proxy.url("/big"))
                .header("host", "app.local")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut total, mut bad) = (0usize, 0usize);
    bounded("64 MiB download", 120, async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                // Every byte carries its chunk index: the content arrives in order.
                let expect = ((total / CHUNK) % 251) as u8;
                if data[0] != expect {
                    bad += 1;
                }
                total += data.len();
            }
        }
    })
    .await;
    assert_eq!(total, CHUNK * CHUNKS);
    assert_eq!(bad, 0);
}

#[tokio::test]
async fn request_and_response_bodies_stream_without_buffering() {
    // Lockstep: each side only sends its second part after the other side has seen the
    // first. A proxy that buffers a whole body deadlocks here (and the timeouts fail).
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let (go_tx, go_rx) = tokio::sync::mpsc::channel::<()>(1);
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let backend = TestBackend::with_stream(move |req: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        let go_rx = go_rx.clone();
        async move {
            let mut body = req.into_body();
            let (tx, out) = body_channel(1);
            tokio::spawn(async move {
                // Request body: report the first frame, then read to the end.
                let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
                seen_tx.send(first).await.unwrap();
                let mut rest = Vec::new();
                while let Some(f) = body.frame().await {
                    rest.extend_from_slice(&f.unwrap().into_data().unwrap());
                }
                // Response body: first part, then wait for the client to have seen it.
                tx.send(Bytes::from(format!(
                    "got-rest:{}|",
                    String::from_utf8_lossy(&rest)
                )))
                .await
                .unwrap();
                go_rx.lock().await.recv().await.unwrap();
                tx.send(Bytes::from_static(b"tail")).await.unwrap();
            });
            Response::new(out.boxed())
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;

    let (tx, body) = body_channel(1);
    let c = stream_client();
    let pending = tokio::spawn(
        c.request(
            Request::post(proxy.url("/echo"))
                .header("host", "app.local")
                .body(body)
                .unwrap(),
        ),
    );
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let first = bounded("backend sees the first request chunk", 10, seen_rx.recv())
        .await
        .unwrap();
    assert_eq!(first, "first");
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);

    let resp = bounded("response head", 10, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let part = bounded("first response chunk", 10, body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(part, "got-rest:second|");
    go_tx.send(()).await.unwrap();
    let rest = bounded("rest of the response", 10, body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "tail");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let backend = TestBackend::named("app").await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let (h1, h2) = (client(), h2c_client());
    for i in 0..10 {
        let c = if i % 2 == 0 { &h1 } else { &h2 };
        let r = get(c, &proxy, "app.local", &format!("/{i}")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "app"));
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 10);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    let table = proxy.applier.store.snapshot();
    let desc = table.describe();
    assert_eq!(desc["routes"][0]["endpoints"][0]["idle_connections"], 1);
}

/// Records the request lines a raw backend saw, per connection.
type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// A backend whose first connection answers one request, then reads the second completely
/// and closes without answering; later connections answer normally. Every request is logged
/// as (connection, request line[, body]).
async fn dies_on_second_request(log: Seen) -> RawBackend {
    RawBackend::start(move |mut s, idx| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            let mut n = 0;
            while let Some(req) = read_request(&mut s, &mut buf).await {
                let line = match String::from_utf8_lossy(&req.body) {
                    body if body.is_empty() => req.line().to_string(),
                    body => format!("{} {body}", req.line()),
                };
                log.lock().unwrap().push((idx, line));
                n += 1;
                if idx == 0 && n == 2 {
                    return; // close without answering
                }
                if write_ok(&mut s, &format!("conn{idx}")).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn stale_pooled_connection_closed_by_backend_is_not_used() {
    // Each backend connection answers one request (keep-alive, no `Connection: close`)
    // and then the backend closes it shortly after.
    let backend = RawBackend::start(|mut s, idx| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = write_ok(&mut s, &format!("conn{idx}")).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    for i in 0..3 {
        let r = get(&c, &proxy, "app.local", "/").await;
        assert_eq!((r.status, r.text()), (200, format!("conn{i}")));
        // Let the backend's close reach the proxy's pooled connection.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idempotent_request_is_retried_once_when_a_reused_connection_dies() {
    // Connection 0 answers its first request, then reads the second and closes without an
    // answer: the keep-alive race a proxy meets when a backend times out an idle
    // connection just as it is reused. Later connections answer normally.
    let seen: Seen = Arc::default();
    let backend = dies_on_second_request(seen.clone()).await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    let r = get(&c, &proxy, "app.local", "/a").await;
    assert_eq!((r.status, r.text().as_str()), (200, "conn0"));
    let r = get(&c, &proxy, "app.local", "/b").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "conn1"),
        "{}",
        r.text()
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (0, "GET /a HTTP/1.1".to_string()),
            (0, "GET /b HTTP/1.1".to_string()),
            (1, "GET /b HTTP/1.1".to_string()),
        ]
    );
}

#[tokio::test]
async fn post_is_not_replayed_after_it_was_sent() {
    // Same backend as above: the reused connection reads the POST completely, then closes.
    let seen: Seen = Arc::default();
    let backend = dies_on_second_request(seen.clone()).await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    let r = get(&c, &proxy, "app.local", "/warm").await;
    assert_eq!((r.status, r.text().as_str()), (200, "conn0"));
    let r = send(
        &c,
        Request::post(proxy.url("/pay"))
            .header("host", "app.local")
            .body(full("amount=10"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().starts_with("502 Bad Gateway"), "{}", r.text());
    // Give a (wrong) replay every chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (0, "GET /warm HTTP/1.1".to_string()),
            (0, "POST /pay HTTP/1.1 amount=10".to_string()),
        ]
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn expect_100_continue_is_honoured_through_the_proxy() {
    let backend = TestBackend::with(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(Full::new(Bytes::from(format!("got {}", body.len()))))
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // Like curl: send the body only after the interim answer.
    let mut got = Vec::new();
    bounded("100 Continue", 10, async {
        let mut chunk = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before 100 Continue");
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let interim = String::from_utf8_lossy(&got).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(closed.is_some());
    let out = String::from_utf8_lossy(&out).into_owned();
    let all = format!("{interim}{out}");
    assert!(all.contains("HTTP/1.1 200 OK"), "{all}");
    assert!(all.ends_with("got 5"), "{all}");
}

#[tokio::test]
async fn head_and_bodiless_responses_keep_the_upstream_connection() {
    let backend = TestBackend::with(|req: Request<Incoming>| async move {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"twelve bytes")));
        if req.uri().path() == "/empty" {
            *resp.status_mut() = http::StatusCode::NO_CONTENT;
            *resp.body_mut() = Full::new(Bytes::new());
        }
        resp
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    for _ in 0..3 {
        let r = send(
            &c,
            Request::head(proxy.url("/"))
                .header("host", "app.local")
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("12"));
        assert!(r.body.is_empty());
        assert_eq!(get(&c, &proxy, "app.local", "/empty").await.status, 204);
        let r = get(&c, &proxy, "app.local", "/").await;
        assert_eq!(r.text(), "twelve bytes");
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 9);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2c_bodies_both_ways_pass_whole_through_small_flow_control_windows() {
    // Four streams at once on one connection whose client grants 16 KiB windows (stream
    // and connection) and reads slowly: each 512 KiB answer must arrive whole and in
    // order, the proxy sending only as the windows open; each 300 KiB request body must
    // reach the upstream whole.
    const ANSWER: usize = 512 * 1024;
    let pattern = |i: usize| (i % 251) as u8;
    let backend = RawBackend::start(move |mut s, _| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf).await {
            // The body's length and a checksum, then the large answer.
            let sum: u64 = req.body.iter().map(|&b| u64::from(b)).sum();
            let body: Vec<u8> = (0..ANSWER).map(pattern).collect();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {ANSWER}\r\nx-got: {} {sum}\r\n\r\n",
                req.body.len()
            );
            if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&body).await.is_err() {
                return;
            }
            let _ = s.read(&mut [0u8; 0]).await;
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .adaptive_window(false)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let sent: Vec<u8> = (0..300 * 1024).map(|i| (i % 7) as u8).collect();
    let sent_sum: u64 = sent.iter().map(|&b| u64::from(b)).sum();
    let calls = (0..4).map(|_| {
        let mut tx = tx.clone();
        let sent = sent.clone();
        async move {
            let req = Request::post("http://app.local/upload")
                .body(full(sent))
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            let got = resp.headers()["x-got"].to_str().unwrap().to_string();
            let mut body = resp.into_body();
            let mut received = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    received.extend_from_slice(&data);
                    // A slow reader: the windows open only as it reads.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (got, received)
        }
    });
    let results = bounded("four streams", 30, futures_util::future::join_all(calls)).await;
    for (got, received) in results {
        assert_eq!(got, format!("{} {sent_sum}", 300 * 1024));
        assert_eq!(received.len(), ANSWER);
        assert!(received.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    }
}
