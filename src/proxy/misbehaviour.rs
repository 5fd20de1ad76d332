//! Client connections that ended because the client broke the protocol, an HTTP/2 client
//! flooding resets (rapid reset) above all. The client controls how often that happens, so
//! it must not control the log's volume: each case is counted
//! (`interlock_http2_client_goaways_total{reason}`) and logged at debug, and a WARN summary
//! is written at most once a minute: the first case writes one at once; the cases after it
//! within the minute are told in one more summary when the minute is over (a timer started
//! by the first of them), so a burst's total always reaches the log.

use std::net::SocketAddr;
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
    state: Mutex<State>,
}

/// What the summary has not told yet, under one lock (taken only when a misbehaving
/// client's connection ends, never on a request's path).
#[derive(Default)]
struct State {
    /// Cases not yet told in a summary.
    untold: u64,
    /// The latest case: the peer and the reason.
    latest: Option<(SocketAddr, &'static str)>,
    /// When the last summary was written (`None`: never).
    last: Option<Instant>,
    /// A timer will write the summary of the untold cases.
    flush_pending: bool,
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
            state: Mutex::default(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts and logs one connection closed with a GOAWAY of `reason`. Not on any request's
    /// path: only when a misbehaving client's connection ends.
    pub(super) fn record(&self, metrics: &Metrics, peer: SocketAddr, reason: h2::Reason) {
        let name = reason_name(reason);
        metrics.h2_client_goaways.with_label_values(&[name]).inc();
        tracing::debug!(%peer, reason = name, "HTTP/2 client connection closed for misbehaviour");
        let now = Instant::now();
        let timer_until = {
            let mut state = self.state();
            state.untold += 1;
            state.latest = Some((peer, name));
            match state.last {
                // Within the minute: one timer tells the untold cases when it is over.
                Some(at) if now < at + self.0.every => {
                    if std::mem::replace(&mut state.flush_pending, true) {
                        return;
                    }
                    Some(at + self.0.every)
                }
                _ => None,
            }
        };
        match timer_until {
            None => self.tell(),
            Some(at) => {
                let summary = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    summary.tell();
                });
            }
        }
    }

    /// Writes the WARN summary of the cases not told yet, if any, and starts a new minute.
    fn tell(&self) {
        let (cases, latest) = {
            let mut state = self.state();
            state.last = Some(Instant::now());
            state.flush_pending = false;
            (std::mem::take(&mut state.untold), state.latest)
        };
        if cases == 0 {
            return;
        }
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
        assert_eq!(summary.state().untold, 999);
        assert!(summary.state().flush_pending);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(summary.state().untold, 0, "told by the timer");
        assert!(!summary.state().flush_pending);
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
