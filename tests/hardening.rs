//! Hardening: hostile and broken peers on both sides of the proxy, over real sockets with
//! raw byte-level clients. Every case checks three things: the client gets a clear status
//! or a clean close, the proxy keeps serving normal requests afterwards, and the backend
//! never receives an ambiguous or smuggled request.
//!
//! The client side's HTTP/1 parsing is hyper's (1.12, with httparse 1.10); the comments say
//! which layer answers each case. Only what hyper parsed is forwarded, re-framed by
//! interlock's own upstream client (src/upstream/h1), so the backend sees the proxy's
//! framing, never the client's.

use interlock_testkit as common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::h2frames::{frame, h2_get, read_frames};
use common::*;
use interlock::config::settings::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A [`Recorder`] with strict framing that answers `200 rec`, and closes on anything it
/// cannot frame (recorded as a request line `UNFRAMED`).
async fn recorder() -> Recorder {
    Recorder::start(Framing::Strict, |req| {
        if req.line() == "UNFRAMED" {
            (Vec::new(), true)
        } else {
            (ok_response("rec"), false)
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Raw client helpers.
// ---------------------------------------------------------------------------------------

/// How many responses `out` holds.
fn responses(out: &str) -> usize {
    out.matches("HTTP/1.1 ").count()
}

/// A normal request still works: the proxy survived whatever came before.
async fn still_serves(proxy: &TestProxy) {
    let out = bounded(
        "follow-up request",
        5,
        exchange(
            proxy.addr,
            b"GET /after HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(status_of(&out), 200, "follow-up: {out}");
}

// ---------------------------------------------------------------------------------------
// 1. Request smuggling.
// ---------------------------------------------------------------------------------------

/// Sends `case` on its own connection to a fresh proxy in front of a [`Recorder`], then a
/// normal request on another connection. Returns what the client got back and the requests
/// the backend received before that normal one.
async fn smuggle(case: &str) -> (String, Vec<RawRequest>) {
    let rec = recorder().await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    let out = bounded(case, 8, exchange(proxy.addr, case.as_bytes())).await;
    still_serves(&proxy).await;
    let reqs = rec.requests();
    // Whatever happened, the backend never saw a request it could not frame, nor the
    // smuggled one, nor anything but the follow-up besides what the case allows.
    for r in &reqs {
        assert_ne!(
            r.line(),
            "UNFRAMED",
            "{case:?}: ambiguous framing: {}",
            r.head
        );
        assert!(
            !r.line().contains("/smuggled"),
            "{case:?}: smuggled request reached the backend: {reqs:?}"
        );
    }
    assert_eq!(
        reqs.last().map(RawRequest::line),
        Some("GET /after HTTP/1.1")
    );
    (out, reqs[..reqs.len() - 1].to_vec())
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app.local\r\n\r\n";

#[tokio::test]
async fn cl_te_chunked_wins_and_the_connection_closes() {
    // CL.TE: Content-Length covers the whole chunked body plus a smuggled request; a
    // front end trusting CL would forward both as one body, a back end trusting TE would
    // see two requests. hyper takes Transfer-Encoding, drops Content-Length and (RFC 9112
    // §6.1) closes the connection after the response, so the trailing bytes are never
    // read as a request. The backend sees one chunked POST with the 1-byte body.
    let body = format!("1\r\nx\r\n0\r\n\r\n{SMUGGLED}");
    let case = format!(
        "POST /a HTTP/1.1\r\nHost: app.local\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let (out, reqs) = smuggle(&case).await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert_eq!(responses(&out), 1, "{out}");
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].line(), "POST /a HTTP/1.1");
    assert_eq!(reqs[0].body, b"x");
    assert_eq!(reqs[0].header("content-length"), None, "{}", reqs[0].head);
}

#[tokio::test]
async fn te_cl_smuggled_request_stays_in_the_body() {
    // TE.CL: Transfer-Encoding first, a short Content-Length after it; the smuggled
    // request sits inside the chunk data. hyper decodes the chunks (Content-Length
    // ignored), so the smuggled bytes are body data, forwarded re-framed as one body.
    let chunk = SMUGGLED;
    let case = format!(
        "POST /a HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (out, reqs) = smuggle(&case).await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert_eq!(responses(&out), 1, "{out}");
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].body, chunk.as_bytes());
}

#[tokio::test]
async fn conflicting_or_garbage_content_length_is_400() {
    // hyper: two different Content-Length values, a list in one field (hyper does not
    // accept even "5, 5"), a sign, hex, spaces inside or an overflowing number are all
    // `Parse::Header(ContentLengthInvalid)` -> 400 and close, before anything is routed.
    for cl in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 6",
        "Content-Length: 5, 5",
        "Content-Length: +5",
        "Content-Length: -1",
        "Content-Length: 0x5",
        "Content-Length: 5 5",
        "Content-Length: abc",
        "Content-Length: 99999999999999999999999",
    ] {
        let case = format!("POST /a HTTP/1.1\r\nHost: app.local\r\n{cl}\r\n\r\nhello{SMUGGLED}");
        let (out, reqs) = smuggle(&case).await;
        assert_eq!(status_of(&out), 400, "{cl:?}: {out}");
        assert_eq!(responses(&out), 1, "{cl:?}: {out}");
        assert!(reqs.is_empty(), "{cl:?}: {reqs:?}");
    }
}

#[tokio::test]
async fn repeated_equal_content_length_is_accepted_once() {
    // Two identical Content-Length fields are allowed (RFC 9112 §6.3); hyper keeps one and
    // the backend sees a single, consistent length.
    let case = "POST /a HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let (out, reqs) = smuggle(case).await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, b"hello");
    assert_eq!(
        reqs[0].head.matches("content-length").count(),
        1,
        "{}",
        reqs[0].head
    );
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_or_obfuscated_is_400() {
    // hyper: a request Transfer-Encoding whose last coding is not `chunked` is
    // `TransferEncodingInvalid` -> 400 (RFC 9112 §6.3: the length cannot be determined).
    // httparse: whitespace before the colon and obs-fold are invalid header syntax -> 400.
    // Either way, nothing reaches the backend.
    for te in [
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunkedx",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding\t: chunked",
        " Transfer-Encoding: chunked",
        "Transfer-Encoding: \x0bchunked",
        "Transfer-Encoding:\r\n chunked",
        "X-Pad: a\r\n Transfer-Encoding: chunked",
        "X-Pad: a\r\n\tTransfer-Encoding: chunked",
    ] {
        let case = format!(
            "POST /a HTTP/1.1\r\nHost: app.local\r\n{te}\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
        );
        let (out, reqs) = smuggle(&case).await;
        assert_eq!(status_of(&out), 400, "{te:?}: {out}");
        assert_eq!(responses(&out), 1, "{te:?}: {out}");
        assert!(reqs.is_empty(), "{te:?}: {reqs:?}");
    }
}

#[tokio::test]
async fn chunked_spellings_hyper_accepts_are_reframed() {
    // Variants that are valid HTTP: optional whitespace around the value, case. hyper
    // decodes them as chunked, and the backend gets a body framed by the proxy (no
    // Transfer-Encoding of the client's, no Content-Length of it). A list with another
    // coding before chunked is 501 (tests/edge_conformance.rs).
    for te in [
        "Transfer-Encoding:chunked",
        "Transfer-Encoding: \tchunked \t",
        "Transfer-Encoding: CHUNKED",
        "transfer-encoding: Chunked",
    ] {
        let case = format!(
            "POST /a HTTP/1.1\r\nHost: app.local\r\n{te}\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let (out, reqs) = smuggle(&case).await;
        assert_eq!(status_of(&out), 200, "{te:?}: {out}");
        assert_eq!(responses(&out), 1, "{te:?}: {out}");
        assert_eq!(reqs.len(), 1, "{te:?}: {reqs:?}");
        assert_eq!(reqs[0].body, b"hello", "{te:?}");
    }
}

#[tokio::test]
async fn transfer_encoding_on_http_1_0_is_400() {
    // HTTP/1.0 has no chunked coding: hyper answers 400 (`TransferEncodingUnexpected`).
    let case = format!(
        "POST /a HTTP/1.0\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let (out, reqs) = smuggle(&case).await;
    assert_eq!(status_of(&out), 400, "{out}");
    assert!(reqs.is_empty(), "{reqs:?}");
}

#[tokio::test]
async fn invalid_chunk_framing_never_reaches_the_backend_as_a_request() {
    // The head is valid, so hyper hands the request to the proxy, which starts forwarding
    // it; the chunk decoder then fails (non-hex size, overflow, negative, missing CRLF,
    // 16 KiB+ of chunk extensions). The request body errors, the proxy abandons the
    // upstream request, and the client gets a 400 (its body was bad) and a close. The
    // backend may have seen the start of one POST, never anything after it.
    let ext = format!(";{}", "e".repeat(20 * 1024));
    for chunks in [
        "zz\r\nhello\r\n0\r\n\r\n".to_string(),
        "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_string(),
        "-5\r\nhello\r\n0\r\n\r\n".to_string(),
        "5\r\nhelloXX0\r\n\r\n".to_string(),
        "5 5\r\nhello\r\n0\r\n\r\n".to_string(),
        "0x5\r\nhello\r\n0\r\n\r\n".to_string(),
        format!("5{ext}\r\nhello\r\n0\r\n\r\n"),
        format!("5\r\nhello\r\n0{ext}\r\n\r\n"),
    ] {
        let case = format!(
            "POST /a HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}{SMUGGLED}"
        );
        let what = &chunks[..chunks.len().min(40)];
        let (out, reqs) = smuggle(&case).await;
        assert!(
            status_of(&out) == 400 || out.is_empty(),
            "{what:?}: {}",
            &out[..out.len().min(300)]
        );
        assert!(responses(&out) <= 1, "{what:?}: {out}");
        assert!(reqs.len() <= 1, "{what:?}: {reqs:?}");
    }
}

#[tokio::test]
async fn bad_chunk_from_a_client_is_not_blamed_on_the_backend() {
    // A client's broken body must not count as an upstream failure: otherwise any client
    // could get healthy endpoints ejected by passive health checks.
    let rec = recorder().await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    for _ in 0..5 {
        let out = exchange(
            proxy.addr,
            b"POST /a HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        .await;
        assert!(status_of(&out) == 400 || out.is_empty(), "{out}");
    }
    assert_eq!(upstream_errors(&proxy, "app"), 0.0);
    // Still routed to the same (only) endpoint.
    still_serves(&proxy).await;
}

#[tokio::test]
async fn pipelined_requests_reach_the_backend_one_by_one() {
    // Two pipelined requests on one connection are two requests, each framed by the
    // proxy; the second is never glued to the first's body.
    let rec = recorder().await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    let out = exchange(
        proxy.addr,
        b"POST /one HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\n\r\nhello\
          GET /two HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(responses(&out), 2, "{out}");
    assert_eq!(rec.lines(), ["POST /one HTTP/1.1", "GET /two HTTP/1.1"]);
    assert_eq!(rec.requests()[0].body, b"hello");
}

// ---------------------------------------------------------------------------------------
// 2. Slowloris.
// ---------------------------------------------------------------------------------------

/// Sends `head` one byte per `every` until the proxy closes the connection; returns how
/// long that took and what came back (`None` if it never closed within `limit`).
async fn drip(
    addr: std::net::SocketAddr,
    head: &'static [u8],
    every: Duration,
    limit: Duration,
) -> Option<(Duration, Vec<u8>)> {
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let mut i = 0;
    let mut tick = tokio::time::interval(every);
    while start.elapsed() < limit {
        let mut chunk = [0u8; 1024];
        tokio::select! {
            r = s.read(&mut chunk) => match r {
                Ok(0) | Err(_) => return Some((start.elapsed(), out)),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick() => {
                if i < head.len() && s.write_all(&head[i..i + 1]).await.is_err() {
                    return Some((start.elapsed(), out));
                }
                i += 1;
            }
        }
    }
    None
}

const SLOW_HEAD: &[u8] =
    b"GET /slow HTTP/1.1\r\nHost: app.local\r\nX-Pad: aaaaaaaaaaaaaaaa\r\n\r\n";

#[tokio::test]
async fn slowloris_clients_are_cut_off_and_do_not_starve_others() {
    // The head timer (the connection watchdog's) starts with the first byte of a head and
    // is not reset by later bytes: a client dripping one byte per second is closed after
    // the header read timeout (no 408, just a close), while a normal client is served at
    // once.
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(1500),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(tokio::spawn(drip(
            proxy.addr,
            SLOW_HEAD,
            Duration::from_secs(1),
            Duration::from_secs(6),
        )));
    }
    // While all 50 are connected and dripping, a normal client gets its 200 quickly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let r = bounded("normal request", 2, get(&c, &proxy, "app.local", "/")).await;
        assert_eq!(r.status, 200);
        // Well before the slow clients are cut off (1.5 s): they do not hold it up.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    for s in slow {
        let (took, out) = s
            .await
            .unwrap()
            .expect("slow client still connected after 6 s");
        // Cut off by the header timer (1.5 s), well before the head could be complete (~65 s).
        assert!(
            took >= Duration::from_millis(1300) && took < Duration::from_secs(4),
            "{took:?}"
        );
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || status_of(&out) == 408, "{out}");
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
    let r = get(&c, &proxy, "app.local", "/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_never_blames_the_backend() {
    // The header timer only covers the head. A body that stops sending is cut by the body
    // read timeout (shorter than the upstream timeout, so a stalled client is never taken
    // for a slow backend): 408, the connection closes, no upstream error is counted.
    let rec = recorder().await;
    let settings = ProxySettings {
        idle_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(800),
        upstream_timeout: Duration::from_secs(5),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[rec.backend.endpoint()]), settings).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /a HTTP/1.1\r\nHost: app.local\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let out = String::from_utf8_lossy(&out);
    let took = closed.expect("a stalled body is not kept forever");
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(
        took < Duration::from_secs(4),
        "cut by the body timer: {took:?}"
    );
    assert_eq!(status_of(&out), 408, "{out}");
    // The backend never got a complete (so never a truncated-but-"complete") request.
    assert!(rec.requests().is_empty(), "{:?}", rec.requests());
    assert_eq!(upstream_errors(&proxy, "app"), 0.0);
    // A body that trickles but never stops for the timeout passes.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /b HTTP/1.1\r\nHost: app.local\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for b in [b"ab", b"cd", b"ef"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b).await.unwrap();
    }
    let (out, _) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&out)), 200);
    still_serves(&proxy).await;
}

// ---------------------------------------------------------------------------------------
// 3. Oversized heads (the 431 for big header blocks and many fields is in
//    errors_and_limits.rs); the body limit is tested with the methods below.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn long_request_line_is_a_4xx_and_a_clean_close() {
    let rec = recorder().await;
    let settings = ProxySettings {
        max_header_bytes: 128 * 1024,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[rec.backend.endpoint()]), settings).await;
    // Below hyper's URI limit (65534 bytes) and the head limit: served.
    let ok = format!(
        "GET /{} HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    assert_eq!(status_of(&exchange(proxy.addr, ok.as_bytes()).await), 200);
    // A URI over hyper's limit that fits in the head buffer: 414 URI Too Long.
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: app.local\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let out = exchange(proxy.addr, long.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 414 URI Too Long"), "{out}");
    // A request line longer than the whole head buffer, never finished: hyper gives up
    // when the buffer is full, answers 431 and closes.
    let huge = format!("GET /{}", "a".repeat(200 * 1024));
    let out = exchange(proxy.addr, huge.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{out}"
    );
    // One header line longer than the buffer, never finished: the same 431.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: app.local\r\nX-Long: {}",
        "a".repeat(200 * 1024)
    );
    let out = exchange(proxy.addr, huge.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{out}"
    );
    assert_eq!(rec.requests().len(), 1);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn oversized_h2c_header_list_is_refused_and_the_proxy_goes_on() {
    // HTTP/2: a header list over `max_header_bytes` (advertised as
    // SETTINGS_MAX_HEADER_LIST_SIZE) is answered 431 on that stream by the h2 crate;
    // nothing reaches the backend and the next request on the connection is served.
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        max_header_bytes: 16 * 1024,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let c = h2c_client();
    let req = http::Request::get(proxy.url("/"))
        .header("host", "app.local")
        .header("x-big", "a".repeat(32 * 1024))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = bounded("big h2 head", 5, c.request(req)).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    let r = get(&c, &proxy, "app.local", "/").await;
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------
// 4. Methods.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn extension_methods_are_forwarded_as_is_and_trace_is_refused() {
    // Any valid method token is forwarded verbatim (a reverse proxy does not judge the
    // backend's methods): PATCH, PROPFIND, FOO alike; methods are case-sensitive, so `get`
    // is an extension method, not GET. TRACE is answered 405 by the proxy (it would echo
    // cookies and credentials back to a script: cross-site tracing), as nginx does.
    let rec = recorder().await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    for m in ["FOO", "PROPFIND", "PATCH", "M-SEARCH", "get"] {
        let out = exchange(
            proxy.addr,
            format!("{m} /x HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&out), 200, "{m}: {out}");
    }
    let out = exchange(
        proxy.addr,
        b"TRACE /x HTTP/1.1\r\nHost: app.local\r\nCookie: secret=1\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 405, "{out}");
    assert_eq!(
        rec.lines(),
        [
            "FOO /x HTTP/1.1",
            "PROPFIND /x HTTP/1.1",
            "PATCH /x HTTP/1.1",
            "M-SEARCH /x HTTP/1.1",
            "get /x HTTP/1.1"
        ]
    );
    still_serves(&proxy).await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_never_blame_the_backend() {
    let rec = recorder().await;
    let settings = ProxySettings {
        max_body_bytes: Some(1000),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[rec.backend.endpoint()]), settings).await;
    // Declared too large: refused before any upstream is involved, connection closed.
    let out = exchange(
        proxy.addr,
        b"POST /x HTTP/1.1\r\nHost: app.local\r\nContent-Length: 1001\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 413, "{out}");
    assert!(
        rec.lines().is_empty(),
        "nothing forwarded: {:?}",
        rec.lines()
    );
    // At the limit: forwarded.
    let body = "a".repeat(1000);
    let out = exchange(
        proxy.addr,
        format!("POST /x HTTP/1.1\r\nHost: app.local\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{body}").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    // Chunked, crossing the limit mid-stream: 413, and the backend is not blamed.
    let chunk = "b".repeat(600);
    let out = exchange(
        proxy.addr,
        format!("POST /y HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&out), 413, "{out}");
    assert_eq!(upstream_errors(&proxy, "app"), 0.0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn invalid_method_tokens_are_400() {
    // httparse: a method with a non-token byte is `Error::Token` -> hyper 400 and close.
    let rec = recorder().await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    for m in ["G(T", "GE\"T", "G@T", "GET\x01", "G\x7fT", "GÉT", "G/T"] {
        let out = exchange(
            proxy.addr,
            format!("{m} /x HTTP/1.1\r\nHost: app.local\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&out), 400, "{m:?}: {out}");
    }
    // An empty method: 400 too.
    let out = exchange(proxy.addr, b" /x HTTP/1.1\r\nHost: app.local\r\n\r\n").await;
    assert_eq!(status_of(&out), 400, "{out}");
    assert!(rec.requests().is_empty(), "{:?}", rec.requests());
    still_serves(&proxy).await;
}

#[tokio::test]
async fn connect_is_refused_not_tunnelled() {
    // A reverse proxy must not become an open tunnel to arbitrary hosts: CONNECT is
    // answered 405 by the proxy itself, whatever the Host, and never forwarded. (Before:
    // routed by Host like any request, so `Host: app.local` forwarded a CONNECT to the
    // backend; hyper treats a 2xx to CONNECT as the start of a tunnel.)
    let rec = recorder().await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    let target = rec.backend.addr;
    for head in [
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        format!("CONNECT {target} HTTP/1.1\r\nHost: app.local\r\n\r\n"),
        "CONNECT app.local:80 HTTP/1.1\r\nHost: app.local:80\r\n\r\n".to_string(),
        "CONNECT / HTTP/1.1\r\nHost: app.local\r\n\r\n".to_string(),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        // Bytes a tunnel would carry to the target.
        let _ = s
            .write_all(b"GET /tunnelled HTTP/1.1\r\nHost: app.local\r\n\r\n")
            .await;
        let (out, _) = read_until_close(&mut s, Duration::from_secs(2)).await;
        let out = String::from_utf8_lossy(&out);
        // 405 with `Connection: close`: the bytes sent after the CONNECT are not read as
        // a next request either.
        assert_eq!(status_of(&out), 405, "{head:?}: {out}");
        assert_eq!(responses(&out), 1, "{head:?}: {out}");
    }
    assert!(rec.requests().is_empty(), "{:?}", rec.requests());
    still_serves(&proxy).await;
}

#[tokio::test]
async fn h2c_connect_is_refused() {
    let backend = TestBackend::named("app").await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let (mut tx, _conn) = h2c_connect(proxy.addr).await;
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("app.local:80")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = bounded("h2 CONNECT", 5, tx.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// 5. Host.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_duplicate_or_garbage_host_is_400() {
    // RFC 9112 §3.2: a request without Host, or with more than one, is answered 400 (the
    // proxy's check; hyper accepts both). Hosts that cannot be a name are 400 (the proxy's
    // host check); control characters are invalid field values for httparse (400 from
    // hyper). A name with a bad port is looked up as is and matches no route: 503.
    let rec = recorder().await;
    let proxy = TestProxy::app(&[rec.backend.endpoint()]).await;
    let long = "a".repeat(300);
    let longer = "a".repeat(10_000);
    let cases: Vec<(String, u16)> = vec![
        ("".into(), 400),
        ("Host: app.local\r\nHost: app.local".into(), 400),
        ("Host: app.local\r\nHost: other.local".into(), 400),
        ("Host: other.local\r\nHost: app.local".into(), 400),
        ("Host: app.local, other.local".into(), 400),
        ("Host: user@app.local".into(), 400),
        ("Host: app.local@evil.local".into(), 400),
        ("Host: app .local".into(), 400),
        ("Host: app.local\x01".into(), 400),
        ("Host: app\x00.local".into(), 400),
        ("Host: app.local\x7f".into(), 400),
        ("Host: app.local/path".into(), 400),
        (format!("Host: {long}.local"), 400),
        (format!("Host: app.local{longer}"), 400),
        ("Host: app.local:80:80".into(), 503),
        ("Host: app.local:x".into(), 503),
    ];
    for (host, want) in cases {
        let head = format!("GET / HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n");
        let head = head.replace("\r\n\r\nConnection", "\r\nConnection");
        let out = exchange(proxy.addr, head.as_bytes()).await;
        let what = &host[..host.len().min(60)];
        assert_eq!(status_of(&out), want, "{what:?}: {out}");
    }
    assert!(rec.requests().is_empty(), "{:?}", rec.requests());
    still_serves(&proxy).await;
}

#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    // RFC 9112 §3.2.2: with an absolute-form target the proxy must ignore Host and use the
    // target's authority. Routing and the Host the backend sees agree on it.
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let proxy = TestProxy::start(&state(vec![
        host_service("a", "a.local", &[a.endpoint()]),
        host_service("b", "b.local", &[b.endpoint()]),
    ]))
    .await;
    let out = exchange(
        proxy.addr,
        b"GET http://b.local/p?q=1 HTTP/1.1\r\nHost: a.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("x-backend: b\r\n"), "{out}");
    assert!(lower.contains("x-seen-host: b.local\r\n"), "{out}");
    // The backend gets origin-form.
    assert!(lower.contains("x-seen-path: /p?q=1\r\n"), "{out}");
    // An absolute-form target whose authority matches no route is 503, not routed by Host.
    let out = exchange(
        proxy.addr,
        b"GET http://nowhere.local/ HTTP/1.1\r\nHost: a.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 503, "{out}");
    // Garbage authority: 400 (hyper's URI parser or the proxy's host check).
    let out = exchange(
        proxy.addr,
        b"GET http://a.local@b.local/ HTTP/1.1\r\nHost: a.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 400, "{out}");
    assert_eq!(a.requests.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// 6. Upstreams that break mid-exchange.
// ---------------------------------------------------------------------------------------

/// A raw backend whose first connection runs `first`, and every later one answers `200
/// ok` to each request.
async fn breaks_first<F, Fut>(first: F) -> RawBackend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let first = Arc::new(first);
    RawBackend::start(move |mut s, idx| {
        let first = first.clone();
        async move {
            if idx == 0 {
                return first(s).await;
            }
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf).await.is_some() {
                if write_ok(&mut s, "ok").await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// After a broken first exchange: the next request is served on a new upstream
/// connection (the broken one was not pooled).
async fn recovers(proxy: &TestProxy, backend: &RawBackend) {
    let r = bounded("next request", 5, get(&client(), proxy, "app.local", "/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn upstream_closing_mid_body_truncates_the_client_response() {
    let backend = breaks_first(|mut s| async move {
        let mut buf = Vec::new();
        read_request(&mut s, &mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.local\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(closed.is_some(), "client left hanging: {out}");
    // The head promised 100 bytes; the client gets 10 and a close: visibly truncated,
    // never a complete response of the wrong length.
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("content-length: 100\r\n"),
        "{out}"
    );
    let body = out.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body, "0123456789");
    recovers(&proxy, &backend).await;
}

#[tokio::test]
async fn upstream_closing_mid_chunked_body_truncates_the_client_response() {
    let backend = breaks_first(|mut s| async move {
        let mut buf = Vec::new();
        read_request(&mut s, &mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let c = client();
    let resp = c
        .request(
            http::Request::get(proxy.url("/"))
                .header("host", "app.local")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The chunked stream never gets its last chunk: an error, not a complete body.
    use http_body_util::BodyExt;
    let body = bounded("truncated body", 5, resp.into_body().collect()).await;
    assert!(body.is_err(), "a truncated body looked complete");
    recovers(&proxy, &backend).await;
}

/// A POST whose first upstream connection ends without an answer (`end` closes or resets
/// it after reading the request) gets 502 (a POST is never retried), and the proxy recovers.
async fn post_unanswered_is_502(end: fn(TcpStream)) {
    let backend = breaks_first(move |mut s| async move {
        let mut buf = Vec::new();
        read_request(&mut s, &mut buf).await;
        end(s);
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let out = exchange(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: app.local\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert_eq!(status_of(&out), 502, "{out}");
    recovers(&proxy, &backend).await;
}

#[tokio::test]
async fn upstream_closing_before_answering_is_502() {
    post_unanswered_is_502(drop).await;
}

#[tokio::test]
async fn upstream_garbage_status_line_is_502() {
    for garbage in [
        &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02\x03garbage\r\n\r\n",
    ] {
        let backend = breaks_first(move |mut s| async move {
            let mut buf = Vec::new();
            read_request(&mut s, &mut buf).await;
            let _ = s.write_all(garbage).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let proxy = TestProxy::app(&[backend.endpoint()]).await;
        let out = exchange(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n",
        )
        .await;
        let what = String::from_utf8_lossy(garbage);
        assert_eq!(status_of(&out), 502, "{what:?}: {out}");
        recovers(&proxy, &backend).await;
    }
}

/// Closes `s` with a RST instead of a FIN (SO_LINGER 0; with a zero linger the close does
/// not block, which is what tokio's deprecation of `set_linger` warns about).
#[allow(deprecated)]
fn reset(s: TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

#[tokio::test]
async fn upstream_reset_is_502() {
    post_unanswered_is_502(reset).await;
}

#[tokio::test]
async fn upstream_reset_mid_body_truncates_and_is_not_pooled() {
    let backend = breaks_first(|mut s| async move {
        let mut buf = Vec::new();
        read_request(&mut s, &mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        reset(s);
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let out = exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: app.local\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(out.split_once("\r\n\r\n").unwrap().1, "0123456789");
    recovers(&proxy, &backend).await;
}

// ---------------------------------------------------------------------------------------
// 7. HTTP/2 (h2c prior knowledge), raw frames: hyper's client will not send the
//    forbidden fields, so the frames are built by hand.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_connection_specific_fields_reset_the_stream_only() {
    // RFC 9113 §8.2.2: a request carrying a connection-specific field is malformed. The h2
    // crate resets that stream (RST_STREAM PROTOCOL_ERROR) before hyper sees it; the
    // connection goes on and the next stream is served.
    let backend = TestBackend::named("app").await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let bad: [(&str, &str); 5] = [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
    ];
    let mut stream = 1;
    for (k, v) in bad {
        s.write_all(&h2_get(stream, &[(k, v)])).await.unwrap();
        let frames = read_frames(&mut s, |f| {
            f.iter()
                .any(|(kind, _, id, _)| *id == stream && (*kind == 0x3 || *kind == 0x1))
                || f.iter().any(|(kind, ..)| *kind == 0x7)
        })
        .await;
        let rst = frames
            .iter()
            .find(|(kind, _, id, _)| *kind == 0x3 && *id == stream);
        let (_, _, _, code) = rst.unwrap_or_else(|| panic!("{k}: no RST_STREAM: {frames:?}"));
        assert_eq!(code.as_slice(), [0, 0, 0, 1], "{k}: PROTOCOL_ERROR");
        stream += 2;
        // The same connection still serves a clean request (HEADERS then DATA "app").
        s.write_all(&h2_get(stream, &[("te", "trailers")]))
            .await
            .unwrap();
        let frames = read_frames(&mut s, |f| {
            f.iter()
                .any(|(kind, flags, id, _)| *id == stream && *kind == 0x0 && flags & 0x1 != 0)
                || f.iter().any(|(kind, ..)| *kind == 0x7 || *kind == 0x3)
        })
        .await;
        let data: Vec<u8> = frames
            .iter()
            .filter(|(kind, _, id, _)| *kind == 0x0 && *id == stream)
            .flat_map(|(_, _, _, p)| p.clone())
            .collect();
        assert_eq!(data, b"app", "{k}: {frames:?}");
        stream += 2;
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn h2c_client_reset_cancels_the_upstream_request_and_the_connection_goes_on() {
    // A client that resets its stream (RST_STREAM CANCEL) while the upstream has not
    // answered: the proxy drops that upstream request (its connection closes: it cannot be
    // reused with an answer still due), and the client's connection serves the next stream.
    let (heard, mut heard_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let backend = RawBackend::start(move |mut s, idx| {
        let heard = heard.clone();
        async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            if idx == 0 {
                // The first request is never answered: wait for the proxy to give it up.
                let _ = heard.send("request");
                let closed = matches!(s.read(&mut buf).await, Ok(0) | Err(_));
                let _ = heard.send(if closed { "closed" } else { "bytes" });
            } else {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext")
                    .await;
                let _ = s.read(&mut buf).await;
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    hello.extend(h2_get(1, &[]));
    s.write_all(&hello).await.unwrap();
    assert_eq!(
        bounded("upstream request", 5, heard_rx.recv()).await,
        Some("request")
    );
    // RST_STREAM(CANCEL) on stream 1.
    s.write_all(&frame(0x3, 0, 1, &[0, 0, 0, 8])).await.unwrap();
    assert_eq!(
        bounded("upstream request given up", 5, heard_rx.recv()).await,
        Some("closed")
    );
    s.write_all(&h2_get(3, &[])).await.unwrap();
    let frames = read_frames(&mut s, |f| {
        f.iter()
            .any(|(kind, flags, id, _)| *id == 3 && *kind == 0x0 && flags & 0x1 != 0)
            || f.iter().any(|(kind, ..)| *kind == 0x7)
    })
    .await;
    let data: Vec<u8> = frames
        .iter()
        .filter(|(kind, _, id, _)| *kind == 0x0 && *id == 3)
        .flat_map(|(_, _, _, p)| p.clone())
        .collect();
    assert_eq!(data, b"next", "{frames:?}");
}
