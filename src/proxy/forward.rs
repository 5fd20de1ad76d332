//! The forwarding core every front-end calls (the HTTP/1.1 fast path in `fast_h1/`, hyper's
//! HTTP/1.1 and our HTTP/2 server, through `service.rs`): resolve the route in the live table
//! (one load per request), pick an endpoint, forward over the endpoint's pool (HTTP/1.1)
//! or shared connection (h2c) with retries within the route's budget, and account for
//! failures (passive health, metrics, the access log). What the client gets when it fails
//! is made in `answer.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header;
use http::uri::Uri;
use http::{Request, Response, StatusCode, Version};
use tokio::time::Instant;

use super::answer;
use super::body::ProxyBody;
use super::error::ProxyError;
use super::headers;
use super::Proxy;
use crate::balance::{self, Backend};
use crate::config::settings::Scheme;
use crate::routing::{normalize_host, Decision, Route};
use crate::upstream::h1::{self, ExchangeError, Outcome};
use crate::upstream::UpstreamBody;

/// One `interlock::access` event.
pub(super) fn log_access(
    peer: SocketAddr,
    method: &str,
    path: &str,
    status: StatusCode,
    service: Option<&str>,
    start: Instant,
) {
    tracing::info!(
        target: "interlock::access",
        client = %peer,
        method,
        path,
        status = status.as_u16(),
        service = service.unwrap_or("-"),
        duration_us = start.elapsed().as_micros() as u64,
    );
}

/// The endpoint for one request on `route` (its sticky key read from the request's Cookie
/// fields or the client's address); deposits in the route's retry budget.
pub(super) fn pick<'c>(
    route: &Route,
    cookies: impl Iterator<Item = &'c [u8]>,
    peer_ip: IpAddr,
) -> Option<Backend> {
    route.backends.budget.deposit();
    let key = balance::affinity_key(&route.backends.sticky, cookies, peer_ip);
    route.backends.pick(key, None).cloned()
}

/// The answer to a forward that failed with `e`; an upstream's fault counts against the
/// endpoint (passive health checks).
pub(super) fn failed(
    route: &Route,
    backend: &Backend,
    e: &ProxyError,
    start: Instant,
) -> Response<ProxyBody> {
    if e.is_upstream() {
        backend.metrics.upstream_error();
        if backend.upstream.record_failure(&route.backends.health) {
            tracing::warn!(
                upstream = backend.upstream.label(),
                "endpoint taken out by passive health checks"
            );
        }
        tracing::warn!(route = %route.id, upstream = backend.upstream.label(), error = %e, cause = ?std::error::Error::source(e), "upstream failure");
    }
    backend
        .metrics
        .record(e.status().as_u16(), start.elapsed().as_secs_f64());
    answer::error(e)
}

/// The route of a request for `host` (as the client sent it) and `pq` (its target), or
/// the answer when it has none: 400 for a missing or malformed host, a redirect, 503. The
/// one table load of a request; the guard is dropped before any await.
pub(super) fn resolve(
    proxy: &Proxy,
    host: Option<&str>,
    pq: &str,
) -> Result<Arc<Route>, Box<Response<ProxyBody>>> {
    let Some(host) = host.and_then(normalize_host) else {
        return Err(Box::new(answer::error(&ProxyError::BadHost)));
    };
    let table = proxy.table.load();
    if proxy.settings.scheme == Scheme::Http {
        // Before routing and redirects: the CA asks over plain HTTP, whatever the labels.
        if let Some(answer) = table.acme_http01(&host, pq) {
            return Err(Box::new(answer::acme_challenge(answer)));
        }
    }
    match table.route(proxy.settings.scheme.as_str(), &host, pq) {
        Decision::Forward(route) => Ok(route.clone()),
        Decision::Redirect { status, location } => {
            Err(Box::new(answer::redirect(status, &location)))
        }
        Decision::NotFound => {
            proxy.metrics.no_route.inc();
            Err(Box::new(answer::error(&ProxyError::NoRoute)))
        }
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub(super) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// A request on its way to an HTTP/1.1 endpoint: what goes on the wire, and whether it
/// may be sent again.
pub(super) struct H1Request {
    pub out: h1::Outgoing,
    /// Idempotent with no body: may be sent again when a reused connection failed.
    pub replayable: bool,
}

/// The answer of an HTTP/1.1 endpoint as sent to the client: counted, without its
/// hop-by-hop fields, its body streaming from the endpoint's connection.
pub(super) fn h1_response(
    backend: &Backend,
    mut parts: http::response::Parts,
    body: h1::ResponseBody,
    active: crate::upstream::ActiveGuard,
    start: Instant,
) -> Response<ProxyBody> {
    backend
        .metrics
        .record(parts.status.as_u16(), start.elapsed().as_secs_f64());
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, ProxyBody::H1(body, active))
}

/// Sends `req` to an HTTP/1.1 endpoint through its pool and reads the answer's head. A
/// refused connect moves to another endpoint; a connection that turns out closed before
/// the request went out gets a fresh one; an idempotent request whose reused connection
/// failed is sent once more (each within the route's retry budget). A route with retries
/// off (`com.docker.lb.retries=off`) makes one attempt on one connection. `backend` is
/// left at the endpoint that answered (or failed last). Both are borrowed from the
/// caller's future, not moved into this one: a request's state is stored once.
pub(super) async fn forward_h1(
    proxy: &Proxy,
    route: &Route,
    backend: &mut Backend,
    req: &mut H1Request,
) -> Result<(Outcome, crate::upstream::ActiveGuard), ProxyError> {
    let settings = &proxy.settings;
    // Retries off: as if the one retry was already taken.
    let mut retried = !route.backends.retries;
    let mut fresh = false;
    loop {
        let active = backend.upstream.track();
        let checkout = if fresh {
            Box::pin(backend.upstream.connect(settings.connect_timeout)).await
        } else {
            std::pin::pin!(backend
                .upstream
                .checkout(settings.connect_timeout, settings.pool_idle_timeout))
            .await
        };
        let pooled = match checkout {
            Ok(c) => c,
            Err(e) => {
                let e = ProxyError::from(e);
                // A refused connect sent nothing: any request may go to another endpoint.
                if !retried
                    && matches!(e, ProxyError::Refused(_))
                    && route.backends.budget.withdraw()
                {
                    if let Some(next) = route.backends.pick(None, Some(&backend.upstream)) {
                        if !Arc::ptr_eq(&next.upstream, &backend.upstream) {
                            retried = true;
                            backend.metrics.upstream_error();
                            backend.upstream.record_failure(&route.backends.health);
                            *backend = next.clone();
                            continue;
                        }
                    }
                }
                return Err(e);
            }
        };
        // A reused connection may have been closed by the upstream just as this request
        // went out (the keep-alive race): an idempotent request gets one replay.
        let may_replay = pooled.reused && req.replayable && !retried;
        let deadline = tokio::time::Instant::now() + settings.upstream_timeout;
        let sent = h1::exchange(pooled.conn, &mut req.out, &backend.upstream, deadline).await;
        let e = match sent {
            Ok(outcome) => {
                backend.upstream.record_success();
                return Ok((outcome, active));
            }
            Err(ExchangeError::TimedOut) => return Err(ProxyError::Timeout),
            Err(ExchangeError::ClientBody(e)) => return Err(e.into()),
            Err(ExchangeError::Unsent(e, unsent))
                if !retried && route.backends.budget.withdraw() =>
            {
                tracing::debug!(upstream = backend.upstream.label(), error = %e, "pooled connection closed before the request was sent; retrying");
                req.out.body = unsent;
                retried = true;
                fresh = true;
                continue;
            }
            Err(ExchangeError::Unsent(e, _) | ExchangeError::Failed(e)) => e,
        };
        if !may_replay || !route.backends.budget.withdraw() {
            return Err(ProxyError::Upstream(e.into()));
        }
        tracing::debug!(upstream = backend.upstream.label(), error = %e, "reused connection failed; retrying idempotent request");
        retried = true;
        fresh = true;
    }
}

/// Forwards over the endpoint's shared HTTP/2 connection (h2c backends, gRPC). Trailers
/// pass through in both directions.
pub(super) async fn forward_h2(
    proxy: &Proxy,
    backend: &Backend,
    mut request: Request<UpstreamBody>,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = &proxy.settings;
    let active = backend.upstream.track();
    let mut tx = match backend.upstream.h2_sender(settings.connect_timeout).await {
        Ok(tx) => tx,
        Err(e) => return Err(e.into()),
    };
    // HTTP/2 carries the target as :scheme/:authority/:path.
    let authority = request
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .or_else(|| http::uri::Authority::try_from(backend.upstream.label()).ok());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = authority;
    uri.path_and_query = request.uri().path_and_query().cloned();
    match Uri::from_parts(uri) {
        Ok(u) => *request.uri_mut() = u,
        Err(_) => return Err(ProxyError::BadHost),
    }
    *request.version_mut() = Version::HTTP_2;
    let resp = match tokio::time::timeout(settings.upstream_timeout, tx.send_request(request)).await
    {
        Err(_) => return Err(ProxyError::Timeout),
        Ok(Err(e)) => {
            return match ProxyError::from_send_error(e) {
                // The client's stream failed: the shared connection is fine.
                Ok(client) => Err(client),
                Err(e) => {
                    backend.upstream.drop_h2(); // the next request gets a fresh connection
                    Err(ProxyError::Upstream(e.into()))
                }
            };
        }
        Ok(Ok(resp)) => resp,
    };
    backend.upstream.record_success();
    backend
        .metrics
        .record(resp.status().as_u16(), start.elapsed().as_secs_f64());
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, ProxyBody::H2(body, active)))
}
