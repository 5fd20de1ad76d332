//! Background tasks over the live table's endpoints: active health checks
//! (`com.docker.lb.health_path`, `health_interval`) and the reaper of idle pooled
//! connections. They sit above `routing` (they read the live table) and `upstream` (they
//! act on its endpoints: [`crate::upstream::probe`], [`Upstream::close_idle`]), so that
//! neither of those two knows the other.
//!
//! [`Upstream::close_idle`]: crate::upstream::Upstream::close_idle

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::routing::TableStore;
use crate::upstream::probe::probe;

/// Runs forever: probes every endpoint of every route that asks for it, when due.
pub async fn run_probes(store: Arc<TableStore>) {
    let mut next_due: HashMap<(Box<str>, SocketAddr), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let table = store.snapshot();
        let now = Instant::now();
        let mut live = HashMap::with_capacity(next_due.len());
        for (host, route) in table.routes() {
            let Some(check) = &route.check else { continue };
            for b in &route.backends.backends {
                // The default backend has no name: probe it by its address.
                let host: Box<str> = match host {
                    "*" => b.upstream.label().into(),
                    h => h.trim_start_matches("*.").into(),
                };
                let key = (host.clone(), b.upstream.addr());
                let due = next_due.get(&key).copied().unwrap_or(now);
                if due <= now {
                    let (upstream, host, path) =
                        (b.upstream.clone(), host.clone(), check.path.clone());
                    let timeout = check.interval.min(Duration::from_secs(5));
                    tokio::spawn(async move {
                        let ok = probe(&upstream, &host, &path, timeout).await;
                        upstream.set_probe(ok);
                    });
                    live.insert(key, now + check.interval);
                } else {
                    live.insert(key, due);
                }
            }
        }
        next_due = live;
    }
}

/// Runs forever: every half idle timeout, closes the pooled connections of every endpoint
/// in the live table that idled past `--pool-idle-timeout`. Checkout already skips them;
/// closing them too frees their sockets on both ends instead of leaving them open until
/// the backend's own keep-alive timer (some never close).
pub async fn reap_idle(store: Arc<TableStore>, idle_timeout: Duration) {
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
