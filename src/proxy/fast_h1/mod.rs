//! Our own HTTP/1.1 server for plain requests, bytes in and bytes out, as nginx and HAProxy
//! work: a connection starts here, and each request whose head is plain (HTTP/1.1, no
//! body or one of at most [`MAX_BODY`] bytes and known length, no upgrade, see
//! [`request::Head`]) is read in place from the connection's buffer,
//! routed, written upstream straight from its raw fields, and answered with a head encoded
//! once and the body's first bytes in one vectored write. No field map is built for the
//! request, no task or channel sits between the socket and the handler.
//!
//! The first request that is not plain (a chunked or larger body, an upgrade, HTTP/1.0,
//! HTTP/2's preface, a malformed or oversized head, a route to an h2c endpoint) hands the connection, with
//! every byte read and not yet served, to hyper for the rest of its life (or, after
//! HTTP/2's preface, to our HTTP/2 server) ([`End::Handoff`]): the general case keeps
//! hyper's validation and answers, and the hardening tests hold for both paths.

mod request;
mod response;

#[doc(hidden)]
pub(crate) use request::{may_end_head, MAX_FIELDS};

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{header, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::activity::{Activity, InFlight};
use super::answer;
use super::error::ProxyError;
use super::forward::{self, H1Request};
use super::headers::{self, ClientInfo};
use super::{Proxy, ProxyBody};
use crate::config::labels::BackendProtocol;
use crate::upstream::h1::{Outcome, Outgoing, RequestFraming, ResponseHead};
use crate::upstream::UpstreamBody;
use crate::wire::Sender;
pub(crate) use request::{Head, Parsed};
pub(super) use response::with_date;
use response::Framing;

/// Read buffer size (and what it grows by).
const READ_SIZE: usize = 8 * 1024;
/// Largest request body read whole on the fast path; larger ones stream on hyper's.
const MAX_BODY: u64 = 16 * 1024;

/// How the fast path left a connection.
pub(super) enum End {
    /// Closed, or to be closed.
    Closed,
    /// hyper's from here on, with the bytes read and not served.
    Handoff(BytesMut),
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
///
/// Between requests a connection holds no buffer: the read buffer is released once it is
/// empty and the next read goes through the stack ([`poll_fill`]), and each request is
/// served by its own boxed future ([`exchange`]), so the connection's own future stays
/// small while it waits (an idle keep-alive connection costs about 2 KiB, not 13.5).
pub(super) async fn serve<S>(
    proxy: &Proxy,
    client: &ClientInfo,
    peer: &SocketAddr,
    activity: &Arc<Activity>,
    io: &mut S,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &proxy.settings;
    let body_cap = settings
        .max_body_bytes
        .map_or(MAX_BODY, |m| m.min(MAX_BODY));
    let mut buf = BytesMut::new();
    let mut head = Head::default();
    loop {
        match read_head(proxy, activity, body_cap, io, &mut buf, &mut head).await {
            Read::Done => {}
            Read::Closed => return End::Closed,
            Read::Handoff => return End::Handoff(buf),
        }
        let step = Box::pin(exchange(
            proxy, client, *peer, activity, io, &mut buf, &head,
        ));
        match step.await {
            Step::Next => {}
            Step::Closed => return End::Closed,
            Step::Handoff => return End::Handoff(buf),
        }
        if buf.is_empty() {
            // Nothing pipelined: wait for the next request without a buffer.
            buf = BytesMut::new();
        }
        head.fields = Vec::new();
    }
}

/// How one request on the fast path ended.
enum Step {
    /// Answered; the connection stays open.
    Next,
    /// Closed, or to be closed.
    Closed,
    /// Not ours after all: hyper's, with the bytes in the buffer.
    Handoff,
}

/// One plain request whose head `buf` starts with: its body read, forwarded (or answered),
/// the answer sent.
async fn exchange<S>(
    proxy: &Proxy,
    client: &ClientInfo,
    peer: SocketAddr,
    activity: &Arc<Activity>,
    io: &mut S,
    buf: &mut BytesMut,
    head: &Head,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &proxy.settings;
    let in_flight = InFlight::start(activity.clone());
    let start = Instant::now();
    // A small body is read whole before the request goes on (nginx buffers request
    // bodies too); larger ones stream, on hyper's path.
    let whole = head.len + head.body_len as usize;
    let stalled = match read_to(settings.body_read_timeout, io, buf, whole).await {
        BodyRead::Whole => false,
        BodyRead::Stalled => true,
        BodyRead::Closed => return Step::Closed,
    };
    let access = proxy.access_log.then(|| access_fields(head, buf));
    let head_request = &buf[head.method.clone()] == b"HEAD";
    let mut service = None;
    let plan = if stalled {
        let e = ProxyError::BodyStalled(settings.body_read_timeout);
        Plan::Answer(answer::error(&e))
    } else {
        plan(proxy, client, peer, head, buf)
    };
    let (reply, body) = match plan {
        Plan::Handoff => {
            drop(in_flight);
            return Step::Handoff;
        }
        Plan::Answer(resp) => {
            buf.advance(whole.min(buf.len()));
            made(resp)
        }
        Plan::Forward(route, mut backend, mut req) => {
            buf.advance(head.len);
            if head.body_len > 0 {
                let body = buf.split_to(head.body_len as usize).freeze();
                req.out.body = Some(UpstreamBody::Buffered(Some(body)));
            }
            if access.is_some() {
                service = Some(backend.service.clone());
            }
            let forwarded = {
                let _waiting = activity.awaiting_upstream();
                std::pin::pin!(forward::forward_h1(proxy, &route, &mut backend, &mut req)).await
            };
            match forwarded {
                Ok((Outcome::Response(head, body), active)) => {
                    let elapsed = start.elapsed().as_secs_f64();
                    backend.metrics.record(head.status.as_u16(), elapsed);
                    (Reply::Relayed(head), ProxyBody::H1(body, active))
                }
                // Not asked for: the client refuses an unasked 101.
                Ok((Outcome::Upgraded(..), _)) => made(answer::error(&ProxyError::UpgradeRefused)),
                Err(e) => made(forward::failed(&route, &backend, &e, start)),
            }
        }
    };
    let status = reply.status();
    // A stalled body's rest must not be read as a next request.
    let close = head.close
        || stalled
        || activity.closing.load(Ordering::Relaxed)
        || activity.draining.load(Ordering::Relaxed)
        || matches!(&reply, Reply::Made(parts) if parts.headers.contains_key(header::CONNECTION));
    let framing = Framing::of(status, head_request, body.size_hint().exact());
    let mut wbuf = BytesMut::new();
    reply.encode(&mut wbuf, framing, close);
    drop(reply);
    let body = (framing != Framing::None).then_some(body);
    let mut sender = Sender::new(wbuf.freeze(), body, framing == Framing::Chunked);
    if !head.trailers {
        sender = sender.without_trailers();
    }
    let sent = poll_fn(|cx| sender.poll_send(&mut *io, cx)).await;
    drop(sender);
    if let Some((method, path)) = access {
        forward::log_access(peer, &method, &path, status, service.as_deref(), start);
    }
    drop(in_flight);
    if let Err(e) = sent {
        tracing::debug!(%peer, error = ?e, "response to the client cut short");
        return Step::Closed;
    }
    if close {
        let _ = io.shutdown().await;
        return Step::Closed;
    }
    Step::Next
}

/// How reading a head went.
enum Read {
    Done,
    /// The head (or what came instead) is hyper's.
    Handoff,
    Closed,
}

/// How reading a body went.
enum BodyRead {
    Whole,
    /// No byte came for the body read timeout.
    Stalled,
    Closed,
}

/// Reads until `buf` starts with a whole plain head, parsed into `head`. A head that came
/// in pieces is parsed again only once its end may have arrived: a client dripping a large
/// head byte by byte costs one scan of it, not one parse per byte.
async fn read_head<S: AsyncRead + Unpin>(
    proxy: &Proxy,
    activity: &Activity,
    body_cap: u64,
    io: &mut S,
    buf: &mut BytesMut,
    head: &mut Head,
) -> Read {
    let settings = &proxy.settings;
    let mut scanned: Option<usize> = None;
    loop {
        let may_be_whole = scanned.is_none_or(|from| request::may_end_head(buf, from));
        if !buf.is_empty() && may_be_whole {
            match head.parse(buf, settings.max_headers) {
                Parsed::Plain
                    if head.len <= settings.max_header_bytes && head.body_len <= body_cap =>
                {
                    return Read::Done
                }
                Parsed::Partial => {}
                _ => return Read::Handoff,
            }
            scanned = Some(buf.len());
        }
        if buf.len() >= settings.max_header_bytes {
            return Read::Handoff;
        }
        let read = poll_fn(|cx| {
            // Shutting down or idle for too long: no new request starts (a partial head
            // is dropped, as hyper does).
            if activity.closing.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(0));
            }
            poll_fill(io, cx, buf)
        })
        .await;
        if !matches!(read, Ok(n) if n > 0) {
            return Read::Closed;
        }
    }
}

/// Reads until `buf` holds `len` bytes, or no byte came for `stall`.
async fn read_to<S: AsyncRead + Unpin>(
    stall: Duration,
    io: &mut S,
    buf: &mut BytesMut,
    len: usize,
) -> BodyRead {
    while buf.len() < len {
        let read = poll_fn(|cx| poll_fill(io, cx, buf));
        match tokio::time::timeout(stall, read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return BodyRead::Closed,
            Err(_) => return BodyRead::Stalled,
        }
    }
    BodyRead::Whole
}

thread_local! {
    /// Where a connection without a buffer reads (see [`poll_fill`]): zeroed once per
    /// thread, so a read into it zeroes nothing (a socket not yet registered with the
    /// runtime is read by safe code, which needs initialized room: 4 KiB zeroed per read
    /// into fresh room).
    static SCRATCH: RefCell<[u8; READ_SIZE]> = const { RefCell::new([0; READ_SIZE]) };
}

/// Reads what `io` has into `buf`, with room for a read of [`READ_SIZE`] at least an
/// eighth free; `Ok(0)` is the end of the stream. A `buf` without room (a connection
/// waiting for its next request holds none) is read into through the thread's scratch
/// room, and gets its room only when bytes came.
fn poll_fill<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        return SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(io).poll_read(cx, &mut read))?;
            let got = read.filled();
            if !got.is_empty() {
                // Room for what came, and for a small body after it.
                *buf = BytesMut::with_capacity(got.len().max(READ_SIZE / 8));
                buf.extend_from_slice(got);
            }
            Poll::Ready(Ok(got.len()))
        });
    }
    if buf.capacity() - buf.len() < READ_SIZE / 8 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The method and path (without the query) of the access log, copied out of the head.
fn access_fields(head: &Head, buf: &[u8]) -> (String, String) {
    let target = &buf[head.target.clone()];
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    (
        String::from_utf8_lossy(&buf[head.method.clone()]).into_owned(),
        String::from_utf8_lossy(path).into_owned(),
    )
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

    /// Writes the head into `w` (see [`response::encode`]).
    fn encode(&self, w: &mut BytesMut, framing: Framing, close: bool) {
        let status = self.status();
        match self {
            Reply::Made(parts) => {
                let fields = parts.headers.iter();
                let fields = fields.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
                response::encode(w, status, fields, framing, close);
            }
            Reply::Relayed(head) => {
                let fields = headers::end_to_end(head.fields());
                response::encode(w, status, fields, framing, close);
            }
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
    let route = match forward::resolve(proxy, host, target) {
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
    let Some(backend) = forward::pick(&route, cookies, peer.ip()) else {
        return Plan::Answer(answer::error(&ProxyError::NoEndpoint));
    };
    let framing = RequestFraming::of(head.body_len == 0, Some(head.body_len));
    let upstream_head = headers::upstream_head(
        method,
        &route.upstream_path(target),
        fields,
        head.fields_len,
        Some(raw_host),
        client,
        false,
        framing,
    );
    // The body (read whole) is the caller's to attach.
    let req = H1Request {
        out: Outgoing {
            head: upstream_head,
            body: None,
            framing,
            head_request: method == "HEAD",
            upgrade: false,
        },
        replayable: forward::is_idempotent(method) && head.body_len == 0,
    };
    Plan::Forward(route, backend, req)
}
