//! interlock's own HTTP/1.1 upstream client (src/upstream/h1) against scripted raw
//! backends: interim answers, the three ways a response body ends, trailers, answers that
//! come before the request body was sent, pooled connections the backend closed while
//! idle, and the responses that must never be pooled or must be refused. Each case checks
//! what the client gets and how many upstream connections the backend saw (a connection
//! reused when it must not be would show up as one too few).

use interlock_testkit as common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Request heads (lower-cased) and the body bytes exactly as they arrived.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A backend that answers every request on every connection with `answer` (raw bytes),
/// then keeps reading (keep-alive) unless `close_after` says so.
async fn scripted(answer: &'static [u8], close_after: bool) -> RawBackend {
    RawBackend::start(move |mut s, _| async move {
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).await.is_some() {
            if s.write_all(answer).await.is_err() || close_after {
                return;
            }
        }
    })
    .await
}

/// Appends what the socket has to `buf`; false when the peer closed.
async fn read_more(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn get_app(proxy: &TestProxy) -> Fetched {
    bounded("request", 5, get(&client(), proxy, "app.local", "/")).await
}

#[tokio::test]
async fn interim_answers_are_skipped_and_the_connection_is_reused() {
    let backend = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-final: yes\r\n\r\nok",
        false,
    )
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    for _ in 0..3 {
        let r = get_app(&proxy).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert_eq!(r.header("x-final"), Some("yes"));
        assert_eq!(r.header("link"), None, "an interim answer's fields leaked");
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn close_delimited_body_streams_whole_and_is_never_pooled() {
    // HTTP/1.0 style: no length, no chunking; the body ends when the backend closes.
    let backend = scripted(
        b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
        true,
    )
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    for _ in 0..2 {
        let r = get_app(&proxy).await;
        assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn chunked_body_and_trailers_pass_and_the_connection_is_reused() {
    let backend = scripted(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
        false,
    )
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    // HTTP/1.1 client: the body, re-chunked by the proxy.
    for _ in 0..2 {
        let r = get_app(&proxy).await;
        assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    }
    // h2c client: the trailers arrive as trailers.
    let resp = h2c_client()
        .request(
            http::Request::get(proxy.url("/"))
                .header("host", "app.local")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let collected = bounded("h2 body", 5, resp.into_body().collect())
        .await
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "hello world");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn head_answers_and_no_content_have_no_body_and_are_reused() {
    // A HEAD answer announces a length it does not send; 204 and 304 have no body.
    let backend = RawBackend::start(|mut s, _| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf).await {
            let answer: &[u8] = match req.line() {
                l if l.starts_with("HEAD") => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
                l if l.contains("/204") => b"HTTP/1.1 204 No Content\r\n\r\n",
                l if l.contains("/304") => b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
                _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    let head = http::Request::head(proxy.url("/"))
        .header("host", "app.local")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = bounded("HEAD", 5, send(&c, head)).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("1000"));
    for (path, status) in [("/204", 204), ("/304", 304), ("/", 200)] {
        let r = bounded(path, 5, get(&c, &proxy, "app.local", path)).await;
        assert_eq!(r.status, status, "{path}");
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_before_the_body_reaches_the_client_and_blames_no_one() {
    // The backend refuses the upload after reading only its head, and closes.
    let backend = RawBackend::start(|mut s, _| async move {
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if !read_more(&mut s, &mut head).await {
                return;
            }
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n",
            )
            .await;
        // Lingering close: the rest of the upload is read and dropped.
        let mut sink = [0u8; 65536];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let (tx, body) = body_channel(4);
    let feeder = tokio::spawn(async move {
        for _ in 0..64 {
            if tx.send(Bytes::from(vec![b'x'; 16 * 1024])).await.is_err() {
                return;
            }
        }
    });
    let resp = bounded(
        "early answer",
        10,
        stream_client().request(
            http::Request::post(proxy.url("/upload"))
                .header("host", "app.local")
                .body(body)
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 413);
    let text = bounded("413 body", 5, resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(text, "too big\n");
    feeder.abort();
    assert_eq!(upstream_errors(&proxy, "app"), 0.0);
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_used_even_for_a_post() {
    // The backend answers keep-alive, then closes every connection a moment later (as a
    // backend with a short keep-alive timeout does). A POST is never replayed, so it only
    // succeeds if the proxy notices the close before it picks the pooled connection.
    let backend = RawBackend::start(|mut s, _| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = write_ok(&mut s, "ok").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    for i in 0..3 {
        let post = http::Request::post(proxy.url("/"))
            .header("host", "app.local")
            .body(Full::new(Bytes::from_static(b"data")))
            .unwrap();
        let r = bounded("POST", 5, send(&c, post)).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn invalid_answers_are_502_and_the_proxy_recovers() {
    let cases: [&'static [u8]; 5] = [
        // Two different lengths: no guess is safe.
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
        // A 101 to a request that asked for no upgrade.
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
        // obs-fold is refused in responses too.
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  folded\r\ncontent-length: 2\r\n\r\nok",
    ];
    for answer in cases {
        let backend = RawBackend::start(move |mut s, idx| async move {
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf).await.is_some() {
                let bytes: &[u8] = if idx == 0 {
                    answer
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if s.write_all(bytes).await.is_err() || idx == 0 {
                    return;
                }
            }
        })
        .await;
        let proxy = TestProxy::app(&[backend.endpoint()]).await;
        let what = String::from_utf8_lossy(answer);
        let r = get_app(&proxy).await;
        assert_eq!(r.status, 502, "{what}");
        let r = get_app(&proxy).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "after {what}");
    }
}

#[tokio::test]
async fn oversized_answer_head_is_502() {
    let backend = RawBackend::start(|mut s, _| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..2000 {
                head.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(40)).as_bytes());
            }
            let _ = s.write_all(&head).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    assert_eq!(get_app(&proxy).await.status, 502);
}

#[tokio::test]
async fn answers_that_leave_the_connection_unclear_are_not_pooled() {
    // Both framings (Transfer-Encoding wins, RFC 9112 §6.3), and bytes after the end of a
    // body: either way the next request must get a fresh connection.
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 50\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    ] {
        let backend = scripted(answer, false).await;
        let proxy = TestProxy::app(&[backend.endpoint()]).await;
        let what = String::from_utf8_lossy(answer);
        for _ in 0..2 {
            let r = get_app(&proxy).await;
            assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{what}");
        }
        assert_eq!(backend.connections.load(Ordering::SeqCst), 2, "{what}");
    }
}

#[tokio::test]
async fn bytes_after_a_large_body_keep_the_connection_out_of_the_pool_too() {
    // After a large body the connection reads in larger pieces; the read buffer let go
    // before the connection idles must not take unasked bytes with it: they are what says
    // the connection is not usable.
    let backend = RawBackend::start(|mut s, _| async move {
        let mut buf = Vec::new();
        let body = vec![b'x'; 256 * 1024];
        while read_request(&mut s, &mut buf).await.is_some() {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            let (most, end) = body.split_at(body.len() - 2);
            if s.write_all(head.as_bytes()).await.is_err() || s.write_all(most).await.is_err() {
                return;
            }
            // Once the proxy has read that far, the body's last bytes come with bytes no
            // one asked for, in one piece.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(&[end, b"GARBAGE"].concat()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    for _ in 0..2 {
        let r = get_app(&proxy).await;
        assert_eq!((r.status, r.body.len()), (200, 256 * 1024));
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn request_bodies_are_framed_by_the_proxy() {
    // Whatever framing the client used, the backend gets a Content-Length body when the
    // length is known and a chunked one when it is not, never both.
    let heads: Seen = Arc::default();
    let seen = heads.clone();
    let backend = RawBackend::start(move |mut s, _| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            loop {
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    if !read_more(&mut s, &mut buf).await {
                        return;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                buf.drain(..head_end);
                // Read what the framing says, byte for byte.
                let done = |b: &[u8]| {
                    if head.contains("transfer-encoding: chunked") {
                        b.ends_with(b"0\r\n\r\n")
                    } else {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        b.len() >= len
                    }
                };
                while !done(&buf) {
                    if !read_more(&mut s, &mut buf).await {
                        return;
                    }
                }
                seen.lock().unwrap().push((head, std::mem::take(&mut buf)));
                if write_ok(&mut s, "ok").await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let requests: [&[u8]; 3] = [
        // Chunked from the client, length unknown: chunked upstream.
        b"POST /a HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        // A Content-Length body: the same length upstream.
        b"POST /b HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\n\r\nhello",
        // An empty POST says so.
        b"POST /c HTTP/1.1\r\nHost: app.local\r\n\r\n",
    ];
    for request in requests {
        let out = raw(proxy.addr, request, Duration::from_millis(500)).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    let (a, a_body) = &heads[0];
    assert!(a.starts_with("post /a http/1.1\r\n"), "{a}");
    assert!(
        a.contains("transfer-encoding: chunked\r\n") && !a.contains("content-length"),
        "{a}"
    );
    assert_eq!(a_body, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    let (b, b_body) = &heads[1];
    assert!(
        b.contains("content-length: 5\r\n") && !b.contains("transfer-encoding"),
        "{b}"
    );
    assert_eq!(b_body, b"hello");
    let (c, c_body) = &heads[2];
    assert!(
        c.contains("content-length: 0\r\n") && !c.contains("transfer-encoding"),
        "{c}"
    );
    assert!(c_body.is_empty());
    for (head, _) in &heads {
        let hosts = head.lines().filter(|l| l.starts_with("host: ")).count();
        assert_eq!(hosts, 1, "{head}");
        assert!(head.contains("host: app.local\r\n"), "{head}");
        assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    }
}

#[tokio::test]
async fn a_head_dripped_byte_by_byte_is_read_whole_and_the_connection_reused() {
    // The upstream client parses a head again only once its end may have come: whatever
    // piece holds the blank line (here: every byte its own write), the head is found, with
    // an interim answer before it, and the connection stays reusable.
    let answer: &'static [u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
        HTTP/1.1 200 OK\r\ncontent-length: 7\r\nx-one: 1\r\nx-two: 2\n\r\ndripped";
    let backend = RawBackend::start(move |mut s, _| async move {
        let _ = s.set_nodelay(true);
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).await.is_some() {
            for b in answer {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    for _ in 0..2 {
        let r = get_app(&proxy).await;
        assert_eq!((r.status, r.text().as_str()), (200, "dripped"));
        assert_eq!(r.header("x-two"), Some("2"));
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}
