//! One request: resolve the route in the live table, pick an endpoint, forward, stream the
//! answer back. Failures become short 502/503/504 answers; idempotent requests get one
//! retry when a stale pooled connection or a refused endpoint made them fail.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::headers::{self, ClientInfo};
use super::{upgrade, Proxy};
use crate::balance::{self, Backend};
use crate::config::labels::BackendProtocol;
use crate::routing::{normalize_host, Decision, Route};
use crate::upstream::h1::{self, ExchangeError, Outcome};
use crate::upstream::{ClientBodyError, UpstreamBody};

/// Serves one client request. Never fails: errors are answered.
pub(super) async fn handle(
    proxy: Arc<Proxy>,
    client: Arc<ClientInfo>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let method = proxy.access_log.then(|| req.method().clone());
    let path = proxy.access_log.then(|| req.uri().path().to_string());
    let (resp, service) =
        std::pin::pin!(route_and_forward(&proxy, &client, peer.ip(), req, start)).await;
    if let (Some(method), Some(path)) = (method, path) {
        log_access(
            peer,
            method.as_str(),
            &path,
            resp.status(),
            service.as_deref(),
            start,
        );
    }
    Ok(resp)
}

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

fn simple(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(super) fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = simple(e.status(), e.body());
    if e.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

pub(super) fn redirect(status: u16, location: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    match HeaderValue::from_str(location) {
        Ok(loc) => {
            let mut resp = simple(status, format!("{} {}\n", status.as_u16(), location));
            resp.headers_mut().insert(header::LOCATION, loc);
            resp
        }
        Err(_) => error_response(&ProxyError::BadHost),
    }
}

/// Where a request names its host.
enum NamedHost<'a> {
    /// The target's authority: HTTP/2's `:authority`, an HTTP/1 absolute-form target.
    Authority(&'a http::uri::Authority),
    /// The Host field.
    Field(&'a HeaderValue),
}

/// The host the client asked for, or `None` when the request has no usable one (400):
/// - more than one Host field is no host at all (RFC 9112 §3.2);
/// - an HTTP/1 absolute-form target's authority wins over Host (RFC 9112 §3.2.2);
/// - HTTP/2 names its host in `:authority`; a Host field beside it must name the same
///   host, else the request is malformed (RFC 9113 §8.3.1). Without `:authority`, Host.
fn request_host<'a>(
    version: Version,
    uri: &'a Uri,
    fields: &'a http::HeaderMap,
) -> Option<NamedHost<'a>> {
    let mut hosts = fields.get_all(header::HOST).iter();
    let (host, more) = (hosts.next(), hosts.next());
    if more.is_some() {
        return None;
    }
    let Some(authority) = uri.authority() else {
        return host.map(NamedHost::Field);
    };
    if version == Version::HTTP_2 {
        let agrees = |h: &HeaderValue| {
            h.as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        };
        if !host.is_none_or(agrees) {
            return None;
        }
    }
    Some(NamedHost::Authority(authority))
}

impl NamedHost<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            NamedHost::Authority(a) => Some(a.as_str()),
            NamedHost::Field(h) => h.to_str().ok(),
        }
    }

    /// The value sent upstream as Host.
    fn to_value(&self) -> Option<HeaderValue> {
        match self {
            NamedHost::Authority(a) => HeaderValue::from_str(a.as_str()).ok(),
            NamedHost::Field(h) => Some((*h).clone()),
        }
    }
}

async fn route_and_forward(
    proxy: &Proxy,
    client: &ClientInfo,
    peer_ip: IpAddr,
    req: Request<Incoming>,
    start: Instant,
) -> (Response<ProxyBody>, Option<Arc<str>>) {
    // A reverse proxy is no tunnel to arbitrary hosts: CONNECT is answered here, never
    // forwarded (forwarded, a 2xx from a backend would turn the connection into a tunnel).
    // TRACE would echo the request, cookies and credentials included, back to a script
    // (cross-site tracing): refused too, as nginx does.
    let refused = if let Err(e) = headers::check_transfer_coding(req.headers()) {
        Some(e)
    } else if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        Some(ProxyError::MethodNotAllowed(req.method().clone()))
    } else {
        // A declared body over the limit is refused before any upstream is involved; a
        // chunked one is cut where it crosses the limit (UpstreamBody).
        proxy
            .settings
            .max_body_bytes
            .filter(|&limit| req.body().size_hint().lower() > limit)
            .map(ProxyError::BodyTooLarge)
    };
    if let Some(e) = refused {
        return (error_response(&e), None);
    }
    let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
    let host = request_host(req.version(), req.uri(), req.headers());
    let route = match resolve(proxy, host.as_ref().and_then(NamedHost::as_str), pq) {
        Ok(route) => route,
        Err(answer) => return (*answer, None),
    };
    let cookies = req.headers().get_all(header::COOKIE);
    let Some(backend) = pick(&route, cookies.iter().map(HeaderValue::as_bytes), peer_ip) else {
        return (error_response(&ProxyError::NoEndpoint), None);
    };
    let service = backend.service.clone();
    let forwarded = std::pin::pin!(forward(proxy, client, &route, backend, req, start)).await;
    let resp = match forwarded {
        Ok(resp) => resp,
        Err((e, backend)) => failed(&route, &backend, &e, start),
    };
    (resp, Some(service))
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
    error_response(e)
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
        return Err(Box::new(error_response(&ProxyError::BadHost)));
    };
    let table = proxy.table.load();
    match table.route(proxy.settings.scheme.as_str(), &host, pq) {
        Decision::Forward(route) => Ok(route.clone()),
        Decision::Redirect { status, location } => Err(Box::new(redirect(status, &location))),
        Decision::NotFound => {
            proxy.metrics.no_route.inc();
            Err(Box::new(error_response(&ProxyError::NoRoute)))
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

/// The host sent upstream: the one the request was routed by (see `request_host`).
fn upstream_host(parts: &Parts) -> Option<HeaderValue> {
    request_host(parts.version, &parts.uri, &parts.headers).and_then(|h| h.to_value())
}

/// Builds the upstream request in place (h2c endpoints): origin-form target (context root
/// rewritten), the fields of [`headers::upstream_fields`].
fn upstream_parts(parts: &mut Parts, route: &Route, client: &ClientInfo) {
    let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let target = route.upstream_path(pq);
    // A rewrite may borrow a suffix of the original target: only the same length means
    // "unchanged".
    let new_pq = match target {
        std::borrow::Cow::Borrowed(t) if t.len() == pq.len() => parts.uri.path_and_query().cloned(),
        std::borrow::Cow::Borrowed(t) => PathAndQuery::try_from(t).ok(),
        std::borrow::Cow::Owned(s) => PathAndQuery::from_maybe_shared(bytes::Bytes::from(s)).ok(),
    };
    let host = upstream_host(parts);
    let mut fields = http::HeaderMap::with_capacity(parts.headers.len() + 4);
    headers::upstream_fields(
        || parts.headers.iter(),
        host.as_ref(),
        client,
        false,
        &mut fields,
    );
    parts.headers = fields;
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(new_pq.unwrap_or_else(|| PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
}

async fn forward(
    proxy: &Proxy,
    client: &ClientInfo,
    route: &Route,
    backend: Backend,
    mut req: Request<Incoming>,
    start: Instant,
) -> Result<Response<ProxyBody>, (ProxyError, Backend)> {
    let settings = &proxy.settings;
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let end_stream = body.is_end_stream();
    if route.backends.protocol == BackendProtocol::H2c && !upgrade {
        upstream_parts(&mut parts, route, client);
        let body = UpstreamBody::client(body, settings.max_body_bytes, settings.body_read_timeout);
        let request = Request::from_parts(parts, body);
        return std::pin::pin!(forward_h2(proxy, backend, request, start)).await;
    }
    let framing = h1::RequestFraming::of(end_stream, body.size_hint().exact());
    // The head is written once, straight from the client's fields: a replay sends the
    // same bytes.
    let head = {
        let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let target = route.upstream_path(pq);
        let host = upstream_host(&parts);
        let fields_len = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        headers::upstream_head(
            parts.method.as_str(),
            &target,
            || parts.headers.iter(),
            fields_len,
            host.as_ref(),
            client,
            upgrade,
            framing,
        )
    };
    let out = H1Request {
        head,
        body: (!end_stream).then(|| {
            UpstreamBody::client(body, settings.max_body_bytes, settings.body_read_timeout)
        }),
        framing,
        replayable: is_idempotent(parts.method.as_str()) && end_stream && !upgrade,
        head_request: parts.method == Method::HEAD,
        upgrade,
    };
    let (outcome, active, backend) = std::pin::pin!(forward_h1(proxy, route, backend, out)).await?;
    Ok(match outcome {
        Outcome::Response(head, body) => {
            h1_response(&backend, head.into_parts(), body, active, start)
        }
        Outcome::Upgraded(parts, io, leftover) => {
            backend
                .metrics
                .record(parts.status.as_u16(), start.elapsed().as_secs_f64());
            match client_upgrade {
                Some(on) => upgrade::tunnel(proxy, on, parts, io, leftover, &backend),
                None => error_response(&ProxyError::UpgradeRefused),
            }
        }
    })
}

/// A request on its way to an HTTP/1.1 endpoint: the head already encoded, the body.
pub(super) struct H1Request {
    pub head: bytes::Bytes,
    pub body: Option<UpstreamBody>,
    pub framing: h1::RequestFraming,
    /// Idempotent with no body: may be sent again when a reused connection failed.
    pub replayable: bool,
    pub head_request: bool,
    pub upgrade: bool,
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
/// failed is sent once more (each within the route's retry budget). Returns the endpoint
/// that answered.
pub(super) async fn forward_h1(
    proxy: &Proxy,
    route: &Route,
    mut backend: Backend,
    req: H1Request,
) -> Result<(Outcome, crate::upstream::ActiveGuard, Backend), (ProxyError, Backend)> {
    let settings = &proxy.settings;
    let H1Request {
        head,
        mut body,
        framing,
        replayable,
        head_request,
        upgrade,
    } = req;
    let mut retried = false;
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
                            backend = next.clone();
                            continue;
                        }
                    }
                }
                return Err((e, backend));
            }
        };
        // A reused connection may have been closed by the upstream just as this request
        // went out (the keep-alive race): an idempotent request gets one replay.
        let may_replay = pooled.reused && replayable && !retried;
        let out = h1::Outgoing {
            head: head.clone(),
            body: body.take(),
            framing,
            head_request,
            upgrade,
        };
        let exchange = h1::exchange(pooled.conn, out, &backend.upstream);
        let sent = tokio::time::timeout(settings.upstream_timeout, exchange).await;
        let e = match sent {
            Ok(Ok(outcome)) => {
                backend.upstream.record_success();
                return Ok((outcome, active, backend));
            }
            Err(_) => return Err((ProxyError::Timeout, backend)),
            Ok(Err(ExchangeError::ClientBody(e))) => return Err((client_body(e), backend)),
            Ok(Err(ExchangeError::Unsent(e, unsent)))
                if !retried && route.backends.budget.withdraw() =>
            {
                tracing::debug!(upstream = backend.upstream.label(), error = %e, "pooled connection closed before the request was sent; retrying");
                body = unsent;
                retried = true;
                fresh = true;
                continue;
            }
            Ok(Err(ExchangeError::Unsent(e, _) | ExchangeError::Failed(e))) => e,
        };
        if !may_replay || !route.backends.budget.withdraw() {
            return Err((ProxyError::Upstream(e.into()), backend));
        }
        tracing::debug!(upstream = backend.upstream.label(), error = %e, "reused connection failed; retrying idempotent request");
        retried = true;
        fresh = true;
    }
}

/// Forwards over the endpoint's shared HTTP/2 connection (h2c backends, gRPC). Trailers
/// pass through in both directions.
async fn forward_h2(
    proxy: &Proxy,
    backend: Backend,
    mut request: Request<UpstreamBody>,
    start: Instant,
) -> Result<Response<ProxyBody>, (ProxyError, Backend)> {
    let settings = &proxy.settings;
    let active = backend.upstream.track();
    let mut tx = match backend.upstream.h2_sender(settings.connect_timeout).await {
        Ok(tx) => tx,
        Err(e) => return Err((e.into(), backend)),
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
        Err(_) => return Err((ProxyError::BadHost, backend)),
    }
    *request.version_mut() = Version::HTTP_2;
    let resp = match tokio::time::timeout(settings.upstream_timeout, tx.send_request(request)).await
    {
        Err(_) => return Err((ProxyError::Timeout, backend)),
        Ok(Err(e)) => {
            return match client_body_error(e) {
                // The client's stream failed: the shared connection is fine.
                Ok(client) => Err((client, backend)),
                Err(e) => {
                    backend.upstream.drop_h2(); // the next request gets a fresh connection
                    Err((ProxyError::Upstream(e.into()), backend))
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

/// The client's body failed while it was sent upstream: 400, 408 or 413, never a 502.
fn client_body(e: ClientBodyError) -> ProxyError {
    match e {
        ClientBodyError::TooLarge(limit) => ProxyError::BodyTooLarge(limit),
        ClientBodyError::Stalled(after) => ProxyError::BodyStalled(after),
        ClientBodyError::Broken(e) => ProxyError::ClientBody(e),
    }
}

/// hyper reports an error of the request body (ours: [`UpstreamBody`]) as a user error
/// whose cause is that body's error: the client's fault, answered 400 or 413. Anything
/// else is the upstream's.
fn client_body_error(e: hyper::Error) -> Result<ProxyError, hyper::Error> {
    if !e.is_user() {
        return Err(e);
    }
    match std::error::Error::source(&e).and_then(|c| c.downcast_ref::<ClientBodyError>()) {
        Some(ClientBodyError::TooLarge(limit)) => Ok(ProxyError::BodyTooLarge(*limit)),
        Some(ClientBodyError::Stalled(after)) => Ok(ProxyError::BodyStalled(*after)),
        Some(ClientBodyError::Broken(_)) => Ok(ProxyError::ClientBody(e)),
        None => Err(e),
    }
}
