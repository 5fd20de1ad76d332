//! The data plane: accepting client connections and forwarding their requests.
//!
//! Lifecycle of a client connection (see `connection.rs`): accept -> plain HTTP/1.1
//! requests on our own server (`server/`), until the first request that is not plain
//! hands the connection to hyper (HTTP/1.1 and h2c, auto-detected) -> for each request,
//! `handler.rs` loads the live table once, resolves a route and an endpoint, forwards
//! through the endpoint's pool and streams the answer back
//! -> an upgrade (websocket) becomes a tunnel task (`upgrade.rs`) that outlives the HTTP
//! connection and every table swap -> idle timeout or shutdown closes the connection
//! gracefully, letting in-flight requests finish.

mod body;
mod connection;
pub mod error;
mod handler;
pub mod headers;
mod misbehaviour;
mod preface;
mod rewind;
// `pub(crate)`: the request-head reader is fuzzed (crate::fuzzing).
pub(crate) mod server;
mod tls;
mod upgrade;

pub use body::ProxyBody;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::settings::ProxySettings;
use crate::metrics::Metrics;
use crate::routing::TableStore;
use crate::shutdown::{Shutdown, Tracker};

/// The next accepted connection (with `TCP_NODELAY`), or `None` once `shutdown` fires.
/// Accept errors (out of file descriptors and the like) are retried with backoff: the
/// listener neither spins nor dies.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait() => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

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
    builder: auto::Builder<TokioExecutor>,
}

impl Proxy {
    pub fn new(
        table: Arc<TableStore>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        access_log: bool,
    ) -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The connection's watchdog times request heads (see connection.rs).
            .header_read_timeout(None::<Duration>)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        Arc::new(Proxy {
            table,
            settings,
            metrics,
            access_log,
            tracker: Tracker::default(),
            misbehaviour: misbehaviour::Summary::default(),
            builder,
        })
    }

    /// Accepts connections until `shutdown` fires, then stops accepting; connections drain
    /// on their own (see [`Proxy::drain`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: Shutdown) {
        while let Some((stream, peer)) = accept(&listener, &mut shutdown).await {
            let guard = self.tracker.track();
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
