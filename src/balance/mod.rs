//! Choosing one endpoint of a route: round robin (the default, as in Interlock) or least
//! connections, optionally pinned by a sticky key (an application cookie or the client IP),
//! skipping endpoints that passive health checks took out. Everything is lock-free: an
//! atomic cursor, the upstreams' in-flight counters and health atomics. Cursors are carried
//! from one table generation to the next by route, so a swap does not reset the rotation.

mod retry;
mod sticky;

pub use retry::RetryBudget;
pub use sticky::{affinity_key, Sticky};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::labels::{BackendProtocol, BalancePolicy};
use crate::metrics::ServiceMetrics;
use crate::upstream::{HealthPolicy, Upstream};

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
    pub sticky: Sticky,
    pub health: HealthPolicy,
    /// HTTP/1.1 (pooled connections) or h2c (one multiplexed connection per endpoint).
    pub protocol: BackendProtocol,
    /// Bounds the route's retries (carried across swaps like the cursor).
    pub budget: Arc<RetryBudget>,
    /// False (`com.docker.lb.retries=off`): every request is one attempt on one connection.
    pub retries: bool,
}

impl BackendSet {
    /// The endpoint for a request: the sticky owner of `key` if given (rendezvous hashing:
    /// stable across table swaps, and adding an endpoint moves only the keys it wins), else
    /// the next by the route's policy. Skips `avoid` (a just-failed endpoint) and endpoints
    /// passive health took out, unless nothing else is left.
    pub fn pick(&self, key: Option<u64>, avoid: Option<&Upstream>) -> Option<&Backend> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        // Read once, and only if an endpoint was taken out (see `is_available`).
        let now = std::cell::OnceCell::new();
        let clock = || *now.get_or_init(crate::upstream::now_ms);
        let not_avoided = |b: &Backend| avoid.is_none_or(|a| !std::ptr::eq(a, &*b.upstream));
        let healthy = |b: &Backend| not_avoided(b) && b.upstream.is_available(clock);
        let choose = |ok: &dyn Fn(&Backend) -> bool| -> Option<&Backend> {
            if let Some(key) = key {
                return self
                    .backends
                    .iter()
                    .filter(|b| ok(b))
                    .max_by_key(|b| sticky::score(key, &b.upstream));
            }
            let start = self.cursor.fetch_add(1, Ordering::Relaxed);
            let ring = (0..n).map(|i| &self.backends[(start + i) % n]);
            match self.policy {
                BalancePolicy::RoundRobin => ring.into_iter().find(|b| ok(b)),
                BalancePolicy::LeastConn => {
                    ring.filter(|b| ok(b)).min_by_key(|b| b.upstream.active())
                }
            }
        };
        choose(&healthy)
            .or_else(|| choose(&not_avoided))
            .or_else(|| choose(&|_| true))
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
            sticky: Sticky::None,
            health: HealthPolicy::default(),
            protocol: BackendProtocol::Http1,
            budget: Arc::default(),
            retries: true,
        }
    }

    #[test]
    fn round_robin_cycles_through_every_endpoint() {
        let s = set(BalancePolicy::RoundRobin, 3);
        let ports: Vec<u16> = (0..6)
            .map(|_| s.pick(None, None).unwrap().upstream.addr().port())
            .collect();
        assert_eq!(ports, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn avoid_skips_the_failed_endpoint_unless_alone() {
        let s = set(BalancePolicy::RoundRobin, 2);
        let first = s.backends[0].upstream.clone();
        for _ in 0..4 {
            assert_eq!(
                s.pick(None, Some(&first)).unwrap().upstream.addr().port(),
                1001
            );
        }
        let single = set(BalancePolicy::RoundRobin, 1);
        let only = single.backends[0].upstream.clone();
        assert!(single.pick(None, Some(&only)).is_some());
    }

    #[test]
    fn least_conn_prefers_the_idle_endpoint() {
        let s = set(BalancePolicy::LeastConn, 3);
        let _busy0 = s.backends[0].upstream.track();
        let _busy2 = s.backends[2].upstream.track();
        let _busy2b = s.backends[2].upstream.track();
        for _ in 0..5 {
            assert_eq!(s.pick(None, None).unwrap().upstream.addr().port(), 1001);
        }
    }

    #[test]
    fn sticky_keys_stay_put_and_move_little_when_an_endpoint_is_added() {
        let three = set(BalancePolicy::RoundRobin, 3);
        let owner = |s: &BackendSet, k: u64| s.pick(Some(k), None).unwrap().upstream.addr();
        for k in 0..50u64 {
            assert_eq!(
                owner(&three, k),
                owner(&three, k),
                "same key, same endpoint"
            );
        }
        let four = set(BalancePolicy::RoundRobin, 4);
        let moved = (0..1000u64)
            .filter(|&k| owner(&three, k) != owner(&four, k))
            .count();
        // Only the keys the new endpoint wins move: about a quarter.
        assert!((150..350).contains(&moved), "{moved} of 1000 keys moved");
        for k in 0..1000u64 {
            let (a, b) = (owner(&three, k), owner(&four, k));
            assert!(
                a == b || b.port() == 1003,
                "a key moved between old endpoints"
            );
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_all_are_down() {
        let s = set(BalancePolicy::RoundRobin, 2);
        let policy = HealthPolicy {
            max_fails: 1,
            fail_timeout: std::time::Duration::from_secs(30),
        };
        s.backends[0].upstream.record_failure(&policy);
        for _ in 0..4 {
            assert_eq!(s.pick(None, None).unwrap().upstream.addr().port(), 1001);
        }
        s.backends[1].upstream.record_failure(&policy);
        assert!(
            s.pick(None, None).is_some(),
            "with every endpoint down, still try one"
        );
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert!(set(BalancePolicy::RoundRobin, 0).pick(None, None).is_none());
    }
}
