//! The controller's snapshot API, served over mutual TLS.
//!
//! `GET /v1/snapshot?cluster=NAME&wait=SECONDS` with `If-None-Match: <etag>` is a long
//! poll: it answers at once when the cluster's snapshot differs from the one the proxy
//! holds, else when it changes, else `304 Not Modified` after `wait` seconds. The client
//! certificate must name the cluster (see [`crate::tls::control`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use rustls::pki_types::CertificateDer;
use rustls::server::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::feeds::Feeds;
use crate::metrics::{Metrics, Part};
use crate::shutdown::Shutdown;
use crate::snapshot::valid_cluster_name;
use crate::tls::control::{authorizes, identity};

/// The longest long poll a proxy may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API until shutdown. The API's metric families are exported at once, before
/// the returned future first runs, so the admin listener started next already shows them.
pub fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    feeds: Arc<Feeds>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + 'static {
    metrics.export(Part::ControllerServer);
    accept_loop(listener, tls, feeds, metrics, shutdown)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    feeds: Arc<Feeds>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut incoming = crate::accept::Incoming::new(&listener, &shutdown);
    while let Some((stream, peer)) = incoming.next().await {
        let (acceptor, feeds, metrics, shutdown) = (
            acceptor.clone(),
            feeds.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics.control_rejected_handshakes.inc();
                    tracing::warn!(%peer, error = %e, "control channel handshake refused");
                    return;
                }
                Err(_) => return,
            };
            // The verifier requires a client certificate, so there is one.
            let Some(cert) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned())
            else {
                return;
            };
            let cert = Arc::new(cert);
            let svc = service_fn(move |req| {
                let (feeds, metrics, shutdown, cert) = (
                    feeds.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                    cert.clone(),
                );
                async move { Ok::<_, Infallible>(answer(req, &cert, &feeds, &metrics, shutdown).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `cluster` and `wait` from the query string.
fn query(req: &Request<Incoming>) -> (String, Duration) {
    let mut cluster = String::new();
    let mut wait = Duration::ZERO;
    for pair in req.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("cluster", v)) => cluster = v.to_string(),
            Some(("wait", v)) => {
                wait = v
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_WAIT);
            }
            _ => {}
        }
    }
    (cluster, wait)
}

async fn answer(
    req: Request<Incoming>,
    cert: &CertificateDer<'static>,
    feeds: &Feeds,
    metrics: &Metrics,
    shutdown: Shutdown,
) -> Response<Full<Bytes>> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "ok\n"),
        (&Method::GET, "/v1/snapshot") => {
            let (cluster, wait) = query(&req);
            if !valid_cluster_name(&cluster) {
                reply(
                    StatusCode::BAD_REQUEST,
                    format!("cluster {cluster:?}: expected letters, digits, `-`, `_` and `.`\n"),
                )
            } else if !authorizes(cert, &cluster) {
                tracing::warn!(%cluster, "a proxy asked for a cluster its certificate does not name");
                reply(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this client certificate is not valid for cluster {cluster:?}: it must name {}\n",
                        identity(&cluster)
                    ),
                )
            } else {
                let held = req
                    .headers()
                    .get(header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let gzip = req
                    .headers()
                    .get_all(header::ACCEPT_ENCODING)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|c| c.split(';').next().unwrap_or("").trim() == "gzip");
                snapshot(
                    feeds,
                    metrics,
                    &cluster,
                    held.as_deref(),
                    wait,
                    gzip,
                    &shutdown,
                )
                .await
            }
        }
        (_, "/healthz" | "/v1/snapshot") => reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    };
    metrics
        .control_responses
        .with_label_values(&[resp.status().as_str()])
        .inc();
    resp
}

/// One long poll counted in `interlock_controller_waiting_proxies` for as long as it
/// lives, however it ends (answered, or dropped with its connection).
struct Parked<'a>(&'a IntGauge);

impl<'a> Parked<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn snapshot(
    feeds: &Feeds,
    metrics: &Metrics,
    cluster: &str,
    held: Option<&str>,
    wait: Duration,
    gzip: bool,
    shutdown: &Shutdown,
) -> Response<Full<Bytes>> {
    let Some(mut rx) = feeds.subscribe(cluster) else {
        let mut resp = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller has not read its providers yet; keep the last good routes\n",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    };
    if held == Some(rx.borrow_and_update().etag.as_str()) && !wait.is_zero() {
        // hyper drops this future when the proxy goes away mid-poll: the guard, not a
        // statement after the await, takes the poll off the gauge.
        let _parked = Parked::new(&metrics.control_waiting);
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => {}
        }
    }
    let current = rx.borrow().clone();
    let etag = header::HeaderValue::from_str(&current.etag)
        .unwrap_or(header::HeaderValue::from_static("\"\""));
    let mut resp = if held == Some(current.etag.as_str()) {
        reply(StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        let body = if gzip {
            current.gzip.clone()
        } else {
            current.body.clone()
        };
        let mut r = reply(StatusCode::OK, body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if gzip {
            r.headers_mut().insert(
                header::CONTENT_ENCODING,
                header::HeaderValue::from_static("gzip"),
            );
        }
        r
    };
    resp.headers_mut().insert(
        header::VARY,
        header::HeaderValue::from_static("accept-encoding"),
    );
    resp.headers_mut().insert(header::ETAG, etag);
    resp
}
