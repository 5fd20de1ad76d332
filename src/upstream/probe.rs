//! Active health checks (`com.docker.lb.health_path`, `health_interval`): every endpoint of
//! a labelled route gets `GET <path>` at the interval on a fresh connection; a non-2xx/3xx
//! answer, a failed connection or a timeout takes it out until a probe succeeds again.
//! Swarm's own task health still decides which tasks exist; this catches an app that runs
//! but does not answer. The schedule over the live table's routes is
//! `crate::maintenance::run_probes`'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request};

use super::{h1, Upstream};

impl Upstream {
    /// False while the last active probe failed.
    pub fn probe_ok(&self) -> bool {
        !self.probe_down.load(Ordering::Relaxed)
    }

    /// Records the outcome of an active probe; a change is logged.
    pub fn set_probe(&self, healthy: bool) {
        let was_down = self.probe_down.swap(!healthy, Ordering::Relaxed);
        if was_down == healthy {
            tracing::warn!(
                upstream = self.label(),
                healthy,
                "active health check changed state"
            );
        }
    }
}

/// Probes one endpoint once, within `timeout` in all: the connect gets what is left of it,
/// the exchange its deadline.
pub async fn probe(upstream: &Arc<Upstream>, host: &str, path: &str, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    // Validated as a request target and a field value, as any request's.
    let Ok(request) = Request::get(path).header(header::HOST, host).body(()) else {
        return false;
    };
    let (parts, ()) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = h1::HeadWriter::new(parts.method.as_str(), target, 64);
    head.field(b"host", parts.headers[header::HOST].as_bytes());
    head.field(b"user-agent", b"interlock-health-check");
    let mut out = h1::Outgoing {
        head: head.finish(h1::RequestFraming::Empty, false),
        body: None,
        framing: h1::RequestFraming::Empty,
        head_request: false,
        upgrade: false,
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let Ok(pooled) = upstream.connect(left).await else {
        return false;
    };
    match h1::exchange(pooled.conn, &mut out, upstream, deadline).await {
        Ok(h1::Outcome::Response(head, _)) => {
            head.status.is_success() || head.status.is_redirection()
        }
        Ok(h1::Outcome::Upgraded(..)) | Err(_) => false,
    }
}
