//! Failures and limits through a real proxy: the answers clients get when there is no
//! route, the upstream fails or is slow, and when clients send too much or too slowly.

use interlock_testkit as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use interlock::config::settings::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_text_plain(r: &Fetched) {
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn no_route_is_503_with_a_text_body() {
    let proxy = TestProxy::start(&state(vec![])).await;
    for c in [client(), h2c_client()] {
        let r = get(&c, &proxy, "nowhere.local", "/x").await;
        assert_eq!(r.status, 503);
        assert_text_plain(&r);
        assert_eq!(
            r.text(),
            "503 Service Unavailable: no route for this host and path\n"
        );
    }
    assert_eq!(metric(&proxy, "interlock_no_route_total"), Some(2.0));
}

#[tokio::test]
async fn route_without_endpoints_is_503() {
    let proxy = TestProxy::app(&[]).await;
    let r = get(&client(), &proxy, "app.local", "/").await;
    assert_eq!(r.status, 503);
    assert_text_plain(&r);
    assert!(r.text().contains("no running endpoint"), "{}", r.text());
}

#[tokio::test]
async fn refused_upstream_is_502_with_a_readable_body() {
    let proxy = TestProxy::app(&[dead_endpoint()]).await;
    let c = client();
    for method in ["GET", "POST"] {
        let r = send(
            &c,
            Request::builder()
                .method(method)
                .uri(proxy.url("/"))
                .header("host", "app.local")
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 502, "{method}");
        assert_text_plain(&r);
        assert_eq!(
            r.text(),
            "502 Bad Gateway: upstream refused the connection\n",
            "{method}"
        );
    }
    assert_eq!(
        metric(&proxy, r#"interlock_upstream_errors_total{service="app"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &proxy,
            r#"interlock_requests_total{class="5xx",service="app"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn refused_endpoint_is_retried_on_another_endpoint() {
    let live = TestBackend::named("live").await;
    let proxy = TestProxy::app(&[dead_endpoint(), live.endpoint()]).await;
    let c = client();
    for _ in 0..6 {
        // POST too: a refused connect sent nothing, so any method may move on.
        for method in ["GET", "POST"] {
            let r = send(
                &c,
                Request::builder()
                    .method(method)
                    .uri(proxy.url("/"))
                    .header("host", "app.local")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
            )
            .await;
            assert_eq!((r.status, r.text().as_str()), (200, "live"), "{method}");
        }
    }
    assert_eq!(live.requests.load(Ordering::SeqCst), 12);
    // The dead endpoint really was tried (and counted) along the way.
    let errors = metric(&proxy, r#"interlock_upstream_errors_total{service="app"}"#).unwrap();
    assert!(errors >= 1.0, "{errors}");
}

#[tokio::test]
async fn slow_upstream_is_504_after_upstream_timeout() {
    let slow = TestBackend::with(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(Full::new(Bytes::from_static(b"late")))
    })
    .await;
    let settings = ProxySettings {
        upstream_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[slow.endpoint()]), settings).await;
    let r = bounded(
        "timed-out request",
        4,
        get(&client(), &proxy, "app.local", "/"),
    )
    .await;
    assert_eq!(r.status, 504);
    assert_text_plain(&r);
    assert_eq!(
        r.text(),
        "504 Gateway Timeout: upstream did not answer in time\n"
    );
}

/// An upstream connection keeps one timer across its exchanges (re-armed lazily): a
/// request on a reused connection times out at its own deadline, not at the earlier
/// request's, and the next request after a timeout is served.
#[tokio::test]
async fn a_reused_upstream_connection_times_out_at_its_own_requests_deadline() {
    let backend = TestBackend::with(|req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Response::new(Full::new(Bytes::from_static(b"ok")))
    })
    .await;
    let settings = ProxySettings {
        upstream_timeout: Duration::from_millis(800),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let c = client();
    assert_eq!(get(&c, &proxy, "app.local", "/fast").await.status, 200);
    // Most of the first request's timeout goes by before the second request is sent on
    // the same (pooled) upstream connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = std::time::Instant::now();
    let r = bounded(
        "timed-out request",
        4,
        get(&c, &proxy, "app.local", "/slow"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_secs(3),
        "timed out after {took:?}, not at its own deadline (800 ms)"
    );
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "the second request went out on the first one's connection"
    );
    assert_eq!(get(&c, &proxy, "app.local", "/fast").await.status, 200);
}

#[tokio::test]
async fn unreachable_upstream_is_504_after_connect_timeout() {
    // A listener with a backlog of 0 that never accepts: once its accept queue is full the
    // kernel drops further SYNs, so a connect hangs until the proxy's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        fillers.push(tokio::spawn(async move {
            let s = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settings = ProxySettings {
        connect_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let endpoint = interlock::config::EndpointSpec {
        ip: addr.ip(),
        port: Some(addr.port()),
    };
    let proxy = TestProxy::with_settings(&app(&[endpoint]), settings).await;
    let r = bounded(
        "connect-timeout request",
        5,
        get(&client(), &proxy, "app.local", "/"),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.text().contains("upstream connection failed"),
        "{}",
        r.text()
    );
    for f in fillers {
        f.abort();
    }
    drop(listener);
}

#[tokio::test]
async fn stalled_request_head_is_closed_after_header_read_timeout() {
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.local\r\nX-Slow: ")
        .await
        .unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let took = closed.expect("the proxy closes a connection whose head stalls");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // Nothing is answered to a head that timed out: the connection just closes.
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        idle_timeout: Duration::from_millis(400),
        header_read_timeout: Duration::from_secs(30),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.local\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let took = closed.expect("the proxy closes an idle keep-alive connection");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
}

#[tokio::test]
async fn busy_connection_is_not_closed_by_idle_timeout() {
    // A response that takes longer than the idle timeout still completes.
    let slow = TestBackend::with(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        Response::new(Full::new(Bytes::from_static(b"slow")))
    })
    .await;
    let settings = ProxySettings {
        idle_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[slow.endpoint()]), settings).await;
    let r = bounded("slow request", 5, get(&client(), &proxy, "app.local", "/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        max_header_bytes: 16 * 1024,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    // Below the limit: served.
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: app.local\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let out = exchange(proxy.addr, ok.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Above it: hyper answers 431 and closes.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.local\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let out = exchange(proxy.addr, big.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{out}"
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn too_many_header_fields_is_431() {
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        max_headers: 20,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let head = |n: usize| {
        let mut h = String::from("GET / HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n");
        for i in 0..n {
            h.push_str(&format!("X-F{i}: v\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    let out = exchange(proxy.addr, head(10).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let out = exchange(proxy.addr, head(30).as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{out}"
    );
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn invalid_or_missing_host_is_400() {
    let backend = TestBackend::named("app").await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    for head in [
        "GET / HTTP/1.1\r\nHost: evil/..\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        let out = exchange(proxy.addr, head.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.0 400"),
            "{head:?}: {out}"
        );
        assert!(out.contains("no valid Host"), "{head:?}: {out}");
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn idle_keep_alive_outlives_the_header_read_timeout() {
    // The head timeout starts with the first byte of a head, not while a keep-alive
    // connection waits for its next request (hyper's own timer did: hyperium/hyper#3828).
    // So an idle keep-alive connection stays until the idle timeout, and then serves again
    // if a request comes before it.
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        idle_timeout: Duration::from_millis(1500),
        header_read_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: app.local\r\n\r\n";
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = bounded("first response", 5, s.read(&mut buf))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle for three header timeouts: still open, and it serves.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(request).await.unwrap();
    let n = bounded("second response", 5, s.read(&mut buf))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then idle past the idle timeout: closed.
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let took = closed.expect("closed by the idle timeout");
    assert!(took >= Duration::from_millis(1300), "{took:?}");
    assert_eq!(backend.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn silent_connection_is_closed_after_idle_timeout() {
    // A client that connects and sends nothing (not even enough to pick HTTP/1 or h2).
    let settings = ProxySettings {
        idle_timeout: Duration::from_millis(400),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&state(vec![]), settings).await;
    for prefix in [&b""[..], b"PRI * HT"] {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(prefix).await.unwrap();
        let (_, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
        let took = closed.expect("the proxy closes a silent connection");
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }
    assert!(
        wait_until(Duration::from_secs(2), || proxy
            .metrics
            .open_connections
            .get()
            == 0)
        .await,
        "open_connections = {}",
        proxy.metrics.open_connections.get()
    );
}

#[tokio::test]
async fn idle_h2c_connection_is_closed_despite_keep_alive_pings() {
    // The proxy pings idle HTTP/2 clients every 20 s (a fixed interval). Those pings must
    // not count as activity, or an idle h2 connection would never reach an idle timeout
    // longer than 20 s. Slow by necessity: the idle timeout has to exceed the interval.
    let backend = TestBackend::named("app").await;
    let settings = ProxySettings {
        idle_timeout: Duration::from_secs(21),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[backend.endpoint()]), settings).await;
    let (mut tx, conn) = h2c_connect(proxy.addr).await;
    let req = Request::get("http://app.local/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = bounded("h2c request", 5, tx.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let start = std::time::Instant::now();
    // Without the fix the proxy's ping at ~20 s resets the watchdog and the connection
    // stays open past 41 s.
    let ended = tokio::time::timeout(Duration::from_secs(35), conn).await;
    assert!(ended.is_ok(), "idle h2c connection still open after 35 s");
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

/// `com.docker.lb.retries=off` against the same failures that are retried by default: a
/// refused endpoint beside a live one.
#[tokio::test]
async fn retries_off_answers_a_refused_endpoint_with_502_instead_of_moving_on() {
    let live = TestBackend::named("live").await;
    let dead = dead_endpoint();
    let table = |retries: &str| {
        state(vec![service(
            "app",
            &[
                ("com.docker.lb.hosts", "app.local"),
                ("com.docker.lb.retries", retries),
            ],
            &[dead, live.endpoint()],
        )])
    };
    let c = client();
    let mut statuses = Vec::new();
    for retries in ["on", "off"] {
        let proxy = TestProxy::start(&table(retries)).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(get(&c, &proxy, "app.local", "/").await.status);
        }
        statuses.push((retries, got));
    }
    // On: the refused connect moves to the live endpoint. Off: each of the dead endpoint's
    // turns in the rotation is a 502 (passive health takes it out only after three).
    for (_, got) in &mut statuses {
        got.sort();
    }
    assert_eq!(
        statuses,
        [("on", vec![200; 4]), ("off", vec![200, 200, 502, 502])],
        "{statuses:?}"
    );
}

/// An endpoint that answers the first request of each connection and closes the
/// connection on the second without answering: the stale keep-alive race, every time.
/// Returns its endpoint and the count of connections it accepted.
async fn one_answer_per_connection() -> (
    interlock::config::EndpointSpec,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut heads = 0;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        heads += 1;
                        if heads > 1 {
                            return; // read the request, then close without answering
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let endpoint = interlock::config::EndpointSpec {
        ip: addr.ip(),
        port: Some(addr.port()),
    };
    (endpoint, conns)
}

#[tokio::test]
async fn retries_off_does_not_resend_on_a_failed_reused_connection() {
    let c = client();
    let mut seen = Vec::new();
    for retries in ["on", "off"] {
        let (endpoint, conns) = one_answer_per_connection().await;
        let proxy = TestProxy::start(&state(vec![service(
            "app",
            &[
                ("com.docker.lb.hosts", "app.local"),
                ("com.docker.lb.retries", retries),
            ],
            &[endpoint],
        )]))
        .await;
        let first = get(&c, &proxy, "app.local", "/").await.status;
        // Goes out on the pooled connection, which the endpoint closes unanswered.
        let second = get(&c, &proxy, "app.local", "/").await.status;
        seen.push((retries, first, second, conns.load(Ordering::SeqCst)));
    }
    // On: the GET is sent once more on a fresh connection (a second one). Off: 502, and
    // no second connection.
    assert_eq!(
        seen,
        [("on", 200, 200, 2), ("off", 200, 502, 1)],
        "{seen:?}"
    );
}
