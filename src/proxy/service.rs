//! The service that serves every request the fast path hands over to hyper (HTTP/1.1 with
//! a streamed or chunked body, upgrades, HTTP/1.0) and every HTTP/2 request (from
//! `h2_server.rs`). It applies the rules of a request as hyper parsed it (Host or `:authority`,
//! transfer codings, refused methods, the body limit), builds the upstream request, and
//! calls the forwarding core (`forward.rs`); upgrades become tunnels (`upgrade.rs`).

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
use crate::config::settings::ProxySettings;
use crate::routing::Route;
use crate::upstream::h1::{self, Outcome};
use crate::upstream::{ClientBody, UpstreamBody};

/// A request after its checks and routing (made by [`start`]); [`Handled::finish`] makes
/// its answer.
pub(super) struct Handled {
    routed: Routed,
    /// Boxed: the access log is off by default, and this sits in every request's future.
    logged: Option<Box<AccessLine>>,
    start: Instant,
}

/// Serves one client request, in two steps. This one does everything up to the upstream
/// exchange at once: the request's checks, its route, its endpoint, the upstream request's
/// head. [`Handled::finish`] then answers (never fails: errors are answered). The caller's
/// future, kept per hyper request or HTTP/2 stream, holds the [`Handled`] and borrows it
/// into `finish`, so the request's state is stored once (an `async fn` taking the request
/// would store it as its argument and again as its body's copy, at each level).
pub(super) fn start(
    proxy: &Proxy,
    client: &ClientInfo,
    peer: SocketAddr,
    req: Request<ClientBody>,
) -> Handled {
    let start = Instant::now();
    let logged = proxy.access_log.then(|| {
        Box::new(AccessLine {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            peer,
        })
    });
    let routed = route(proxy, client, peer.ip(), req);
    if let (Routed::Answer(Some(resp)), Some(line)) = (&routed, &logged) {
        line.log(resp.status(), None, start);
    }
    Handled {
        routed,
        logged,
        start,
    }
}

impl Handled {
    /// The client's answer: the one made by [`start`], or the endpoint's, a tunnel's 101, or
    /// the failure's (retries within the route's budget). Borrows the request's state
    /// instead of taking it, so the caller's future holds it once. Call once.
    pub(super) async fn finish(&mut self, proxy: &Proxy) -> Response<ProxyBody> {
        let start = self.start;
        let forward = match &mut self.routed {
            Routed::Answer(resp) => return resp.take().unwrap_or_else(answered_twice),
            Routed::Forward(forward) => forward,
        };
        let sent = match &mut forward.outbound {
            // Boxed: h2c endpoints are the rarer case, and hyper's client future would make
            // every request's future larger.
            Outbound::H2(request) => match request.take() {
                Some(request) => {
                    Box::pin(forward::forward_h2(
                        proxy,
                        &forward.backend,
                        *request,
                        start,
                    ))
                    .await
                }
                None => return answered_twice(),
            },
            Outbound::H1 {
                req,
                client_upgrade,
            } => {
                let forwarded = std::pin::pin!(forward::forward_h1(
                    proxy,
                    &forward.route,
                    &mut forward.backend,
                    req
                ))
                .await;
                let backend = &forward.backend;
                forwarded.map(|(outcome, active)| match outcome {
                    Outcome::Response(head, body) => {
                        forward::h1_response(backend, head.into_parts(), body, active, start)
                    }
                    Outcome::Upgraded(parts, io, leftover) => {
                        backend
                            .metrics
                            .record(parts.status.as_u16(), start.elapsed().as_secs_f64());
                        match client_upgrade.take() {
                            Some(on) => upgrade::tunnel(proxy, on, parts, io, leftover, backend),
                            None => answer::error(&ProxyError::UpgradeRefused),
                        }
                    }
                })
            }
        };
        let resp =
            sent.unwrap_or_else(|e| forward::failed(&forward.route, &forward.backend, &e, start));
        if let Some(line) = &self.logged {
            line.log(resp.status(), Some(&forward.backend.service), start);
        }
        resp
    }
}

/// The answer of a second [`Handled::finish`] of one request, which its callers never make:
/// a 500 (and a failed assertion in debug builds), not an answer that blames an endpoint.
fn answered_twice() -> Response<ProxyBody> {
    debug_assert!(false, "Handled::finish called twice");
    answer::error(&ProxyError::Internal("the request was answered twice"))
}

/// What the access log says of a request, taken before the request is consumed.
struct AccessLine {
    method: Method,
    path: String,
    peer: SocketAddr,
}

impl AccessLine {
    fn log(&self, status: http::StatusCode, service: Option<&str>, start: Instant) {
        forward::log_access(
            self.peer,
            self.method.as_str(),
            &self.path,
            status,
            service,
            start,
        );
    }
}

/// A request after its checks and routing: answered here (`None` once taken), or on its
/// way to an endpoint.
enum Routed {
    Answer(Option<Response<ProxyBody>>),
    Forward(Forward),
}

/// A request on its way to `backend`, one of its route's endpoints.
struct Forward {
    route: Arc<Route>,
    backend: Backend,
    outbound: Outbound,
}

/// The upstream request, as the endpoint's protocol needs it.
enum Outbound {
    /// An HTTP/1.1 endpoint: the head as it goes on the wire, the body; for an upgrade, the
    /// client side of the tunnel to come.
    H1 {
        req: forward::H1Request,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    },
    /// An h2c endpoint (`None` once sent). Boxed: the rarer case, and every request's
    /// future holds this enum.
    H2(Option<Box<Request<UpstreamBody>>>),
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

/// The request's checks and routing, then its upstream request.
fn route(proxy: &Proxy, client: &ClientInfo, peer_ip: IpAddr, req: Request<ClientBody>) -> Routed {
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
        return Routed::Answer(Some(answer::error(&e)));
    }
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.version == Version::HTTP_11 && headers::is_upgrade_request(&parts.headers);
    // The client side of a tunnel to come (what `hyper::upgrade::on` takes).
    let client_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let host = request_host(parts.version, &parts.uri, &parts.headers);
    let route = match forward::resolve(proxy, host.as_ref().and_then(NamedHost::as_str), pq) {
        Ok(route) => route,
        Err(answer) => return Routed::Answer(Some(*answer)),
    };
    let cookies = parts.headers.get_all(header::COOKIE);
    let Some(backend) = forward::pick(&route, cookies.iter().map(HeaderValue::as_bytes), peer_ip)
    else {
        return Routed::Answer(Some(answer::error(&ProxyError::NoEndpoint)));
    };
    let settings = &proxy.settings;
    let outbound = if route.backends.protocol == BackendProtocol::H2c && !upgrade {
        let host = host.as_ref().and_then(NamedHost::to_value);
        upstream_parts(&mut parts, &route, client, host);
        let body = UpstreamBody::client(body, settings.max_body_bytes, settings.body_read_timeout);
        Outbound::H2(Some(Box::new(Request::from_parts(parts, body))))
    } else {
        Outbound::H1 {
            req: h1_request(settings, client, &route, &parts, body, host, upgrade),
            client_upgrade,
        }
    };
    Routed::Forward(Forward {
        route,
        backend,
        outbound,
    })
}

/// Builds the upstream request in place (h2c endpoints): origin-form target (context root
/// rewritten), the fields of [`headers::upstream_fields`] with `host`, the one the request
/// was routed by (see `request_host`).
fn upstream_parts(
    parts: &mut Parts,
    route: &Route,
    client: &ClientInfo,
    host: Option<HeaderValue>,
) {
    let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let target = route.upstream_path(pq);
    // A rewrite may borrow a suffix of the original target: only the same length means
    // "unchanged".
    let new_pq = match target {
        std::borrow::Cow::Borrowed(t) if t.len() == pq.len() => parts.uri.path_and_query().cloned(),
        std::borrow::Cow::Borrowed(t) => PathAndQuery::try_from(t).ok(),
        std::borrow::Cow::Owned(s) => PathAndQuery::from_maybe_shared(bytes::Bytes::from(s)).ok(),
    };
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

/// The request for an HTTP/1.1 endpoint of `route`: its head written once, straight from
/// the client's fields (a replay sends the same bytes), with `host`, the one it was routed
/// by (an HTTP/2 `:authority` is written as it is, with no field value made of it).
fn h1_request(
    settings: &ProxySettings,
    client: &ClientInfo,
    route: &Route,
    parts: &Parts,
    body: ClientBody,
    host: Option<NamedHost<'_>>,
    upgrade: bool,
) -> forward::H1Request {
    let end_stream = body.is_end_stream();
    let framing = h1::RequestFraming::of(end_stream, body.size_hint().exact());
    let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let fields_len = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let head = headers::upstream_head(
        parts.method.as_str(),
        &route.upstream_path(pq),
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
    );
    forward::H1Request {
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
    }
}
