//! One client connection: plain HTTP/1.1 requests on our fast path (`fast_h1/`), then, from
//! the first other request on, hyper (HTTP/1.1), or our HTTP/2 server (`h2_server.rs`) after
//! ALPN `h2` or a cleartext client's preface; a watchdog for
//! idle connections and slow request heads, and graceful close on shutdown (every
//! front-end reads `Activity::closing`).
//!
//! The request-head timeout is the watchdog's, not hyper's: hyper's HTTP/1 header timer
//! also runs while a keep-alive connection waits for its next request, so it closed idle
//! keep-alive connections after `--header-read-timeout` instead of `--idle-timeout`
//! (hyperium/hyper#3828), and it costs a timer per request. The watchdog starts the head
//! clock when the first byte of a head arrives.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Interval};

use super::activity::{Activity, InFlight, Monitored};
use super::body::BoxError;
use super::fast_h1::End;
use super::headers::ClientInfo;
use super::rewind::Rewind;
use super::{Proxy, ProxyBody};
use crate::config::settings::ProxySettings;
use crate::shutdown::{Shutdown, TrackGuard};
use crate::upstream::ClientBody;

/// Serves one accepted connection until it closes. `h2`: TLS negotiated ALPN `h2`, so
/// only HTTP/2 is served (see `preface.rs`).
///
/// This future is what every idle connection holds (its task's allocation is the future plus
/// ~100 bytes, aligned to 128 bytes): at 1,032 bytes on a plain connection (release build,
/// x86_64) the task takes a 1,280-byte block; past 1,048 bytes it takes a 1,536-byte one,
/// ~0.25 KiB more per idle connection (`cargo bench --bench idle`).
pub(super) async fn serve<S>(
    proxy: Arc<Proxy>,
    stream: S,
    peer: SocketAddr,
    shutdown: Shutdown,
    _guard: TrackGuard,
    h2: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    proxy.metrics.open_connections.inc();
    let activity = Arc::new(Activity::default());
    let io = Monitored {
        inner: stream,
        activity: activity.clone(),
        first_read: true,
    };
    let client = Arc::new(ClientInfo {
        ip: super::headers::ip_value(peer.ip()),
        proto: HeaderValue::from_static(proxy.settings.scheme.as_str()),
    });
    let svc = {
        let proxy = proxy.clone();
        let activity = activity.clone();
        let client = client.clone();
        service_fn(move |req| {
            // In flight from the request head until the response body is dropped (sent,
            // or abandoned with the connection).
            let in_flight = InFlight::start(activity.clone());
            // Routed now, answered in the future below (see `service::start`).
            let mut handled =
                super::service::start(&proxy, &client, peer, req.map(ClientBody::Hyper));
            let proxy = proxy.clone();
            // Boxed: hyper moves this future several times per request (out of the call,
            // into its connection's state); a box moves as a pointer.
            Box::pin(async move {
                let resp = handled.finish(&proxy).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            })
        })
    };
    // Plain HTTP/1.1 requests on our fast path; from the first other one on, hyper, or our
    // HTTP/2 server when the client sent HTTP/2's preface.
    let conn = async {
        // The stream stays here; the fast path and the preface borrow it (moved into them,
        // it would be stored once more in each of their futures).
        let mut io = io;
        let (read, h2) = if h2 {
            match super::preface::expect(&activity.closing, &mut io).await {
                Some(read) => (read, true),
                None => return Ok::<(), BoxError>(()),
            }
        } else {
            match super::fast_h1::serve(&proxy, &client, &peer, &activity, &mut io).await {
                End::Closed => return Ok::<(), BoxError>(()),
                End::Handoff(mut read) => {
                    match super::preface::detect(&activity.closing, &mut io, &mut read).await {
                        Some(h2) => (read, h2),
                        None => return Ok(()),
                    }
                }
            }
        };
        let io = Rewind::new(read.freeze(), io);
        if h2 {
            // Boxed, as hyper's connection below: this future's size is what every
            // connection costs while it waits on the fast path.
            let server =
                super::h2_server::serve(proxy.clone(), client.clone(), peer, activity.clone(), io);
            return Box::pin(server).await;
        }
        let hyper = async {
            let io = TokioIo::new(io);
            let conn = proxy.http1.serve_connection(io, svc).with_upgrades();
            tokio::pin!(conn);
            let mut shutting_down = false;
            std::future::poll_fn(|cx| {
                if !shutting_down && activity.closing.load(Ordering::Relaxed) {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
                conn.as_mut().poll(cx).map_err(BoxError::from)
            })
            .await
        };
        Box::pin(hyper).await
    };
    tokio::pin!(conn);

    // The timeouts are read from the settings where they are used, not copied here: what
    // this future holds, every idle connection holds (`benches/idle.rs`).
    // The watchdog (shutdown signal and idle tick) is armed when the connection first
    // waits for its client, or sees shutdown: a connection whose request was there when
    // it was accepted and that closes after its answer (`Connection: close`) waits only
    // for its upstream, and never needs a timer or a place among the signal's waiters.
    let mut watchdog = Watchdog::default();
    let mut seen = 0;
    let mut quiet_since: Option<Instant> = None;
    // Since when a request head is pending.
    let mut head_since: Option<Instant> = None;
    let mut closing = false;
    // Shutdown seen; and until when a request being sent then may still come whole.
    let mut stopping = false;
    let mut grace_until: Option<Instant> = None;
    // Created before the signal can fire unseen: a trigger after this wakes it, one before
    // is seen by `is_triggered`.
    let shutdown_wait = shutdown.notified();
    tokio::pin!(shutdown_wait);
    // The watchdog is polled only when its own waker fired, not on each of the several
    // wake-ups of this task per request. The gate lives in the activity: one allocation
    // less per connection.
    let gate = activity.clone();
    loop {
        let event = std::future::poll_fn(|cx| {
            // The watchdog first: a shutdown that woke the task together with an upstream's
            // answer is seen before that answer is framed (it then says Connection: close).
            if !closing {
                if !watchdog.is_armed() && shutdown.is_triggered() {
                    quiet_since = Some(watchdog.arm(&proxy.settings));
                }
                if let Some(event) =
                    watchdog.poll(cx, &gate, stopping, &shutdown, shutdown_wait.as_mut())
                {
                    return Poll::Ready(event);
                }
            }
            let polled = conn.as_mut().poll(cx);
            if polled.is_pending()
                && !closing
                && !watchdog.is_armed()
                && !activity.awaiting_upstream.load(Ordering::Relaxed)
            {
                // Waiting for the client from here on (or for hyper's or HTTP/2's
                // connection, which may): the watchdog is needed, and polled once to arm.
                quiet_since = Some(watchdog.arm(&proxy.settings));
                if let Some(event) =
                    watchdog.poll(cx, &gate, stopping, &shutdown, shutdown_wait.as_mut())
                {
                    return Poll::Ready(event);
                }
            }
            polled.map(Event::Ended)
        })
        .await;
        match event {
            Event::Ended(res) => {
                if let Err(e) = res {
                    match super::misbehaviour::h2_goaway(&*e) {
                        Some(reason) => proxy.misbehaviour.record(&proxy.metrics, peer, reason),
                        None => {
                            tracing::debug!(%peer, error = %e, "client connection ended with an error")
                        }
                    }
                }
                break;
            }
            Event::Shutdown => {
                stopping = true;
                // A client that just connected (the listener's last ones) or is sending a
                // request has it answered, then the connection closes: only connections
                // idle between requests close at once (their clients send again, as after
                // any keep-alive close).
                let untouched = activity.progress.load(Ordering::Relaxed) == 0;
                if untouched || head_pending(&activity) {
                    activity.draining.store(true, Ordering::Relaxed);
                    grace_until = Some(Instant::now() + REQUEST_GRACE);
                } else {
                    closing = true;
                    activity.closing.store(true, Ordering::Relaxed);
                }
            }
            Event::Tick(now) => {
                if grace_until.is_some_and(|until| now >= until)
                    && activity.in_flight.load(Ordering::Relaxed) == 0
                {
                    // The grace is over and no request came: close.
                    closing = true;
                    activity.closing.store(true, Ordering::Relaxed);
                    continue;
                }
                let head_pending = head_pending(&activity);
                let current = activity.progress.load(Ordering::Relaxed);
                if current != seen {
                    seen = current;
                    quiet_since = Some(now);
                    head_since = head_pending.then_some(now);
                    continue;
                }
                if !head_pending {
                    head_since = None;
                } else if now.duration_since(*head_since.get_or_insert(now))
                    >= proxy.settings.header_read_timeout
                {
                    // No request is in flight by definition: nothing to drain.
                    tracing::debug!(%peer, "closing client connection: request head too slow");
                    break;
                }
                let quiet_since = *quiet_since.get_or_insert(now);
                if now.duration_since(quiet_since) >= proxy.settings.idle_timeout {
                    tracing::debug!(%peer, "closing idle client connection");
                    closing = true;
                    activity.closing.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    proxy.metrics.open_connections.dec();
}

/// The connection's watchdog: its idle tick (none until the connection first waits for
/// its client or sees shutdown), polled with a waker that marks the gate when the tick or
/// the shutdown signal fires.
#[derive(Default)]
struct Watchdog {
    tick: Option<Interval>,
}

impl Watchdog {
    fn is_armed(&self) -> bool {
        self.tick.is_some()
    }

    /// Arms the idle tick, first due one period from now, and returns now. The first tick
    /// is not immediate: that would arm a timer 1 ms out, earlier than the runtime's planned
    /// wake-up, which makes the timer driver wake the I/O driver (an eventfd write and a
    /// spurious epoll return) for nothing: there is nothing to check yet.
    fn arm(&mut self, settings: &ProxySettings) -> Instant {
        // A quarter of the shorter timeout: each is enforced within 1.25x of its length.
        let period = (settings.idle_timeout.min(settings.header_read_timeout) / 4)
            .max(Duration::from_millis(50));
        let now = Instant::now();
        self.tick.get_or_insert_with(|| {
            let mut tick = tokio::time::interval_at(now + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        now
    }

    /// What fired, if the watchdog is armed and the gate says it was woken (or it never
    /// was polled). `stopping`: shutdown already seen, the signal need not be polled again.
    fn poll<F: Future<Output = ()>, E>(
        &mut self,
        cx: &Context<'_>,
        gate: &Arc<Activity>,
        stopping: bool,
        signal: &Shutdown,
        waiter: Pin<&mut F>,
    ) -> Option<Event<E>> {
        let tick = self.tick.as_mut()?;
        let gate_waker;
        let waker = match gate.enter(cx.waker())? {
            Via::Task => cx.waker(),
            Via::Gate => {
                // Made for this poll (what it registers keeps a clone): one waker less
                // held by every idle connection.
                gate_waker = Waker::from(gate.clone());
                &gate_waker
            }
        };
        let mut wcx = Context::from_waker(waker);
        // The flag too: a connection accepted after the trigger (one of the listener's last)
        // holds a waiter that was created too late to be woken.
        let event = if !stopping && (signal.is_triggered() || waiter.poll(&mut wcx).is_ready()) {
            Event::Shutdown
        } else if let Poll::Ready(now) = tick.poll_tick(&mut wcx) {
            Event::Tick(now)
        } else {
            return None;
        };
        // Poll the watchdog again next time: it must re-arm what just fired.
        gate.gate_quiet.store(false, Ordering::Relaxed);
        Some(event)
    }
}

/// How long, once shutdown starts, a connection that just opened or is sending a request
/// may take to send it whole (checked at the watchdog's ticks).
const REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Bytes of a request head arrived since the last request started or ended, and none is in
/// flight: a head is being sent. HTTP/2 frames between requests (pings, settings) are not
/// heads.
fn head_pending(activity: &Activity) -> bool {
    activity.head_reads.load(Ordering::Relaxed)
        != activity.heads_at_boundary.load(Ordering::Relaxed)
        && activity.in_flight.load(Ordering::Relaxed) == 0
        && !activity.h2.load(Ordering::Relaxed)
}

/// Which waker the watchdog is polled with.
enum Via {
    /// The task's own (its waker changed: never the case for a spawned task).
    Task,
    /// The gate's, which marks the gate before it wakes the task.
    Gate,
}

/// What woke the connection's loop.
enum Event<E> {
    Ended(Result<(), E>),
    Shutdown,
    Tick(Instant),
}

/// The gate (in [`Activity`]): wakes the connection task on behalf of the watchdog and
/// remembers that it did.
impl Activity {
    /// Which waker to poll the watchdog with, or `None` when it need not be polled: it has
    /// not been woken since its last poll. A task whose waker changed (never the case for a
    /// spawned task) polls the watchdog every time, with its own waker.
    fn enter(&self, task: &Waker) -> Option<Via> {
        let stored = self.gate_task.get_or_init(|| task.clone());
        if !stored.will_wake(task) {
            return Some(Via::Task);
        }
        (!self.gate_quiet.swap(true, Ordering::AcqRel)).then_some(Via::Gate)
    }
}

impl Wake for Activity {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.gate_quiet.store(false, Ordering::Release);
        if let Some(task) = self.gate_task.get() {
            task.wake_by_ref();
        }
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
struct Tracked {
    body: ProxyBody,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle keep-alive connection costs is mostly its task, whose size is this
    /// future's: the request's own state (forwarding, the answer) is boxed per request and
    /// hyper's connection per handoff, so it stays small (3.7 KiB before they were).
    #[tokio::test]
    async fn a_connection_future_is_small() {
        let proxy = Proxy::new(
            Arc::new(crate::routing::TableStore::default()),
            crate::config::settings::ProxySettings::default(),
            crate::metrics::Metrics::new(),
            false,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_trigger, shutdown) = crate::shutdown::channel();
        let guard = proxy.tracker.track();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let conn = serve(proxy.clone(), stream, peer, shutdown, guard, false);
        let size = std::mem::size_of_val(&conn);
        assert!(size <= 1400, "connection future: {size} bytes");
    }
}
