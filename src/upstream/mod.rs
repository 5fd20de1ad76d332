//! One backend endpoint (`ip:port`): its pool of idle HTTP/1.1 connections (spoken by our
//! own client, [`h1`]; h2c endpoints use hyper's HTTP/2 client) and the live counters
//! balancing reads. An [`Upstream`] is shared by every table generation that
//! routes to the same address, so pools and counters survive table swaps; when the address
//! leaves the table it is [retired](Upstream::retire) and its idle connections close.

mod body;
mod client_body;
pub mod h1;
mod h2;
mod health;
mod pool;
pub mod probe;

pub use body::{ClientBodyError, UpstreamBody};
pub use client_body::{BoxError, ClientBody};
pub use health::{now_ms, HealthPolicy};
pub use pool::{ConnectError, PooledConn};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A backend address with its connection pool and in-flight request count.
pub struct Upstream {
    addr: SocketAddr,
    /// `ip:port` pre-rendered for logs and headers.
    label: std::sync::OnceLock<Box<str>>,
    idle: pool::IdleQueue,
    active: AtomicUsize,
    retired: AtomicBool,
    health: health::HealthState,
    /// The shared HTTP/2 connection of an h2c endpoint.
    h2: std::sync::OnceLock<
        arc_swap::ArcSwapOption<hyper::client::conn::http2::SendRequest<UpstreamBody>>,
    >,
    /// Set while the active health check fails.
    probe_down: AtomicBool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("active", &self.active())
            .field("idle", &self.idle.len())
            .finish()
    }
}

impl Upstream {
    pub fn new(addr: SocketAddr, max_idle: usize) -> Arc<Self> {
        Arc::new(Upstream {
            addr,
            label: std::sync::OnceLock::new(),
            idle: pool::IdleQueue::new(max_idle),
            active: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            health: health::HealthState::default(),
            h2: std::sync::OnceLock::new(),
            probe_down: AtomicBool::new(false),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn label(&self) -> &str {
        // Formatted on first use (logs, /routes): a compile creates thousands of endpoints.
        self.label
            .get_or_init(|| self.addr.to_string().into_boxed_str())
    }

    /// Requests in flight to this endpoint.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Idle pooled connections.
    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Marks a request in flight until the guard drops (least-connections reads it).
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Called when the endpoint leaves the routing table: closes idle connections and stops
    /// pooling the ones still in use (they close when their response ends).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        while self.idle.pop().is_some() {}
        self.drop_h2();
    }

    /// Closes pooled connections idle for `timeout` or more: they would not be reused, and
    /// should not hold a socket on the backend either. Returns how many were closed.
    pub fn close_idle(&self, timeout: std::time::Duration) -> usize {
        self.idle.reap(timeout)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// Counts one in-flight request on an [`Upstream`].
pub struct ActiveGuard(Arc<Upstream>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
