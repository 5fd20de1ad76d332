//! The admin listener (loopback by default, separate from traffic): `/metrics` in the
//! Prometheus text format, `/healthz`, and `/routes`, a JSON view of the live table.
//!
//! `/healthz` answers 200 only while the instance is serving (what `interlock health` and
//! the image's HEALTHCHECK ask): a proxying instance once every provider has delivered its
//! state at least once (a proxy: a snapshot from the controller or its `--state-file`) and
//! the table compiled from it is live; a controller once its snapshot API listens (until
//! its providers' first read it answers proxies 503 by design, and they keep their tables).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// What an instance shows on the admin listener besides metrics. The roles implement it:
/// a proxying instance shows its live table, a controller its snapshot versions.
pub trait Status: Send + Sync {
    /// Once the instance serves, what `/healthz` tells about it after `ok` (e.g.
    /// `generation=3`); `None` while it starts (`/healthz` answers 503).
    fn serving(&self) -> Option<String>;
    /// The JSON answer of `/routes`.
    fn routes(&self) -> serde_json::Value;
}

/// The instance an admin listener shows.
pub type View = Arc<dyn Status>;

/// Binds `addr` and serves the admin endpoints on it until shutdown.
pub async fn start(
    addr: std::net::SocketAddr,
    view: View,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin listener {addr}: {e}"))?;
    tracing::info!(%addr, "admin listening (/metrics, /healthz, /routes)");
    tokio::spawn(serve(listener, view, metrics, shutdown));
    Ok(())
}

/// Serves admin requests until shutdown.
pub async fn serve(listener: TcpListener, view: View, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let mut incoming = crate::accept::Incoming::new(&listener, &shutdown);
    while let Some((stream, _)) = incoming.next().await {
        let view = view.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = answer(&req, &*view, &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, view: &dyn Status, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => match view.serving() {
            Some(what) => reply(StatusCode::OK, "text/plain", format!("ok {what}\n")),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "starting: no routing table yet (waiting for the first state of every provider: \
                 a proxy for a snapshot from its controller or its --state-file)\n"
                    .into(),
            ),
        },
        "/routes" => {
            let body = serde_json::to_string_pretty(&view.routes());
            reply(StatusCode::OK, "application/json", body.unwrap_or_default())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /routes\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}
