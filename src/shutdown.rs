//! Graceful shutdown: the operator's SIGTERM/SIGINT ([`wait_for_signal`]), a signal every
//! connection task watches, and a tracker of the tasks (connections and upgraded tunnels)
//! that draining waits for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Fires once when the instance starts draining (or when its trigger is dropped).
#[derive(Clone)]
pub struct Shutdown {
    signal: Arc<Signal>,
}

#[derive(Default)]
struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

/// The sending side of [`Shutdown`].
pub struct ShutdownTrigger {
    signal: Arc<Signal>,
}

/// A trigger and its first receiver.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let signal = Arc::new(Signal::default());
    (
        ShutdownTrigger {
            signal: signal.clone(),
        },
        Shutdown { signal },
    )
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.signal.fired.store(true, Ordering::Release);
        self.signal.notify.notify_waiters();
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            signal: self.signal.clone(),
        }
    }
}

impl Drop for ShutdownTrigger {
    /// A trigger gone can no longer say when to stop: whoever waits for it stops now.
    fn drop(&mut self) {
        self.trigger();
    }
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (or the trigger is gone). Waiting costs
    /// nothing until the future is first polled (then it joins the signal's waiters).
    pub async fn wait(&self) {
        let notified = self.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: a trigger in between wakes it.
        notified.as_mut().enable();
        if self.is_triggered() {
            return;
        }
        notified.await;
    }

    /// A future that resolves at the next trigger after it was created (polled or not). For
    /// a waiter that must stay small (each connection holds one): it does not see a trigger
    /// from before it was created, which [`Shutdown::is_triggered`] tells.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.signal.notify.notified()
    }

    /// Whether shutdown has been triggered: one atomic load.
    pub fn is_triggered(&self) -> bool {
        self.signal.fired.load(Ordering::Acquire)
    }
}

/// Counts live tasks; [`Tracker::wait_idle`] resolves when none is left.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

/// Held by a tracked task for its lifetime.
pub struct TrackGuard {
    inner: Arc<TrackerInner>,
}

impl Tracker {
    pub fn track(&self) -> TrackGuard {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        TrackGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Resolves on SIGTERM or SIGINT (SIGINT alone when SIGTERM cannot be watched).
pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
