//! Our HTTP/2 server front-end, on the `h2` crate directly: the connection (after ALPN
//! `h2`, or a cleartext client's preface) and its streams run in the connection's own task,
//! each stream a future in one set, not a task of its own: a request costs no spawn, no
//! cross-task wake-up, and no lock beyond the `h2` crate's own. Each request goes through
//! the same service as hyper's path (`service::start`, then `Handled::finish`); the
//! answer's head and body are written to the stream here, within the client's flow-control
//! window.
//!
//! Keep-alive: when no byte came from the client for [`KEEP_ALIVE`], a PING is sent; when
//! none came for another [`KEEP_ALIVE`] after it, the connection is closed (a client that
//! went away without a FIN or RST does not hold its streams' upstream requests forever).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, Stream};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::activity::{Activity, InFlight};
use super::body::{BoxError, ProxyBody};
use super::headers::ClientInfo;
use super::Proxy;
use crate::upstream::ClientBody;

/// Quiet time after which the client is pinged, and then closed if still quiet.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The server's settings, as hyper's HTTP/2 server had them: 1 MiB windows (the protocol's
/// 64 KiB default throttles a fast client on a long path), 16 KiB frames, at most 400 KiB
/// of answers buffered per connection, `max_streams` concurrent streams, 1,024 streams reset
/// for the client's errors at most (then GOAWAY: a client that keeps provoking resets is
/// flooding).
pub(super) fn builder(max_header_bytes: usize, max_streams: u32) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(max_streams)
        .max_local_error_reset_streams(Some(1024));
    b
}

/// What a stream needs from its connection.
struct Shared {
    proxy: Arc<Proxy>,
    client: Arc<ClientInfo>,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves one HTTP/2 connection until it closes. `io` replays the client's preface.
pub(super) async fn serve<S>(
    proxy: Arc<Proxy>,
    client: Arc<ClientInfo>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    io: S,
) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    activity.h2.store(true, Ordering::Relaxed);
    let handshake = proxy.h2.handshake::<_, Bytes>(io);
    let mut conn = handshake.await?;
    let shared = Shared {
        proxy,
        client,
        peer,
        activity,
    };
    // Each stream's future boxed where it is made: the set would otherwise move the whole
    // future (kilobytes) through several calls into its node (callgrind: +600
    // instructions per request unboxed).
    let mut streams: FuturesUnordered<StreamFuture> = FuturesUnordered::new();
    let mut keep_alive = KeepAlive::new(conn.ping_pong());
    let mut shutting_down = false;
    poll_fn(|cx| {
        if !shutting_down && shared.activity.closing.load(Ordering::Relaxed) {
            shutting_down = true;
            conn.graceful_shutdown();
        }
        loop {
            // New streams (this also reads the client's frames and writes what the streams
            // queued).
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        streams.push(Box::pin(serve_stream(&shared, req, respond)));
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    // Closed (after GOAWAY, once every stream is done): what is left cannot
                    // be sent.
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            // The streams that can move; what they queue is written by the next accept.
            let mut moved = false;
            while let Poll::Ready(Some(())) = Pin::new(&mut streams).poll_next(cx) {
                moved = true;
            }
            if !moved {
                break;
            }
        }
        if let Err(e) = keep_alive.poll(cx, &shared.activity) {
            return Poll::Ready(Err(e));
        }
        Poll::Pending
    })
    .await
}

/// The keep-alive pings: checked at each tick of a [`KEEP_ALIVE`] interval, against the
/// client's reads counted in its activity.
struct KeepAlive {
    ping_pong: Option<h2::PingPong>,
    tick: Interval,
    /// The client's reads at the last tick.
    reads: u64,
    /// A ping is out, not yet answered.
    pinged: bool,
}

impl KeepAlive {
    fn new(ping_pong: Option<h2::PingPong>) -> Self {
        let mut tick = tokio::time::interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        KeepAlive {
            ping_pong,
            tick,
            reads: 0,
            pinged: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, activity: &Activity) -> Result<(), BoxError> {
        let Some(ping_pong) = &mut self.ping_pong else {
            return Ok(());
        };
        if self.pinged {
            // The pong counts as a read too (below); this only consumes it.
            if let Poll::Ready(Ok(_)) = ping_pong.poll_pong(cx) {
                self.pinged = false;
            }
        }
        while self.tick.poll_tick(cx).is_ready() {
            // Every read counts in one of the two (see `Monitored`).
            let reads = activity.progress.load(Ordering::Relaxed)
                + activity.head_reads.load(Ordering::Relaxed);
            let quiet = reads == self.reads;
            self.reads = reads;
            if !quiet {
                continue;
            }
            if self.pinged {
                return Err("the client answered no keep-alive ping".into());
            }
            if ping_pong.send_ping(h2::Ping::opaque()).is_ok() {
                self.pinged = true;
                let _ = ping_pong.poll_pong(cx);
            }
        }
        Ok(())
    }
}

/// Serves one stream: the request through the service, then its answer; the upstream
/// request is dropped (cancelled) when the client resets the stream first.
fn serve_stream(
    shared: &Shared,
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> impl Future<Output = ()> + Send {
    let in_flight = InFlight::start(shared.activity.clone());
    let (parts, recv) = req.into_parts();
    let body = ClientBody::h2(recv, &parts.headers);
    let mut handled = super::service::start(
        &shared.proxy,
        &shared.client,
        shared.peer,
        Request::from_parts(parts, body),
    );
    let proxy = shared.proxy.clone();
    async move {
        let resp = {
            // Made here, pinned where it is made: it borrows the request's state, which
            // this future holds once.
            let mut finish = std::pin::pin!(handled.finish(&proxy));
            let answered = poll_fn(|cx| {
                if let Poll::Ready(resp) = finish.as_mut().poll(cx) {
                    return Poll::Ready(Some(resp));
                }
                // Waiting for the answer: a reset stream needs none.
                respond.poll_reset(cx).map(|_| None)
            })
            .await;
            match answered {
                Some(resp) => resp,
                None => return,
            }
        };
        let (mut head, body) = resp.into_parts();
        finish_head(&mut head.headers, &body);
        let end = body.is_end_stream();
        let Ok(tx) = respond.send_response(Response::from_parts(head, ()), end) else {
            return;
        };
        if !end {
            send_body(body, tx).await;
        }
        drop(in_flight);
    }
}

/// What the head of an answer on HTTP/2 needs that its source may not have given it: our
/// own answers (a small body) say their length and lose `Connection` (no HTTP/2 field);
/// every answer has a Date (RFC 9110 §6.6.1: a proxy adds one where the origin did not).
/// Upstream answers were stripped of connection fields already (`headers.rs`).
fn finish_head(fields: &mut HeaderMap, body: &ProxyBody) {
    if let ProxyBody::Full(data) = body {
        fields.remove(header::CONNECTION);
        let len = data.as_ref().map_or(0, Bytes::len);
        fields.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let header::Entry::Vacant(e) = fields.entry(header::DATE) {
        super::fast_h1::with_date(|d| {
            if let Ok(v) = HeaderValue::from_bytes(d) {
                e.insert(v);
            }
        });
    }
}

/// Writes `body` to the stream within the client's flow-control window: the first piece
/// goes out at once (the `h2` crate holds what the window does not take yet), each next one
/// once the window has room again, so at most one piece is held beyond it. Stops when the
/// client resets the stream; an upstream body that fails resets it (INTERNAL_ERROR).
async fn send_body(mut body: ProxyBody, mut tx: h2::SendStream<Bytes>) {
    let mut first = true;
    loop {
        let frame = poll_fn(|cx| {
            if !first {
                // Room in the window before the next piece is taken.
                tx.reserve_capacity(1);
                while tx.capacity() == 0 {
                    match tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(None),
                        Poll::Pending => return tx.poll_reset(cx).map(|_| None),
                    }
                }
            }
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
                Poll::Pending => tx.poll_reset(cx).map(|_| None),
            }
        })
        .await;
        first = false;
        let frame = match frame {
            // Reset by the client, or the stream is gone.
            None => return,
            Some(None) => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(_))) => {
                tx.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if tx.send_data(data, end).is_err() || end {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    tx.reserve_capacity(0);
                    let _ = tx.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves an HTTP/2 connection whose client answers pings or not, for at most 100 s of
    /// paused time: `Some(Err)` when the keep-alive closed it, after how long.
    async fn keep_alive_with(client_answers: bool) -> Option<(Result<(), BoxError>, Duration)> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let client = tokio::spawn(async move {
            let (_tx, conn) = h2::client::handshake(client_io).await.unwrap();
            if client_answers {
                let _ = conn.await;
            } else {
                // Connected, then silent: its connection is never polled again.
                let _keep = conn;
                std::future::pending::<()>().await;
            }
        });
        let mut conn = h2::server::handshake(server_io).await.unwrap();
        let mut keep_alive = KeepAlive::new(conn.ping_pong());
        let activity = Activity::default();
        let start = Instant::now();
        let served = poll_fn(|cx| {
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(_)) => {}
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            match keep_alive.poll(cx, &activity) {
                Err(e) => Poll::Ready(Err(e)),
                Ok(()) => Poll::Pending,
            }
        });
        let ended = tokio::time::timeout(Duration::from_secs(100), served).await;
        client.abort();
        ended.ok().map(|r| (r, start.elapsed()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_pings_stays_connected() {
        assert!(keep_alive_with(true).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed() {
        let (ended, after) = keep_alive_with(false).await.expect("closed");
        assert!(ended.is_err());
        // Pinged at 20 s of quiet, closed at 40 s.
        assert!(
            after >= 2 * KEEP_ALIVE && after < 2 * KEEP_ALIVE + Duration::from_secs(1),
            "{after:?}"
        );
    }
}
