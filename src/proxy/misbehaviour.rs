//! Client connections that ended because the client broke the protocol, an HTTP/2 client
//! flooding resets (rapid reset) above all. The client controls how often that happens, so
//! it must not control the log's volume: each case is counted
//! (`interlock_http2_client_goaways_total{reason}`) and logged at debug, and a WARN summary
//! is written at most once a minute, with how many there were since the last one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;

/// Shortest time between two WARN summaries.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Rate limit of the WARN summary, one per listener.
#[derive(Default)]
pub(super) struct Summary {
    /// Unix seconds before which no summary is written.
    next_at: AtomicU64,
    /// Cases since the last summary.
    since: AtomicU64,
}

/// The GOAWAY the proxy's HTTP/2 server sent for the client's misbehaviour, if that is
/// what ended the connection with `e`.
pub(super) fn h2_goaway(e: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<h2::Error>() {
            return (e.is_go_away() && e.is_library())
                .then(|| e.reason())
                .flatten();
        }
        cause = c.source();
    }
    None
}

impl Summary {
    /// Counts and logs one connection closed with a GOAWAY of `reason`.
    pub(super) fn record(&self, metrics: &Metrics, peer: SocketAddr, reason: h2::Reason) {
        let name = reason_name(reason);
        metrics.h2_client_goaways.with_label_values(&[name]).inc();
        tracing::debug!(%peer, reason = name, "HTTP/2 client connection closed for misbehaviour");
        self.since.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let next_at = self.next_at.load(Ordering::Relaxed);
        if now < next_at {
            return;
        }
        let next = now + SUMMARY_EVERY.as_secs();
        if self
            .next_at
            .compare_exchange(next_at, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let cases = self.since.swap(0, Ordering::Relaxed);
            tracing::warn!(
                connections = cases,
                latest_peer = %peer,
                latest_reason = name,
                "HTTP/2 client connections closed for misbehaviour (such as a reset flood) since the last report; each is counted in interlock_http2_client_goaways_total and logged at debug"
            );
        }
    }
}

/// The metric label of a GOAWAY reason: its name in RFC 9113 §7.
fn reason_name(reason: h2::Reason) -> &'static str {
    match reason {
        h2::Reason::PROTOCOL_ERROR => "PROTOCOL_ERROR",
        h2::Reason::FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
        h2::Reason::FRAME_SIZE_ERROR => "FRAME_SIZE_ERROR",
        h2::Reason::COMPRESSION_ERROR => "COMPRESSION_ERROR",
        h2::Reason::ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_a_minute_however_many_cases() {
        let metrics = Metrics::new();
        let summary = Summary::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..1000 {
            summary.record(&metrics, peer, h2::Reason::ENHANCE_YOUR_CALM);
        }
        // The first case wrote the summary; the 999 since wait for the next one.
        assert_eq!(summary.since.load(Ordering::Relaxed), 999);
        let counted = metrics
            .h2_client_goaways
            .with_label_values(&["ENHANCE_YOUR_CALM"])
            .get();
        assert_eq!(counted, 1000);
    }

    #[test]
    fn only_a_library_goaway_is_misbehaviour() {
        let io = std::io::Error::other("x");
        assert_eq!(h2_goaway(&io), None);
        let e: h2::Error = h2::Reason::ENHANCE_YOUR_CALM.into();
        // A reason alone (not a GOAWAY the library sent) is not counted.
        assert_eq!(h2_goaway(&e), None);
    }
}
