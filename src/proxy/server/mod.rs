//! Our own HTTP/1.1 server for plain requests, bytes in and bytes out, as nginx and HAProxy
//! work: a connection starts here, and each request whose head is plain (HTTP/1.1, no
//! body, no upgrade, see [`request::Head`]) is read in place from the connection's buffer,
//! routed, written upstream straight from its raw fields, and answered with a head encoded
//! once and the body's first bytes in one vectored write. No field map is built for the
//! request, no task or channel sits between the socket and the handler.
//!
//! The first request that is not plain (a body, an upgrade, HTTP/1.0, HTTP/2's preface, a
//! malformed or oversized head, a route to an h2c endpoint) hands the connection, with
//! every byte read and not yet served, to hyper for the rest of its life
//! ([`End::Handoff`]): the general case keeps hyper's validation and answers, and the
//! hardening tests hold for both paths.

mod request;
mod response;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use http::{header, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::connection::{Activity, InFlight};
use super::error::ProxyError;
use super::handler::{self, H1Request};
use super::headers::{self, ClientInfo};
use super::{Proxy, ProxyBody};
use crate::config::labels::BackendProtocol;
use crate::upstream::h1::{Outcome, RequestFraming, ResponseHead};
use crate::wire::Sender;
use request::{Head, Parsed};
use response::Framing;

/// Read buffer size (and what it grows by).
const READ_SIZE: usize = 8 * 1024;

/// How the fast path left a connection.
pub(super) enum End<S> {
    /// Closed, or to be closed.
    Closed,
    /// hyper's from here on, with the bytes read and not served.
    Handoff(S, BytesMut),
}

/// What one plain request turned out to need.
enum Plan {
    /// Forward to an HTTP/1.1 endpoint of `route`.
    Forward(
        Arc<crate::routing::Route>,
        crate::balance::Backend,
        H1Request,
    ),
    /// Answer at once (redirect, no route, bad host, no endpoint).
    Answer(http::Response<ProxyBody>),
    /// Not ours after all (an h2c endpoint).
    Handoff,
}

/// Serves plain requests on `io` until it closes or a request is not plain.
pub(super) async fn serve<S>(
    proxy: &Proxy,
    client: &ClientInfo,
    peer: SocketAddr,
    activity: &Arc<Activity>,
    mut io: S,
) -> End<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &proxy.settings;
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut wbuf = BytesMut::new();
    let mut head = Head::default();
    loop {
        // The next head, whole. A head that came in pieces is parsed again only once its
        // end may have arrived: a client dripping a large head byte by byte costs one
        // scan of it, not one parse per byte.
        let mut scanned: Option<usize> = None;
        loop {
            let may_be_whole = scanned.is_none_or(|from| request::may_end_head(&buf, from));
            if !buf.is_empty() && may_be_whole {
                match head.parse(&buf, settings.max_headers) {
                    Parsed::Plain if head.len <= settings.max_header_bytes => break,
                    Parsed::Partial => {}
                    _ => return End::Handoff(io, buf),
                }
                scanned = Some(buf.len());
            }
            if buf.len() >= settings.max_header_bytes {
                return End::Handoff(io, buf);
            }
            if buf.capacity() - buf.len() < READ_SIZE / 8 {
                buf.reserve(READ_SIZE);
            }
            let read = poll_fn(|cx| {
                // Shutting down or idle for too long: no new request starts (a partial
                // head is dropped, as hyper does).
                if activity.closing.load(Ordering::Relaxed) {
                    return Poll::Ready(Ok(0));
                }
                tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut buf)
            })
            .await;
            if !matches!(read, Ok(n) if n > 0) {
                return End::Closed;
            }
        }
        let in_flight = InFlight::start(activity.clone());
        let start = Instant::now();
        let access = proxy.access_log.then(|| {
            let text =
                |r: &std::ops::Range<usize>| String::from_utf8_lossy(&buf[r.clone()]).into_owned();
            let target = &buf[head.target.clone()];
            let path = target.split(|&b| b == b'?').next().unwrap_or_default();
            (
                text(&head.method),
                String::from_utf8_lossy(path).into_owned(),
            )
        });
        let head_request = &buf[head.method.clone()] == b"HEAD";
        let mut service = None;
        let (reply, body) = match plan(proxy, client, peer, &head, &buf) {
            Plan::Handoff => {
                drop(in_flight);
                return End::Handoff(io, buf);
            }
            Plan::Answer(resp) => {
                buf.advance(head.len);
                made(resp)
            }
            Plan::Forward(route, backend, req) => {
                buf.advance(head.len);
                if access.is_some() {
                    service = Some(backend.service.clone());
                }
                match std::pin::pin!(handler::forward_h1(proxy, &route, backend, req)).await {
                    Ok((Outcome::Response(head, body), active, backend)) => {
                        let elapsed = start.elapsed().as_secs_f64();
                        backend.metrics.record(head.status.as_u16(), elapsed);
                        (Reply::Relayed(head), ProxyBody::H1(body, active))
                    }
                    // Not asked for: the client refuses an unasked 101.
                    Ok((Outcome::Upgraded(..), _, _)) => {
                        made(handler::error_response(&ProxyError::UpgradeRefused))
                    }
                    Err((e, backend)) => made(handler::failed(&route, &backend, &e, start)),
                }
            }
        };
        let status = reply.status();
        let close = head.close
            || activity.closing.load(Ordering::Relaxed)
            || matches!(&reply, Reply::Made(parts) if parts.headers.contains_key(header::CONNECTION));
        let framing = Framing::of(status, head_request, body.size_hint().exact());
        match &reply {
            Reply::Made(parts) => {
                let fields = parts.headers.iter();
                let fields = fields.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
                response::encode(&mut wbuf, status, fields, framing, close);
            }
            Reply::Relayed(head) => {
                let fields = headers::end_to_end(head.fields());
                response::encode(&mut wbuf, status, fields, framing, close);
            }
        }
        drop(reply);
        let body = (framing != Framing::None).then_some(body);
        let mut sender = Sender::new(wbuf.split().freeze(), body, framing == Framing::Chunked);
        if !head.trailers {
            sender = sender.without_trailers();
        }
        let sent = poll_fn(|cx| sender.poll_send(&mut io, cx)).await;
        drop(sender);
        if let Some((method, path)) = access {
            handler::log_access(peer, &method, &path, status, service.as_deref(), start);
        }
        drop(in_flight);
        if let Err(e) = sent {
            tracing::debug!(%peer, error = ?e, "response to the client cut short");
            return End::Closed;
        }
        if close {
            let _ = io.shutdown().await;
            return End::Closed;
        }
    }
}

/// The head of an answer.
enum Reply {
    /// Made by the proxy (redirects, errors).
    Made(http::response::Parts),
    /// From an upstream, its fields as they came.
    Relayed(ResponseHead),
}

impl Reply {
    fn status(&self) -> StatusCode {
        match self {
            Reply::Made(parts) => parts.status,
            Reply::Relayed(head) => head.status,
        }
    }
}

fn made(resp: http::Response<ProxyBody>) -> (Reply, ProxyBody) {
    let (parts, body) = resp.into_parts();
    (Reply::Made(parts), body)
}

/// Routes a plain request and encodes its upstream head; no await, one table load.
fn plan(proxy: &Proxy, client: &ClientInfo, peer: SocketAddr, head: &Head, buf: &[u8]) -> Plan {
    let text = |r: &std::ops::Range<usize>| std::str::from_utf8(&buf[r.clone()]).ok();
    let raw_host = &buf[head.host.clone()];
    // As `HeaderValue::to_str`: visible ASCII only.
    let host = raw_host
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| text(&head.host))
        .flatten();
    let (Some(method), Some(target)) = (text(&head.method), text(&head.target)) else {
        return Plan::Handoff;
    };
    let route = match handler::resolve(proxy, host, target) {
        Ok(route) => route,
        Err(answer) => return Plan::Answer(*answer),
    };
    if route.backends.protocol == BackendProtocol::H2c {
        return Plan::Handoff;
    }
    let fields = || {
        head.fields
            .iter()
            .map(|(n, v)| (&buf[n.clone()], &buf[v.clone()]))
    };
    let cookies = fields()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
        .map(|(_, v)| v);
    let Some(backend) = handler::pick(&route, cookies, peer.ip()) else {
        return Plan::Answer(handler::error_response(&ProxyError::NoEndpoint));
    };
    let upstream_head = headers::upstream_head(
        method,
        &route.upstream_path(target),
        fields,
        head.fields_len,
        Some(raw_host),
        client,
        false,
        RequestFraming::Empty,
    );
    let req = H1Request {
        head: upstream_head,
        body: None,
        framing: RequestFraming::Empty,
        replayable: handler::is_idempotent(method),
        head_request: method == "HEAD",
        upgrade: false,
    };
    Plan::Forward(route, backend, req)
}
