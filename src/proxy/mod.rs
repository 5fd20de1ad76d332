//! The data plane: accepting client connections and forwarding their requests.
//!
//! Lifecycle of a client connection (`connection.rs`): accepted (`crate::accept`; TLS
//! first goes through `tls.rs`: SNI passthrough or termination) -> the front-ends, each
//! a way of reading requests off the socket:
//!   - `fast_h1/`: plain HTTP/1.1 requests, parsed in place, until the first request
//!     that is not plain hands the connection, with its unread bytes, to
//!   - hyper's HTTP/1.1 (`connection.rs`), whose requests go through `service.rs`, as
//!     every HTTP/2 request does;
//!   - `h2_server.rs`: HTTP/2 on the `h2` crate (after ALPN `h2`, or a cleartext client's
//!     preface; `preface.rs` tells them apart), its streams polled in the connection's task;
//!   - `upgrade.rs`: a websocket (or other upgrade) becomes a tunnel task that outlives
//!     the HTTP connection and every table swap;
//!
//! -> every request goes through the one forwarding core, `forward.rs` (one table load,
//! route, endpoint, retries, failure accounting) -> what interlock answers itself is made
//! in `answer.rs`, from the one error type in `error.rs` -> idle timeout or shutdown closes
//! the connection gracefully, letting in-flight requests finish (`activity.rs` is what the
//! watchdog reads).
//!
//! Beside them: `headers.rs` (field rules both ways), `body.rs` (response bodies),
//! `rewind.rs` (a stream replaying bytes already read), `splice.rs` (the bytes of a tunnel,
//! both ways, with no buffer held while it is idle), `misbehaviour.rs` (HTTP/2 clients
//! closed for breaking the protocol), `delegate.rs` (one `AsyncWrite` pass-through).

#[macro_use]
mod delegate;
mod activity;
mod answer;
mod body;
mod connection;
pub mod error;
mod forward;
mod h2_server;
pub mod headers;
mod misbehaviour;
mod preface;
mod rewind;
mod service;
mod splice;
// `pub(crate)`: the request-head reader is fuzzed (crate::fuzzing).
pub(crate) mod fast_h1;
mod tls;
mod upgrade;

pub use body::ProxyBody;

use std::sync::Arc;
use std::time::Duration;

use crate::accept::LazyListener;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;

use crate::config::settings::ProxySettings;
use crate::metrics::Metrics;
use crate::routing::TableStore;
use crate::shutdown::{Shutdown, Tracker};

/// Shared state of the data plane (one per listener scheme).
pub struct Proxy {
    pub table: Arc<TableStore>,
    pub settings: ProxySettings,
    pub metrics: Arc<Metrics>,
    /// Emit one `interlock::access` event per request.
    pub access_log: bool,
    /// Connections and tunnels, for draining.
    pub tracker: Tracker,
    /// Client connections closed for breaking the protocol: counted, logged sparingly.
    misbehaviour: misbehaviour::Summary,
    /// hyper's HTTP/1.1 server, for what the fast path hands over.
    http1: http1::Builder,
    /// Our HTTP/2 server's settings (`h2_server.rs`).
    h2: h2::server::Builder,
}

impl Proxy {
    pub fn new(
        table: Arc<TableStore>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        access_log: bool,
    ) -> Arc<Self> {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // The connection's watchdog times request heads (see connection.rs).
            .header_read_timeout(None::<Duration>)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers)
            .keep_alive(true);
        let h2 = h2_server::builder(settings.max_header_bytes, 256);
        Arc::new(Proxy {
            table,
            settings,
            metrics,
            access_log,
            tracker: Tracker::default(),
            misbehaviour: misbehaviour::Summary::default(),
            http1,
            h2,
        })
    }

    /// Accepts connections until `shutdown` fires, then stops accepting; connections drain
    /// on their own (see [`Proxy::drain`]).
    /// Plain connections join the runtime's poller only when they first wait
    /// ([`LazyListener`]): one that is answered and closed at once never does.
    pub async fn serve(self: Arc<Self>, listener: LazyListener, shutdown: Shutdown) {
        let mut incoming = crate::accept::Incoming::new(&listener, &shutdown);
        while let Some((stream, peer)) = incoming.next().await {
            let guard = self.tracker.track();
            // Not boxed, though spawning moves the connection's future (kilobytes) several
            // times (~1,100 instructions per connection): a box beside the task's own
            // allocation made each idle connection ~0.3 KiB larger (`benches/idle.rs`).
            tokio::spawn(connection::serve(
                self.clone(),
                stream,
                peer,
                shutdown.clone(),
                guard,
                false,
            ));
        }
    }

    /// Waits for connections and tunnels to finish, at most the drain timeout. Returns the
    /// number still open when it gave up.
    pub async fn drain(&self) -> usize {
        let _ = tokio::time::timeout(self.settings.drain_timeout, self.tracker.wait_idle()).await;
        self.tracker.live()
    }
}
