//! The HTTP/1.1 fast path (src/proxy/server): plain requests (HTTP/1.1, origin-form, one
//! Host, no body, no upgrade) are parsed, forwarded and answered by interlock's own code;
//! the first other request hands the connection, with every byte read and not served, to
//! hyper for the rest of its life. Raw TCP clients on one connection and scripted raw
//! backends, so both sides are checked byte for byte.
//!
//! Which path served a request shows upstream: the fast path writes the client's field
//! names as they came (`X-Probe`), hyper's path from its field map (`x-probe`).

use interlock_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use interlock::config::settings::ProxySettings;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// A scripted backend that records what it gets, and a raw client connection.
// ---------------------------------------------------------------------------------------

/// A raw backend that records each request and answers by path (see [`answer`]).
async fn scripted() -> Recorder {
    Recorder::start(Framing::Strict, answer).await
}

/// What the scripted backend answers (raw bytes), and whether it closes after.
fn answer(req: &RawRequest) -> (Vec<u8>, bool) {
    let path = req.line().split(' ').nth(1).unwrap_or("");
    let fixed: &[u8] = match path {
        _ if req.line().starts_with("HEAD ") => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "/trailers" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
        "/close" => {
            return (
                b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(),
                true,
            )
        }
        "/204" => b"HTTP/1.1 204 No Content\r\n\r\n",
        "/304" => b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
        "/dated" => b"HTTP/1.1 200 OK\r\ndate: Tue, 01 Jan 2030 00:00:00 GMT\r\ncontent-length: 2\r\n\r\nok",
        "/hop" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-secret\r\nx-secret: 1\r\n\
              keep-alive: timeout=5, max=100\r\nproxy-connection: keep-alive\r\nx-kept: yes\r\n\r\nok",
        _ => {
            // The path, and `:body` when the request had one: answers show their request.
            let mut body = path.as_bytes().to_vec();
            if !req.body.is_empty() {
                body.push(b':');
                body.extend_from_slice(&req.body);
            }
            let mut out =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            return (out, false);
        }
    };
    (fixed.to_vec(), false)
}

/// True when the request reached the backend through the fast path (it wrote the
/// client's `X-Probe` as sent), false through hyper's (`x-probe`).
fn fast(req: &RawRequest) -> bool {
    if req.head.contains("\r\nX-Probe: 1\r\n") {
        return true;
    }
    assert!(
        req.head.contains("\r\nx-probe: 1\r\n"),
        "no probe: {}",
        req.head
    );
    false
}

/// A plain GET with the probe field.
fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.local\r\nX-Probe: 1\r\n\r\n")
}

/// A POST with a Content-Length body and the probe field.
fn post_req(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: app.local\r\nX-Probe: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A POST with a chunked body and the probe field: never plain, always hyper's.
fn chunked_post_req(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: app.local\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
}

/// One raw client connection to the proxy.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(proxy: &TestProxy) -> Conn {
        Conn {
            s: TcpStream::connect(proxy.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.s.write_all(bytes.as_ref()).await.unwrap();
    }

    /// The next response (to a HEAD when `head_request`); `None` if the proxy closed first.
    async fn try_read(&mut self, head_request: bool) -> Option<RawResponse> {
        bounded(
            "response",
            10,
            read_response(&mut self.s, &mut self.buf, head_request),
        )
        .await
    }

    async fn read(&mut self) -> RawResponse {
        self.try_read(false)
            .await
            .unwrap_or_else(|| panic!("closed before a whole response: {:?}", self.leftover()))
    }

    async fn request(&mut self, bytes: impl AsRef<[u8]>) -> RawResponse {
        self.send(bytes).await;
        self.read().await
    }

    /// Asserts the proxy closes the connection with nothing more to say.
    async fn assert_closed(&mut self) {
        let (out, closed) = read_until_close(&mut self.s, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "connection left open 5 s, after: {:?}",
            String::from_utf8_lossy(&out)
        );
        self.buf.extend_from_slice(&out);
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            self.leftover()
        );
    }

    fn leftover(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// The fast path writes its own fields in lowercase (the scripted backend's are too: it
/// relays an upstream's names as they came) and decides the framing: exactly one framing
/// field, never both.
fn assert_fast_head(r: &RawResponse) {
    for line in r.head.lines().skip(1) {
        let name = line.split_once(':').map_or(line, |(n, _)| n);
        assert_eq!(name, name.to_ascii_lowercase(), "{}", r.head);
    }
    let framing = r.headers("content-length").len() + r.headers("transfer-encoding").len();
    assert!(framing <= 1, "{}", r.head);
}

fn ok(r: &RawResponse, body: &str) {
    assert_eq!((r.status(), r.text().as_str()), (200, body), "{}", r.head);
}

// ---------------------------------------------------------------------------------------
// 1-3. Keep-alive, pipelining and the handoff to hyper on one connection.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_plain_get_then_a_post_with_a_body_then_a_get_are_served_on_one_connection() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    let r = c.request(get_req("/one")).await;
    ok(&r, "/one");
    assert_fast_head(&r);
    assert_eq!(r.header("connection"), None, "{}", r.head);
    ok(
        &c.request(chunked_post_req("/two", "hello")).await,
        "/two:hello",
    );
    ok(&c.request(get_req("/three")).await, "/three");
    assert_eq!(
        be.lines(),
        [
            "GET /one HTTP/1.1",
            "POST /two HTTP/1.1",
            "GET /three HTTP/1.1"
        ]
    );
    let seen = be.requests();
    assert_eq!(seen[1].body, b"hello");
    // The GET was ours; the chunked POST handed the connection to hyper, for good.
    let paths: Vec<bool> = seen.iter().map(fast).collect();
    assert_eq!(paths, [true, false, false]);
}

#[tokio::test]
async fn a_post_with_a_body_then_plain_gets_are_served_on_one_connection() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    ok(
        &c.request(chunked_post_req("/one", "hello")).await,
        "/one:hello",
    );
    ok(&c.request(get_req("/two")).await, "/two");
    ok(&c.request(get_req("/three")).await, "/three");
    assert_eq!(
        be.lines(),
        [
            "POST /one HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /three HTTP/1.1"
        ]
    );
    let seen = be.requests();
    assert_eq!(seen[0].body, b"hello");
    assert!(seen.iter().all(|r| !fast(r)), "{seen:?}");
}

#[tokio::test]
async fn a_head_dripped_a_byte_at_a_time_is_served_on_the_fast_path() {
    // A head that comes in pieces is parsed again only once an empty line may have come:
    // every split of the final CRLF CRLF must still end the head.
    let backend = scripted().await;
    let proxy = TestProxy::app(&[backend.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    for round in 0..2 {
        for b in get_req("/length").bytes() {
            c.send([b]).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ok(&c.read().await, "hello");
        assert_eq!(backend.requests().len(), round + 1);
    }
    assert!(backend.requests().iter().all(fast));
}

#[tokio::test]
async fn small_bodies_are_read_whole_and_forwarded_on_the_fast_path() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    // With its head, then after it in a later write, then at the limit (16 KiB).
    ok(&c.request(post_req("/one", "hello")).await, "/one:hello");
    let post = post_req("/two", "world");
    let (head, body) = post.split_at(post.len() - 5);
    c.send(head).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    ok(&c.request(body).await, "/two:world");
    let big = "b".repeat(16 * 1024);
    ok(
        &c.request(post_req("/three", &big)).await,
        &format!("/three:{big}"),
    );
    ok(&c.request(get_req("/four")).await, "/four");
    let seen = be.requests();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(fast), "{seen:?}");
    assert_eq!(seen[1].header("content-length"), Some("5"));
    // One byte over the limit: the body streams, on hyper's path, for good.
    let over = "o".repeat(16 * 1024 + 1);
    ok(
        &c.request(post_req("/five", &over)).await,
        &format!("/five:{over}"),
    );
    ok(&c.request(get_req("/six")).await, "/six");
    let seen = be.requests();
    assert_eq!(seen[4].body.len(), over.len());
    assert_eq!(
        seen[4..].iter().map(fast).collect::<Vec<_>>(),
        [false, false]
    );
}

#[tokio::test]
async fn a_small_body_that_stalls_gets_408_and_the_connection_closes() {
    let be = scripted().await;
    let settings = ProxySettings {
        body_read_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[be.backend.endpoint()]), settings).await;
    let mut c = Conn::open(&proxy).await;
    let post = post_req("/stall", "0123456789");
    c.send(&post[..post.len() - 7]).await;
    let r = c.read().await;
    assert_eq!(r.status(), 408, "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    c.assert_closed().await;
    assert!(be.requests().is_empty(), "{:?}", be.requests());
    assert_eq!(upstream_errors(&proxy, "app"), 0.0);
}

#[tokio::test]
async fn plain_gets_pipelined_in_one_write_are_answered_in_order() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    let paths = ["/p0", "/p1", "/p2", "/p3", "/p4"];
    c.send(paths.iter().map(|p| get_req(p)).collect::<String>())
        .await;
    for p in paths {
        let r = c.read().await;
        ok(&r, p);
        assert_fast_head(&r);
    }
    let lines: Vec<String> = paths.iter().map(|p| format!("GET {p} HTTP/1.1")).collect();
    assert_eq!(be.lines(), lines);
    assert!(be.requests().iter().all(fast));
    // Still open and serving.
    ok(&c.request(get_req("/after")).await, "/after");
}

#[tokio::test]
async fn a_plain_get_pipelined_with_a_post_in_one_write_hands_the_buffered_post_to_hyper() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    // All of it in one write: the GET is ours, the POST (head and body) was read with it
    // and must be replayed to hyper whole.
    let mut bytes = get_req("/one");
    bytes.push_str(&chunked_post_req("/two", "hello"));
    bytes.push_str(
        "GET /three HTTP/1.1\r\nHost: app.local\r\nX-Probe: 1\r\nConnection: close\r\n\r\n",
    );
    c.send(bytes).await;
    ok(&c.read().await, "/one");
    ok(&c.read().await, "/two:hello");
    let last = c.read().await;
    ok(&last, "/three");
    assert_eq!(last.header("connection"), Some("close"), "{}", last.head);
    c.assert_closed().await;
    let seen = be.requests();
    assert_eq!(seen[1].body, b"hello");
    assert_eq!(
        seen.iter().map(fast).collect::<Vec<_>>(),
        [true, false, false]
    );

    // The POST's body only partly read when the connection changes hands: the rest
    // comes after the GET was answered.
    let mut c = Conn::open(&proxy).await;
    let post = chunked_post_req("/four", "hello");
    let (first, rest) = post.split_at(post.len() - 3);
    c.send(get_req("/three") + first).await;
    ok(&c.read().await, "/three");
    ok(&c.request(rest).await, "/four:hello");
    ok(&c.request(get_req("/five")).await, "/five");
    let seen = be.requests();
    assert_eq!(
        seen[3..].iter().map(|r| r.line()).collect::<Vec<_>>(),
        [
            "GET /three HTTP/1.1",
            "POST /four HTTP/1.1",
            "GET /five HTTP/1.1"
        ]
    );
    assert_eq!(seen[4].body, b"hello");
    assert_eq!(
        seen[3..].iter().map(fast).collect::<Vec<_>>(),
        [true, false, false]
    );
}

// ---------------------------------------------------------------------------------------
// 4. Response framing as the client sees it.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_length_body_reaches_the_client_with_its_length() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    for _ in 0..2 {
        let r = c.request(get_req("/length")).await;
        ok(&r, "hello");
        assert_fast_head(&r);
        assert_eq!(r.headers("content-length"), ["5"], "{}", r.head);
        assert_eq!(r.header("transfer-encoding"), None, "{}", r.head);
    }
    assert!(be.requests().iter().all(fast));
    assert_eq!(
        be.backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn an_upstream_chunked_body_reaches_the_client_chunked() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    for _ in 0..2 {
        let r = c.request(get_req("/chunked")).await;
        ok(&r, "hello world");
        assert_fast_head(&r);
        assert_eq!(r.headers("transfer-encoding"), ["chunked"], "{}", r.head);
        assert_eq!(r.header("content-length"), None, "{}", r.head);
        assert!(
            r.wire.ends_with(b"\r\n0\r\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&r.wire)
        );
    }
    assert!(be.requests().iter().all(fast));
}

#[tokio::test]
async fn a_close_delimited_upstream_body_is_chunked_to_the_client_and_the_connection_stays() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    for _ in 0..2 {
        let r = c.request(get_req("/close")).await;
        ok(&r, "until the end");
        assert_fast_head(&r);
        assert_eq!(r.headers("transfer-encoding"), ["chunked"], "{}", r.head);
        assert_eq!(r.header("connection"), None, "{}", r.head);
        assert_eq!(r.header("content-type"), Some("text/plain"), "{}", r.head);
    }
    ok(&c.request(get_req("/next")).await, "/next");
    assert!(be.requests().iter().all(fast));
}

#[tokio::test]
async fn a_head_answer_keeps_its_length_sends_no_body_and_the_connection_stays() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    // Pipelined: any body byte after the HEAD answer would garble the GET's answer.
    c.send(
        "HEAD /big HTTP/1.1\r\nHost: app.local\r\nX-Probe: 1\r\n\r\n".to_string()
            + &get_req("/next"),
    )
    .await;
    let r = c.try_read(true).await.expect("HEAD answer");
    assert_eq!(r.status(), 200, "{}", r.head);
    assert_fast_head(&r);
    assert_eq!(r.headers("content-length"), ["1000"], "{}", r.head);
    assert_eq!(r.header("transfer-encoding"), None, "{}", r.head);
    ok(&c.read().await, "/next");
    assert!(be.requests().iter().all(fast));
}

#[tokio::test]
async fn no_content_and_not_modified_answers_have_no_body() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    c.send(get_req("/204") + &get_req("/304") + &get_req("/next"))
        .await;
    let r = c.read().await;
    assert_eq!((r.status(), r.body.len()), (204, 0), "{}", r.head);
    assert_fast_head(&r);
    assert_eq!(r.header("content-length"), None, "{}", r.head);
    assert_eq!(r.header("transfer-encoding"), None, "{}", r.head);
    let r = c.read().await;
    assert_eq!((r.status(), r.body.len()), (304, 0), "{}", r.head);
    assert_fast_head(&r);
    assert_eq!(r.header("etag"), Some("\"x\""), "{}", r.head);
    assert_eq!(r.header("transfer-encoding"), None, "{}", r.head);
    ok(&c.read().await, "/next");
    assert!(be.requests().iter().all(fast));
}

// ---------------------------------------------------------------------------------------
// 5-7. Trailers, Date, Connection: close.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn trailers_reach_a_client_that_sent_te_trailers() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    let r = c
        .request("GET /trailers HTTP/1.1\r\nHost: app.local\r\nX-Probe: 1\r\nTE: trailers\r\n\r\n")
        .await;
    ok(&r, "hello world");
    assert_eq!(r.headers("transfer-encoding"), ["chunked"], "{}", r.head);
    assert_eq!(r.trailers, ["x-checksum: abc"]);
    ok(&c.request(get_req("/next")).await, "/next");
    assert!(be.requests().iter().all(fast));
}

#[tokio::test]
async fn trailers_are_dropped_for_a_client_without_te_trailers_and_the_body_still_ends() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    let r = c.request(get_req("/trailers")).await;
    ok(&r, "hello world");
    assert_eq!(r.headers("transfer-encoding"), ["chunked"], "{}", r.head);
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    let wire = String::from_utf8_lossy(&r.wire);
    assert!(wire.ends_with("\r\n0\r\n\r\n"), "{wire:?}");
    assert!(!wire.contains("abc"), "{wire:?}");
    ok(&c.request(get_req("/next")).await, "/next");
    assert!(be.requests().iter().all(fast));
}

#[tokio::test]
async fn date_is_added_when_the_upstream_sent_none_and_never_doubled() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    let r = c.request(get_req("/length")).await;
    let dates = r.headers("date");
    assert_eq!(dates.len(), 1, "{}", r.head);
    assert!(httpdate::parse_http_date(dates[0]).is_ok(), "{}", r.head);
    let r = c.request(get_req("/dated")).await;
    ok(&r, "ok");
    assert_eq!(
        r.headers("date"),
        ["Tue, 01 Jan 2030 00:00:00 GMT"],
        "{}",
        r.head
    );
    // The proxy's own answers are dated too.
    let r = c
        .request("GET / HTTP/1.1\r\nHost: nowhere.local\r\n\r\n")
        .await;
    assert_eq!(r.status(), 503, "{}", r.head);
    assert_eq!(r.headers("date").len(), 1, "{}", r.head);
    assert!(be.requests().iter().all(fast));
}

#[tokio::test]
async fn a_client_connection_close_gets_connection_close_and_the_proxy_closes() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    for field in ["Connection: close", "connection: Keep-Alive, CLOSE"] {
        let mut c = Conn::open(&proxy).await;
        ok(&c.request(get_req("/first")).await, "/first");
        let r = c
            .request(format!(
                "GET /length HTTP/1.1\r\nHost: app.local\r\nX-Probe: 1\r\n{field}\r\n\r\n"
            ))
            .await;
        ok(&r, "hello");
        assert_fast_head(&r);
        assert_eq!(r.headers("connection"), ["close"], "{}", r.head);
        c.assert_closed().await;
    }
    let seen = be.requests();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(fast));
    // The client's Connection is its own: the backend never sees it.
    assert!(
        seen.iter().all(|r| r.header("connection").is_none()),
        "{seen:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. Hop-by-hop and forwarding fields.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_response_fields_from_the_backend_do_not_reach_the_client() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    let r = c.request(get_req("/hop")).await;
    ok(&r, "ok");
    assert_fast_head(&r);
    assert_eq!(r.header("x-kept"), Some("yes"), "{}", r.head);
    for gone in ["connection", "x-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(r.header(gone), None, "{gone} leaked: {}", r.head);
    }
    // The backend's Connection field did not close the client's connection.
    ok(&c.request(get_req("/next")).await, "/next");
    assert!(be.requests().iter().all(fast));
}

#[tokio::test]
async fn hop_by_hop_request_fields_are_dropped_and_forwarding_fields_added_with_names_as_sent() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    let r = c
        .request(
            "GET /fields?a=1 HTTP/1.1\r\n\
             Host: App.Local:8080\r\n\
             X-Probe: 1\r\n\
             Connection: keep-alive, X-Hop\r\n\
             X-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\n\
             X-Forwarded-For: 203.0.113.7\r\n\
             X-Real-IP: 10.9.9.9\r\n\
             X-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: evil.local\r\n\
             X-MiXeD-Case: Value As Sent\r\n\
             \r\n",
        )
        .await;
    ok(&r, "/fields?a=1");
    let seen = &be.requests()[0];
    assert!(fast(seen));
    assert_eq!(seen.line(), "GET /fields?a=1 HTTP/1.1");
    for gone in ["connection", "x-hop", "keep-alive", "proxy-connection"] {
        assert_eq!(
            seen.header(gone),
            None,
            "{gone} reached the backend: {}",
            seen.head
        );
    }
    assert_eq!(seen.header("host"), Some("App.Local:8080"), "{}", seen.head);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1"),
        "{}",
        seen.head
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"), "{}", seen.head);
    assert_eq!(
        seen.header("x-forwarded-proto"),
        Some("http"),
        "{}",
        seen.head
    );
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("App.Local:8080"),
        "{}",
        seen.head
    );
    for name in [
        "host",
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
    ] {
        let n = seen
            .head
            .lines()
            .filter(|l| l.split(':').next().unwrap().eq_ignore_ascii_case(name))
            .count();
        assert_eq!(n, 1, "{name} x{n}: {}", seen.head);
    }
    // Names go as the client spelled them.
    assert!(
        seen.head.contains("\r\nX-MiXeD-Case: Value As Sent\r\n"),
        "{}",
        seen.head
    );
}

// ---------------------------------------------------------------------------------------
// 9-10. The proxy's own answers on a kept-alive connection.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn redirect_and_no_route_answers_keep_the_connection_alive() {
    let be = scripted().await;
    let proxy = TestProxy::start(&state(vec![
        host_service("app", "app.local", &[be.backend.endpoint()]),
        service(
            "moved",
            &[
                ("com.docker.lb.hosts", "old.local,new.local"),
                (
                    "com.docker.lb.redirects",
                    "http://old.local,http://new.local",
                ),
            ],
            &[be.backend.endpoint()],
        ),
    ]))
    .await;
    let mut c = Conn::open(&proxy).await;
    let r = c
        .request("GET /a?b=1 HTTP/1.1\r\nHost: old.local\r\n\r\n")
        .await;
    assert_eq!(r.status(), 302, "{}", r.head);
    assert_fast_head(&r);
    assert_eq!(
        r.header("location"),
        Some("http://new.local/a?b=1"),
        "{}",
        r.head
    );
    assert_eq!(r.header("connection"), None, "{}", r.head);
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, r.body.len());
    let r = c
        .request("GET / HTTP/1.1\r\nHost: nowhere.local\r\n\r\n")
        .await;
    assert_eq!(r.status(), 503, "{}", r.head);
    assert_fast_head(&r);
    assert_eq!(r.header("connection"), None, "{}", r.head);
    ok(&c.request(get_req("/after")).await, "/after");
    assert_eq!(be.lines(), ["GET /after HTTP/1.1"]);
    assert!(fast(&be.requests()[0]));
}

#[tokio::test]
async fn a_host_with_non_ascii_bytes_is_400_and_the_proxy_goes_on() {
    let be = scripted().await;
    let proxy = TestProxy::app(&[be.backend.endpoint()]).await;
    for host in [&b"app.l\xc3\xa9cal"[..], b"\xff\xfe", b"app.local\x80"] {
        let mut c = Conn::open(&proxy).await;
        let mut req = b"GET / HTTP/1.1\r\nHost: ".to_vec();
        req.extend_from_slice(host);
        req.extend_from_slice(b"\r\nX-Probe: 1\r\n\r\n");
        let r = c.request(req).await;
        assert_eq!(r.status(), 400, "{host:?}: {}", r.head);
        assert!(r.text().contains("no valid Host"), "{host:?}: {}", r.text());
        // Closed, or kept alive and serving: either is the proxy's call, not a hang.
        let _ = c.s.write_all(get_req("/next").as_bytes()).await;
        if let Some(r) = c.try_read(false).await {
            ok(&r, "/next");
        }
    }
    assert!(be
        .requests()
        .iter()
        .all(|r| r.line() == "GET /next HTTP/1.1"));
    let mut c = Conn::open(&proxy).await;
    ok(&c.request(get_req("/fresh")).await, "/fresh");
}

// ---------------------------------------------------------------------------------------
// 11-12. Shutdown and timeouts.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_plain_request_in_flight_at_shutdown_completes_with_connection_close() {
    // The backend holds its answer until told.
    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let log: RequestLog = Arc::default();
    let (a, rl, l) = (arrived.clone(), release.clone(), log.clone());
    let backend = RawBackend::start(move |mut s, _| {
        let (arrived, release, log) = (a.clone(), rl.clone(), l.clone());
        async move {
            let mut buf = Vec::new();
            while let Some(req) = read_request(&mut s, &mut buf).await {
                log.lock().unwrap().push(req);
                arrived.notify_one();
                release.notified().await;
                if write_ok(&mut s, "slow").await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = TestProxy::app(&[backend.endpoint()]).await;
    let mut c = Conn::open(&proxy).await;
    c.send(get_req("/slow")).await;
    bounded("request at the backend", 10, arrived.notified()).await;
    proxy.trigger.trigger();
    // The listener closes on the same signal the connection watches: once it has, the
    // connection's watchdog has seen it too.
    let mut refused = false;
    for _ in 0..500 {
        if TcpStream::connect(proxy.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener still accepts after shutdown");
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.notify_one();
    let r = c.read().await;
    ok(&r, "slow");
    assert_fast_head(&r);
    assert_eq!(r.headers("connection"), ["close"], "{}", r.head);
    c.assert_closed().await;
    assert!(fast(&log.lock().unwrap()[0]));
    assert_eq!(bounded("drain", 10, proxy.proxy.drain()).await, 0);
}

/// Serves a first request (plain or with a body: our path, or hyper's after the handoff)
/// on a fresh connection, waits `pause`, sends the start of a head and no more; asserts
/// the proxy closes the connection (the hang guard is 5 s, far below the longer timeout).
async fn stall_later_head(head_timeout: Duration, idle_timeout: Duration, pause: Duration) {
    let be = scripted().await;
    let settings = ProxySettings {
        header_read_timeout: head_timeout,
        idle_timeout,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::with_settings(&app(&[be.backend.endpoint()]), settings).await;
    for (first, body) in [
        (get_req("/first"), "/first"),
        (chunked_post_req("/first", "hi"), "/first:hi"),
    ] {
        let mut c = Conn::open(&proxy).await;
        ok(&c.request(&first).await, body);
        tokio::time::sleep(pause).await;
        c.send("GET /stalled HTTP/1.1\r\nHost: app.local\r\nX-Slow: ")
            .await;
        c.assert_closed().await;
    }
    assert_eq!(be.lines(), ["GET /first HTTP/1.1", "POST /first HTTP/1.1"]);
    assert_eq!(
        be.requests().iter().map(fast).collect::<Vec<_>>(),
        [true, false]
    );
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_later_head_stalled_on_a_kept_alive_connection_is_closed_on_both_paths() {
    // The first head's timeout is errors_and_limits.rs's; here a later head stalls, on
    // our path and after the handoff to hyper. After the connection sat idle a moment,
    // the head timeout closes it; right after a response, the idle timeout does.
    stall_later_head(SHORT, LONG, Duration::from_millis(500)).await;
    stall_later_head(LONG, SHORT, Duration::ZERO).await;
}

#[tokio::test]
async fn a_head_stalled_right_after_a_response_is_closed_by_the_head_timeout() {
    // A slowloris on a kept-alive connection: one quick request, then the start of the
    // next head at once, then silence. Only the idle timeout (60 s here) would end it.
    // Whether the head lands before the watchdog's next tick is a race: several tries.
    for _ in 0..4 {
        stall_later_head(SHORT, LONG, Duration::ZERO).await;
    }
}
