//! Shared test harness: real backends and a real proxy on 127.0.0.1 ephemeral ports, run
//! in-process so tests can swap tables directly.
#![allow(dead_code)]

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
use interlock::metrics::Metrics;
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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
        let handler: Handler = Arc::new(move |req| Box::pin(f(req)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let r = r.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestBackend {
            addr,
            connections,
            requests,
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
    }
}

/// `service` with just `com.docker.lb.hosts`.
pub fn host_service(name: &str, hosts: &str, endpoints: &[EndpointSpec]) -> ServiceSpec {
    service(name, &[("com.docker.lb.hosts", hosts)], endpoints)
}

pub fn state(services: Vec<ServiceSpec>) -> DesiredState {
    DesiredState { services }
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

    pub async fn with_settings(state: &DesiredState, settings: ProxySettings) -> TestProxy {
        let metrics = Metrics::new();
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

/// A pooled HTTP/1.1 client (hyper-util legacy client).
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
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
