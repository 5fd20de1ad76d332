//! Closes pooled upstream connections that idled past `--pool-idle-timeout`. Checkout
//! already skips them; closing them too frees their sockets on both ends instead of
//! leaving them open until the backend's own keep-alive timer (some never close).

use std::sync::Arc;
use std::time::Duration;

use crate::routing::TableStore;

/// Runs forever: every half idle timeout, closes the expired idle connections of every
/// endpoint in the live table.
pub async fn run(store: Arc<TableStore>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let table = store.snapshot();
        let closed: usize = table
            .upstreams
            .values()
            .map(|u| u.close_idle(idle_timeout))
            .sum();
        if closed > 0 {
            tracing::debug!(closed, "closed idle upstream connections");
        }
    }
}
