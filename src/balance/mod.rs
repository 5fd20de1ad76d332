//! Choosing one endpoint of a route: round robin (the default, as in Interlock) or least
//! connections. Both are lock-free: an atomic cursor and the upstreams' in-flight counters.
//! Cursors are carried from one table generation to the next by route, so a swap does not
//! reset the rotation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::labels::BalancePolicy;
use crate::metrics::ServiceMetrics;
use crate::upstream::Upstream;

/// One endpoint of a route and the service it belongs to (a route merges every service that
/// claims the same host and context root: canary by task count).
#[derive(Clone)]
pub struct Backend {
    pub upstream: Arc<Upstream>,
    pub service: Arc<str>,
    pub metrics: Arc<ServiceMetrics>,
}

/// The endpoints of one route and how to choose among them.
pub struct BackendSet {
    pub backends: Vec<Backend>,
    pub policy: BalancePolicy,
    pub cursor: Arc<AtomicUsize>,
}

impl BackendSet {
    /// The next endpoint, skipping `avoid` (a just-failed endpoint) when there is another.
    pub fn pick(&self, avoid: Option<&Upstream>) -> Option<&Backend> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let usable = |b: &Backend| avoid.is_none_or(|a| !std::ptr::eq(a, &*b.upstream)) || n == 1;
        match self.policy {
            BalancePolicy::RoundRobin => (0..n)
                .map(|i| &self.backends[(start + i) % n])
                .find(|b| usable(b)),
            BalancePolicy::LeastConn => (0..n)
                .map(|i| &self.backends[(start + i) % n])
                .filter(|b| usable(b))
                .min_by_key(|b| b.upstream.active()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn set(policy: BalancePolicy, n: u16) -> BackendSet {
        let m = Metrics::new();
        BackendSet {
            backends: (0..n)
                .map(|i| Backend {
                    upstream: Upstream::new(([127, 0, 0, 1], 1000 + i).into(), 4),
                    service: "s".into(),
                    metrics: m.service("s"),
                })
                .collect(),
            policy,
            cursor: Arc::new(AtomicUsize::new(0)),
        }
    }

    #[test]
    fn round_robin_cycles_through_every_endpoint() {
        let s = set(BalancePolicy::RoundRobin, 3);
        let ports: Vec<u16> = (0..6)
            .map(|_| s.pick(None).unwrap().upstream.addr().port())
            .collect();
        assert_eq!(ports, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn avoid_skips_the_failed_endpoint_unless_alone() {
        let s = set(BalancePolicy::RoundRobin, 2);
        let first = s.backends[0].upstream.clone();
        for _ in 0..4 {
            assert_eq!(s.pick(Some(&first)).unwrap().upstream.addr().port(), 1001);
        }
        let single = set(BalancePolicy::RoundRobin, 1);
        let only = single.backends[0].upstream.clone();
        assert!(single.pick(Some(&only)).is_some());
    }

    #[test]
    fn least_conn_prefers_the_idle_endpoint() {
        let s = set(BalancePolicy::LeastConn, 3);
        let _busy0 = s.backends[0].upstream.track();
        let _busy2 = s.backends[2].upstream.track();
        let _busy2b = s.backends[2].upstream.track();
        for _ in 0..5 {
            assert_eq!(s.pick(None).unwrap().upstream.addr().port(), 1001);
        }
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert!(set(BalancePolicy::RoundRobin, 0).pick(None).is_none());
    }
}
