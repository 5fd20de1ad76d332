//! Retry budget of a route: retries may add at most 20% to the requests of the last ten
//! seconds, plus ten retries a second, so a failing backend cannot make the proxy multiply
//! its own load (a retry storm). Lock-free; carried across table swaps with the route.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::upstream::now_ms;

const WINDOW_MS: u64 = 10_000;
const RATIO_PERCENT: u64 = 20;
const MIN_PER_SECOND: u64 = 10;

#[derive(Debug, Default)]
pub struct RetryBudget {
    window_start_ms: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn roll(&self) {
        let now = now_ms();
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) > WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request (a deposit into the budget). The window is rolled every 32nd
    /// request (a busy route rolls it within 32 requests of its end; `withdraw` always
    /// rolls it first), not per request: reading the clock was a tenth of this path's cost.
    pub fn deposit(&self) {
        if self.requests.load(Ordering::Relaxed).is_multiple_of(32) {
            self.roll();
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.roll();
        let allowed = MIN_PER_SECOND * WINDOW_MS / 1000
            + self.requests.load(Ordering::Relaxed) * RATIO_PERCENT / 100;
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_floor_then_a_fifth_of_requests() {
        let b = RetryBudget::default();
        let floor = MIN_PER_SECOND * WINDOW_MS / 1000;
        for _ in 0..floor {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw(), "floor spent with no traffic");
        for _ in 0..50 {
            b.deposit();
        }
        let extra = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(extra, 10, "20% of 50 requests");
    }
}
