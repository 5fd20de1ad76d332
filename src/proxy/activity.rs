//! What a client connection's idle watchdog reads (see `connection.rs`), written by both
//! front-ends: [`Activity`] (progress, requests in flight, pending heads, closing),
//! [`InFlight`] (one request from head to last response byte) and [`Monitored`] (the
//! client stream, reporting its reads and writes).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use super::preface::PREFACE as H2_PREFACE;

/// What the idle watchdog reads. A connection makes progress when a request starts or ends,
/// and when its socket moves bytes while a request is in flight. Traffic with no request in
/// flight is not progress: otherwise the HTTP/2 keep-alive pings (every 20 s) would keep an
/// idle h2 connection open forever.
#[derive(Default)]
pub(super) struct Activity {
    pub(super) progress: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    /// Reads that brought bytes while no request was in flight: the start of a head.
    pub(super) head_reads: AtomicU64,
    /// `head_reads` when a request last started or ended: more since is a pending head.
    pub(super) heads_at_boundary: AtomicU64,
    /// The client spoke HTTP/2 (its preface), whose frames between requests are no heads.
    pub(super) h2: AtomicBool,
    /// Shutting down or idle too long: finish what is in flight, start nothing new.
    pub(super) closing: AtomicBool,
    /// Shutting down while the client was sending a request (or had just connected): that
    /// request is still read and answered, then the connection closes.
    pub(super) draining: AtomicBool,
    /// The fast path is waiting for an upstream's answer, not for the client: no reason
    /// to arm the watchdog for that wait (see `connection.rs`).
    pub(super) awaiting_upstream: AtomicBool,
    /// The watchdog's gate (see `connection.rs`): false when its waker fired since the
    /// watchdog was last polled (or it never was), so it must be polled.
    pub(super) gate_quiet: AtomicBool,
    /// The connection task, which the gate wakes.
    pub(super) gate_task: OnceLock<Waker>,
}

impl Activity {
    fn mark_boundary(&self) {
        let heads = self.head_reads.load(Ordering::Relaxed);
        self.heads_at_boundary.store(heads, Ordering::Relaxed);
    }
}

/// Marks the connection as waiting for an upstream's answer until dropped.
pub(super) struct AwaitingUpstream<'a>(&'a Activity);

impl Activity {
    pub(super) fn awaiting_upstream(&self) -> AwaitingUpstream<'_> {
        self.awaiting_upstream.store(true, Ordering::Relaxed);
        AwaitingUpstream(self)
    }
}

impl Drop for AwaitingUpstream<'_> {
    fn drop(&mut self) {
        self.0.awaiting_upstream.store(false, Ordering::Relaxed);
    }
}

/// Marks one request in flight on its connection until dropped.
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.progress.fetch_add(1, Ordering::Relaxed);
        activity.mark_boundary();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.progress.fetch_add(1, Ordering::Relaxed);
        self.0.mark_boundary();
    }
}

/// A stream that reports its successful reads and writes to the idle watchdog.
pub(super) struct Monitored<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
    pub(super) first_read: bool,
}

impl<S> Monitored<S> {
    fn touch(&self) {
        if self.activity.in_flight.load(Ordering::Relaxed) > 0 {
            self.activity.progress.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A read brought `bytes`: progress of a request in flight, or part of a next head.
    fn read(&mut self, bytes: &[u8]) {
        if self.first_read {
            self.first_read = false;
            let n = bytes.len().min(H2_PREFACE.len());
            if bytes[..n] == H2_PREFACE[..n] {
                self.activity.h2.store(true, Ordering::Relaxed);
            }
        }
        if self.activity.in_flight.load(Ordering::Relaxed) > 0 {
            self.activity.progress.fetch_add(1, Ordering::Relaxed);
        } else {
            self.activity.head_reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Monitored<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let filled = &buf.filled()[before..];
            if !filled.is_empty() {
                self.read(filled);
            }
        }
        res
    }
}

delegate_async_write!(Monitored, Monitored::touch);
