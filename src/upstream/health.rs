//! Passive health (nginx's `max_fails`/`fail_timeout`, Interlock's labels of the same
//! names): an endpoint that fails `max_fails` times within `fail_timeout` is skipped for
//! `fail_timeout`. A failure is a refused or failed connection, a reset mid-exchange or a
//! timeout; HTTP error statuses are answers, not failures.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Upstream;

/// When an endpoint is taken out. `max_fails == 0` disables passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl Default for HealthPolicy {
    /// Three failures in ten seconds: one transient error never ejects an endpoint (the
    /// complaint that made MKE add these labels), a dead one is out within three tries.
    fn default() -> Self {
        HealthPolicy {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-endpoint health counters (shared by every route that uses the endpoint).
#[derive(Debug, Default)]
pub(super) struct HealthState {
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    down_until_ms: AtomicU64,
}

/// Milliseconds since the first call: a cheap monotonic clock for health windows.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

impl Upstream {
    /// False while passive health has the endpoint out. `now_ms` (see [`now_ms`]) is
    /// called only for an endpoint that was taken out: the clock is not read per request
    /// while every endpoint is in.
    pub fn is_available(&self, now_ms: impl Fn() -> u64) -> bool {
        let h = &self.health;
        let down_until = h.down_until_ms.load(Ordering::Relaxed);
        if down_until != 0 {
            if down_until > now_ms() {
                return false;
            }
            // Back in: forget the time (a failure meanwhile set a new one, which stays).
            let _ = h.down_until_ms.compare_exchange(
                down_until,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.probe_ok()
    }

    /// Counts a failure; takes the endpoint out when the policy says so. Returns true when
    /// this failure ejected it.
    pub fn record_failure(&self, policy: &HealthPolicy) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let h = &self.health;
        let now = now_ms();
        let window = u64::try_from(policy.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(h.window_start_ms.load(Ordering::Relaxed)) > window {
            h.window_start_ms.store(now, Ordering::Relaxed);
            h.fails.store(0, Ordering::Relaxed);
        }
        if h.fails.fetch_add(1, Ordering::Relaxed) + 1 >= policy.max_fails {
            h.fails.store(0, Ordering::Relaxed);
            h.down_until_ms
                .store(now.saturating_add(window), Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A successful exchange clears the failure count.
    pub fn record_success(&self) {
        if self.health.fails.load(Ordering::Relaxed) != 0 {
            self.health.fails.store(0, Ordering::Relaxed);
        }
    }
}
