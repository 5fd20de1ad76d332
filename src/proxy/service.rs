//! The service that serves every request the fast path hands over to hyper (HTTP/1.1 with
//! a streamed or chunked body, upgrades, HTTP/1.0) and every HTTP/2 request (from
//! `h2_server.rs`). It applies the rules of a request as hyper parsed it (Host or `:authority`,
//! transfer codings, refused methods, the body limit), builds the upstream request, and
//! calls the forwarding core (`forward.rs`); upgrades become tunnels (`upgrade.rs`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::headers::{self, ClientInfo};
use super::{answer, forward, upgrade, Proxy};
use crate::balance::Backend;
use crate::config::labels::BackendProtocol;
use crate::routing::Route;
use crate::upstream::h1::{self, Outcome};
use crate::upstream::{ClientBody, UpstreamBody};

/// Serves one client request. Never fails: errors are answered.
pub(super) async fn handle(
    proxy: Arc<Proxy>,
    client: Arc<ClientInfo>,
    peer: SocketAddr,
    req: Request<ClientBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let method = proxy.access_log.then(|| req.method().clone());
    let path = proxy.access_log.then(|| req.uri().path().to_string());
    let (resp, service) =
        std::pin::pin!(route_and_forward(&proxy, &client, peer.ip(), req, start)).await;
    if let (Some(method), Some(path)) = (method, path) {
        forward::log_access(
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
    fn as_bytes(&self) -> &[u8] {
        match self {
            NamedHost::Authority(a) => a.as_str().as_bytes(),
            NamedHost::Field(h) => h.as_bytes(),
        }
    }

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
    req: Request<ClientBody>,
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
        return (answer::error(&e), None);
    }
    let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
    let host = request_host(req.version(), req.uri(), req.headers());
    let route = match forward::resolve(proxy, host.as_ref().and_then(NamedHost::as_str), pq) {
        Ok(route) => route,
        Err(answer) => return (*answer, None),
    };
    let cookies = req.headers().get_all(header::COOKIE);
    let Some(backend) = forward::pick(&route, cookies.iter().map(HeaderValue::as_bytes), peer_ip)
    else {
        return (answer::error(&ProxyError::NoEndpoint), None);
    };
    let service = backend.service.clone();
    let forwarded = std::pin::pin!(send_upstream(proxy, client, &route, backend, req, start)).await;
    let resp = match forwarded {
        Ok(resp) => resp,
        Err((e, backend)) => forward::failed(&route, &backend, &e, start),
    };
    (resp, Some(service))
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

async fn send_upstream(
    proxy: &Proxy,
    client: &ClientInfo,
    route: &Route,
    backend: Backend,
    mut req: Request<ClientBody>,
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
        return std::pin::pin!(forward::forward_h2(proxy, backend, request, start)).await;
    }
    let framing = h1::RequestFraming::of(end_stream, body.size_hint().exact());
    // The head is written once, straight from the client's fields: a replay sends the
    // same bytes.
    let head = {
        let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let target = route.upstream_path(pq);
        // The routed host as bytes: an HTTP/2 `:authority` is written as it is, with no
        // field value made of it.
        let host = request_host(parts.version, &parts.uri, &parts.headers);
        let fields_len = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        headers::upstream_head(
            parts.method.as_str(),
            &target,
            || {
                parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            },
            fields_len,
            host.as_ref().map(NamedHost::as_bytes),
            client,
            upgrade,
            framing,
        )
    };
    let out = forward::H1Request {
        out: h1::Outgoing {
            head,
            body: (!end_stream).then(|| {
                UpstreamBody::client(body, settings.max_body_bytes, settings.body_read_timeout)
            }),
            framing,
            head_request: parts.method == Method::HEAD,
            upgrade,
        },
        replayable: forward::is_idempotent(parts.method.as_str()) && end_stream && !upgrade,
    };
    let (outcome, active, backend) =
        std::pin::pin!(forward::forward_h1(proxy, route, backend, out)).await?;
    Ok(match outcome {
        Outcome::Response(head, body) => {
            forward::h1_response(&backend, head.into_parts(), body, active, start)
        }
        Outcome::Upgraded(parts, io, leftover) => {
            backend
                .metrics
                .record(parts.status.as_u16(), start.elapsed().as_secs_f64());
            match client_upgrade {
                Some(on) => upgrade::tunnel(proxy, on, parts, io, leftover, &backend),
                None => answer::error(&ProxyError::UpgradeRefused),
            }
        }
    })
}
