//! The harness of interlock's integration tests (`tests/`, which `use interlock_testkit as
//! common;`): real backends and a real proxy on 127.0.0.1 ephemeral ports, run in-process
//! so tests can swap tables directly; the binary as child processes (`node`), raw HTTP/2
//! frames (`h2frames`), private Docker daemons (`engine`, `multinode`).

/// The repository's root (where Cargo.toml, docker/ and tests/ are).
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub mod engine;
pub mod h2frames;
pub mod multinode;
pub mod node;
pub mod pebble;
pub mod pem;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use interlock::app::Applier;
use interlock::compile::CompileOptions;
use interlock::config::settings::ProxySettings;
use interlock::config::{DesiredState, EndpointSpec, ServiceSpec};
use interlock::metrics::{Metrics, Part};
use interlock::proxy::Proxy;
use interlock::shutdown::{self, ShutdownTrigger};
use tokio::net::TcpListener;

pub type BoxFut = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFut + Send + Sync>;

/// A backend on 127.0.0.1 that counts the connections it accepted and requests it served.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// Connections that have ended (closed by the peer or after an error).
    pub closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body a test backend can stream (see [`body_channel`]).
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl TestBackend {
    /// A backend that answers every request with `name` as its body and echoes what it saw
    /// in `x-seen-*` headers (path, host, and forwarding headers).
    pub async fn named(name: &'static str) -> TestBackend {
        Self::with(move |req: Request<Incoming>| async move { echo(name, &req) }).await
    }

    /// A backend with a custom async handler (HTTP/1.1 and h2c, upgrades enabled).
    pub async fn with<F, Fut>(f: F) -> TestBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let f = Arc::new(f);
        Self::with_stream(move |req| {
            let fut = f(req);
            async move { fut.await.map(|b| b.boxed()) }
        })
        .await
    }

    /// A backend whose handler may stream its response body.
    pub async fn with_stream<F, Fut>(f: F) -> TestBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler = Arc::new(f);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (c, r, d) = (connections.clone(), requests.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let r = r.clone();
                let d = d.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                    d.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TestBackend {
            addr,
            connections,
            requests,
            closed,
            task,
        }
    }

    pub fn endpoint(&self) -> EndpointSpec {
        EndpointSpec {
            ip: self.addr.ip(),
            port: Some(self.addr.port()),
        }
    }
}

/// The echo answer of [`TestBackend::named`].
pub fn echo(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(name.to_string())));
    let h = resp.headers_mut();
    h.insert("x-backend", name.parse().unwrap());
    h.insert("x-seen-path", req.uri().to_string().parse().unwrap());
    for (src, dst) in [
        ("host", "x-seen-host"),
        ("x-forwarded-for", "x-seen-xff"),
        ("x-forwarded-host", "x-seen-xfh"),
        ("x-forwarded-proto", "x-seen-xfp"),
        ("x-real-ip", "x-seen-real-ip"),
        ("connection", "x-seen-connection"),
        ("keep-alive", "x-seen-keep-alive"),
        ("x-hop", "x-seen-x-hop"),
    ] {
        if let Some(v) = req.headers().get(src) {
            h.insert(dst, v.clone());
        }
    }
    resp
}

/// A service with labels and endpoints.
pub fn service(name: &str, labels: &[(&str, &str)], endpoints: &[EndpointSpec]) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        endpoints: endpoints.to_vec(),
        errors: Vec::new(),
        last_good: None,
    }
}

/// `service` with just `com.docker.lb.hosts`.
pub fn host_service(name: &str, hosts: &str, endpoints: &[EndpointSpec]) -> ServiceSpec {
    service(name, &[("com.docker.lb.hosts", hosts)], endpoints)
}

pub fn state(services: Vec<ServiceSpec>) -> DesiredState {
    DesiredState {
        services,
        ..Default::default()
    }
}

/// The usual table of a test: one service `app` for `app.local`.
pub fn app(endpoints: &[EndpointSpec]) -> DesiredState {
    state(vec![host_service("app", "app.local", endpoints)])
}

/// A running in-process proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub applier: Arc<Applier>,
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub trigger: ShutdownTrigger,
}

impl TestProxy {
    pub async fn start(state: &DesiredState) -> TestProxy {
        Self::with_settings(state, ProxySettings::default()).await
    }

    /// A proxy serving [`app`]: one service `app` for `app.local` on `endpoints`.
    pub async fn app(endpoints: &[EndpointSpec]) -> TestProxy {
        Self::start(&app(endpoints)).await
    }

    pub async fn with_settings(state: &DesiredState, settings: ProxySettings) -> TestProxy {
        let metrics = Metrics::new();
        metrics.export(Part::Traffic);
        let applier = Arc::new(Applier::new(
            metrics.clone(),
            CompileOptions {
                max_idle_per_endpoint: settings.pool_max_idle_per_endpoint,
                ..CompileOptions::default()
            },
        ));
        applier.apply(state);
        let proxy = Proxy::new(applier.store.clone(), settings, metrics.clone(), false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // As `interlock run` makes its listeners: connections come with their first bytes.
        interlock::accept::defer_until_data(&listener).unwrap();
        let listener = interlock::accept::LazyListener::new(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = shutdown::channel();
        tokio::spawn(proxy.clone().serve(listener, shutdown));
        TestProxy {
            addr,
            applier,
            proxy,
            metrics,
            trigger,
        }
    }

    pub fn apply(&self, state: &DesiredState) {
        self.applier.apply(state);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A pooled client (hyper-util's legacy client), HTTP/1.1 or h2c with prior knowledge,
/// on loopback. Requests carry the proxy's loopback address in their URI and the routed
/// host in a Host field. Over HTTP/2 that field would disagree with `:authority` (which
/// the proxy answers 400, RFC 9113 §8.3.1), so the h2c client moves it into the URI's
/// authority, keeping the port, as real HTTP/2 clients do (curl `-H Host:`, h2load); every
/// name connects to 127.0.0.1.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector<Loopback>,
        Full<Bytes>,
    >,
    h2: bool,
}

impl Client {
    pub fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        if self.h2 {
            if let Some(host) = req.headers_mut().remove(http::header::HOST) {
                let host = host.to_str().unwrap();
                let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
                let port = req.uri().port_u16().unwrap_or(80);
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                *req.uri_mut() = format!("http://{name}:{port}{pq}").parse().unwrap();
            }
        }
        self.inner.request(req)
    }
}

/// A resolver that sends every name to 127.0.0.1.
#[derive(Clone)]
pub struct Loopback;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for Loopback {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(vec![SocketAddr::from(([127, 0, 0, 1], 0))].into_iter()))
    }
}

fn build_client(h2: bool) -> Client {
    let connector = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(Loopback);
    let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector);
    Client { inner, h2 }
}

pub fn client() -> Client {
    build_client(false)
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> Client {
    build_client(true)
}

/// A fetched response: status, headers and the whole body.
pub struct Fetched {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// GET `path` through the proxy with the given Host.
pub async fn get(client: &Client, proxy: &TestProxy, host: &str, path: &str) -> Fetched {
    let req = Request::get(proxy.url(path))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(client, req).await
}

pub async fn send(client: &Client, req: Request<Full<Bytes>>) -> Fetched {
    let resp = client
        .request(req)
        .await
        .expect("request through the proxy");
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Fetched {
        status,
        headers: parts.headers,
        body,
    }
}

/// Sends raw bytes on a fresh connection and returns everything read until the peer
/// closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], timeout: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Streaming bodies, raw backends and small waiting helpers.
// ---------------------------------------------------------------------------------------

/// A body fed chunk by chunk through a channel; it ends when the sender is dropped.
pub struct ChanBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

/// A streaming body and the sender that feeds it (`cap` chunks of buffering).
pub fn body_channel(cap: usize) -> (tokio::sync::mpsc::Sender<Bytes>, ChanBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (tx, ChanBody { rx })
}

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A pooled HTTP/1.1 client whose request bodies stream ([`ChanBody`]).
pub type StreamClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ChanBody,
>;

pub fn stream_client() -> StreamClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A backend that hands each accepted socket (and its 0-based index) to `f`: for exact
/// control over what the proxy's upstream connection sees.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start<F, Fut>(f: F) -> RawBackend
    where
        F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let idx = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(f(stream, idx));
            }
        });
        RawBackend {
            addr,
            connections,
            task,
        }
    }

    pub fn endpoint(&self) -> EndpointSpec {
        EndpointSpec {
            ip: self.addr.ip(),
            port: Some(self.addr.port()),
        }
    }
}

/// One request read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Request line and header fields, without the final blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line, e.g. `GET / HTTP/1.1`.
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// The first value of a header field (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        fields(&self.head, name).first().copied()
    }
}

/// The values of the fields named `name` (any case) in a raw head, in order.
fn fields<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// Reads one request (head and a `Content-Length` body) from `s`, keeping bytes that
/// belong to the next request in `buf`. `None` when the peer closed first.
pub async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    use tokio::io::AsyncReadExt;
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let req = RawRequest {
        head,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < len {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..len).collect();
    Some(RawRequest { body, ..req })
}

/// One response read off a raw client socket by [`read_response`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status line and header fields, without the final blank line.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The trailer field lines of a chunked body.
    pub trailers: Vec<String>,
    /// The whole response as it came on the wire.
    pub wire: Vec<u8>,
}

impl RawResponse {
    pub fn status(&self) -> u16 {
        self.head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// The first value of a header field (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        fields(&self.head, name).first().copied()
    }

    /// Every value of a header field (case-insensitive name).
    pub fn headers(&self, name: &str) -> Vec<&str> {
        fields(&self.head, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one HTTP/1.1 response from `s` as a client would frame it (no body after HEAD,
/// 1xx, 204 and 304; then chunked, Content-Length, or until the close), keeping bytes of
/// the next response in `buf`. `None` when the peer closed before the response was whole;
/// a broken chunked framing panics with what came.
pub async fn read_response(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Option<RawResponse> {
    async fn take(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
        while buf.len() < n {
            fill(s, buf).await?;
        }
        Some(buf.drain(..n).collect())
    }
    async fn line(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                return Some(buf.drain(..i + 2).collect());
            }
            fill(s, buf).await?;
        }
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        fill(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let wire = buf.drain(..end + 4).collect();
    let mut r = RawResponse {
        head,
        body: Vec::new(),
        trailers: Vec::new(),
        wire,
    };
    let status = r.status();
    let chunked = r
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    let length = r
        .header("content-length")
        .map(|v| v.parse::<usize>().unwrap());
    if head_request || status < 200 || status == 204 || status == 304 {
    } else if chunked {
        loop {
            let size_line = line(s, buf).await?;
            r.wire.extend_from_slice(&size_line);
            let text = String::from_utf8_lossy(&size_line);
            let size = text.trim_end().split(';').next().unwrap_or("");
            let Ok(size) = usize::from_str_radix(size, 16) else {
                panic!(
                    "bad chunk size line {text:?} after {:?}",
                    String::from_utf8_lossy(&r.wire)
                );
            };
            if size == 0 {
                loop {
                    let t = line(s, buf).await?;
                    r.wire.extend_from_slice(&t);
                    if t == b"\r\n" {
                        return Some(r);
                    }
                    r.trailers
                        .push(String::from_utf8_lossy(&t).trim_end().to_string());
                }
            }
            let data = take(s, buf, size + 2).await?;
            r.wire.extend_from_slice(&data);
            assert!(
                data.ends_with(b"\r\n"),
                "chunk not ended by CRLF: {:?}",
                String::from_utf8_lossy(&r.wire)
            );
            r.body.extend_from_slice(&data[..size]);
        }
    } else if let Some(n) = length {
        r.body = take(s, buf, n).await?;
        r.wire.extend_from_slice(&r.body);
    } else {
        while fill(s, buf).await.is_some() {}
        r.body = std::mem::take(buf);
        r.wire.extend_from_slice(&r.body);
    }
    Some(r)
}

/// Appends what `s` has to `buf`; `None` when the peer closed (or reset).
pub async fn fill(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

async fn read_line(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(line);
        }
        fill(s, buf).await?;
    }
}

/// Reads one request with strict framing: a head, then a chunked body (decoded) or a
/// Content-Length body. A head with both, or with an unusable length, is `UNFRAMED`.
pub async fn read_framed(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        fill(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut req = RawRequest {
        head,
        body: Vec::new(),
    };
    let unframed = |head: String| {
        Some(RawRequest {
            head: format!("UNFRAMED\r\n{head}"),
            body: Vec::new(),
        })
    };
    let te = req.header("transfer-encoding").map(str::to_string);
    let cl = req.header("content-length").map(str::to_string);
    match (te, cl) {
        (Some(_), Some(_)) => return unframed(req.head),
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => loop {
            let line = read_line(s, buf).await?;
            let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or(""), 16) else {
                return unframed(req.head);
            };
            if size == 0 {
                // Trailers, up to the blank line.
                while !read_line(s, buf).await?.is_empty() {}
                return Some(req);
            }
            while buf.len() < size + 2 {
                fill(s, buf).await?;
            }
            if &buf[size..size + 2] != b"\r\n" {
                return unframed(req.head);
            }
            req.body.extend(buf.drain(..size));
            buf.drain(..2);
        },
        (Some(_), None) => return unframed(req.head),
        (None, Some(cl)) => {
            let Ok(len) = cl.parse::<usize>() else {
                return unframed(req.head);
            };
            while buf.len() < len {
                fill(s, buf).await?;
            }
            req.body = buf.drain(..len).collect();
        }
        (None, None) => {}
    }
    Some(req)
}

/// How a [`Recorder`] reads requests.
#[derive(Clone, Copy)]
pub enum Framing {
    /// A head and a `Content-Length` body ([`read_request`]).
    Lenient,
    /// Chunked or `Content-Length`, nothing else ([`read_framed`]).
    Strict,
}

/// Every request a [`Recorder`] received, in order, as it came.
pub type RequestLog = std::sync::Arc<std::sync::Mutex<Vec<RawRequest>>>;

/// A raw backend that records every request it reads and writes back what `answer` says
/// for it (the connection closes after when `answer` says so).
pub struct Recorder {
    pub backend: RawBackend,
    log: RequestLog,
}

impl Recorder {
    pub async fn start(framing: Framing, answer: fn(&RawRequest) -> (Vec<u8>, bool)) -> Recorder {
        use tokio::io::AsyncWriteExt;
        let log: RequestLog = Default::default();
        let l = log.clone();
        let backend = RawBackend::start(move |mut s, _| {
            let log = l.clone();
            async move {
                let mut buf = Vec::new();
                loop {
                    let req = match framing {
                        Framing::Lenient => read_request(&mut s, &mut buf).await,
                        Framing::Strict => read_framed(&mut s, &mut buf).await,
                    };
                    let Some(req) = req else { return };
                    let (bytes, close) = answer(&req);
                    log.lock().unwrap().push(req);
                    if s.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            }
        })
        .await;
        Recorder { backend, log }
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().unwrap().clone()
    }

    /// The request lines, in order.
    pub fn lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.line().to_string())
            .collect()
    }
}

/// A `200 OK` keep-alive response with `body`.
pub fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .into_bytes()
}

/// Writes a `200 OK` keep-alive response with `body`.
pub async fn write_ok(s: &mut tokio::net::TcpStream, body: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    s.write_all(&ok_response(body)).await
}

/// Sends `bytes` on a fresh connection to `addr` and returns everything read until the
/// proxy closed it. Fails the test if the proxy leaves the connection open for 5 s.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The proxy may close before it read everything: a failed write is fine.
    let _ = s.write_all(bytes).await;
    let (out, closed) = read_until_close(&mut s, std::time::Duration::from_secs(5)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(closed.is_some(), "connection left open after: {out}");
    out
}

/// The status code of the first response in `out` (0 when there is none).
pub fn status_of(out: &str) -> u16 {
    out.strip_prefix("HTTP/1.1 ")
        .or_else(|| out.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Reads from `s` until the peer closes it (EOF or reset) or `limit` passes. Returns what
/// was read and, if the peer closed, how long that took.
pub async fn read_until_close(
    s: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> (Vec<u8>, Option<std::time::Duration>) {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    let res = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    (out, res.ok().map(|()| start.elapsed()))
}

/// Polls `cond` every 10 ms until it holds; false if `limit` passed first.
pub async fn wait_until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The value of one sample line of the proxy's Prometheus exposition, e.g.
/// `interlock_upstream_errors_total{service="web"}`.
pub fn metric(proxy: &TestProxy, series: &str) -> Option<f64> {
    proxy.metrics.render().lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// How many upstream errors the proxy counted for `service` (0 before the first).
pub fn upstream_errors(proxy: &TestProxy, service: &str) -> f64 {
    metric(
        proxy,
        &format!("interlock_upstream_errors_total{{service=\"{service}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A free port on 127.0.0.1 with nothing listening (bound, then released).
pub fn dead_endpoint() -> EndpointSpec {
    EndpointSpec {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        port: Some(free_port()),
    }
}

/// Bounds a future in time with a readable panic.
pub async fn bounded<T>(what: &str, secs: u64, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {secs} s"),
    }
}

/// A child process (the interlock binary, a peer), killed and reaped on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ports `free_port` hands out: below Linux's ephemeral range (32768 and up), so neither
/// the kernel's `bind(0)` nor an outgoing connection's source port can take one between the
/// check and the spawned binary's own bind.
const HANDED_OUT: std::ops::Range<u16> = 20_000..32_000;

/// A port that was free a moment ago and that no other call of this process has returned (a
/// spawned binary needs a number, not a listener). Each process starts at its own place in
/// `HANDED_OUT`, so test binaries running side by side seldom even try the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(HANDED_OUT.end - HANDED_OUT.start);
    let start = std::process::id().wrapping_mul(7919) % span;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = HANDED_OUT.start + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {HANDED_OUT:?}");
}

/// One raw h2c (prior knowledge) client connection to `addr`: its sender, and the task
/// driving the connection (it ends when the connection closes).
pub async fn h2c_connect<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (tx, tokio::spawn(conn))
}
