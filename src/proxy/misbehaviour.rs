//! Client connections that ended because the client broke the protocol, an HTTP/2 client
//! flooding resets (rapid reset) above all. The client controls how often that happens, so
//! it must not control the log's volume: each case is counted
//! (`interlock_http2_client_goaways_total{reason}`) and logged at debug, and a WARN summary
//! is written at most once a minute: the first case writes one at once; the cases after it
//! within the minute are told in one more summary when the minute is over (a timer started
//! by the first of them), so a burst's total always reaches the log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;

/// Shortest time between two WARN summaries.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Rate limit of the WARN summary, one per listener.
#[derive(Clone)]
pub(super) struct Summary(Arc<Inner>);

struct Inner {
    every: Duration,
    /// Cases not yet told in a summary.
    untold: AtomicU64,
    /// When the last summary was written (`None`: never).
    last: Mutex<Option<Instant>>,
    /// A timer will write the summary of the untold cases.
    flush_pending: AtomicBool,
    /// The latest case, for the summary: the peer and the reason.
    latest: Mutex<Option<(SocketAddr, &'static str)>>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary::every(SUMMARY_EVERY)
    }
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
    fn every(every: Duration) -> Self {
        Summary(Arc::new(Inner {
            every,
            untold: AtomicU64::new(0),
            last: Mutex::new(None),
            flush_pending: AtomicBool::new(false),
            latest: Mutex::new(None),
        }))
    }

    /// Counts and logs one connection closed with a GOAWAY of `reason`. Not on any request's
    /// path: only when a misbehaving client's connection ends.
    pub(super) fn record(&self, metrics: &Metrics, peer: SocketAddr, reason: h2::Reason) {
        let name = reason_name(reason);
        metrics.h2_client_goaways.with_label_values(&[name]).inc();
        tracing::debug!(%peer, reason = name, "HTTP/2 client connection closed for misbehaviour");
        let inner = &self.0;
        inner.untold.fetch_add(1, Ordering::Relaxed);
        *inner.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some((peer, name));
        let now = Instant::now();
        let due = {
            let mut last = inner.last.lock().unwrap_or_else(|e| e.into_inner());
            match *last {
                Some(at) if now < at + inner.every => Some(at + inner.every),
                _ => {
                    *last = Some(now);
                    None
                }
            }
        };
        match due {
            None => self.tell(),
            // Within the minute: one timer tells the untold cases when it is over.
            Some(at) if !inner.flush_pending.swap(true, Ordering::AcqRel) => {
                let summary = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    summary.0.flush_pending.store(false, Ordering::Release);
                    *summary.0.last.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now());
                    summary.tell();
                });
            }
            Some(_) => {}
        }
    }

    /// Writes the WARN summary of the cases not told yet, if any.
    fn tell(&self) {
        let cases = self.0.untold.swap(0, Ordering::AcqRel);
        if cases == 0 {
            return;
        }
        let latest = *self.0.latest.lock().unwrap_or_else(|e| e.into_inner());
        let (peer, reason) = latest.map_or((None, ""), |(p, r)| (Some(p), r));
        tracing::warn!(
            connections = cases,
            latest_peer = ?peer,
            latest_reason = reason,
            "HTTP/2 client connections closed for misbehaviour (such as a reset flood) since the last report; each is counted in interlock_http2_client_goaways_total and logged at debug"
        );
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

    #[tokio::test]
    async fn one_summary_now_and_one_for_the_rest_when_the_period_is_over() {
        let metrics = Metrics::new();
        let summary = Summary::every(Duration::from_millis(200));
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..1000 {
            summary.record(&metrics, peer, h2::Reason::ENHANCE_YOUR_CALM);
        }
        // The first case was told at once; the 999 since wait for the period's end.
        assert_eq!(summary.0.untold.load(Ordering::Relaxed), 999);
        assert!(summary.0.flush_pending.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            summary.0.untold.load(Ordering::Relaxed),
            0,
            "told by the timer"
        );
        assert!(!summary.0.flush_pending.load(Ordering::Relaxed));
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
