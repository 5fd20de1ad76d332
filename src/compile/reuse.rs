//! What a new table takes over from the previous one, so a swap loses no state: endpoints
//! (with their pools, counters and health) by address, round-robin cursors and retry
//! budgets by route id, metric handles by service; and, the other way, what the new table
//! no longer has (endpoints to retire, metric series to forget).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::balance::RetryBudget;
use crate::metrics::{Metrics, ServiceMetrics};
use crate::routing::{FastMap, RoutingTable};
use crate::upstream::Upstream;

/// The new table's endpoints, cursors and budgets, each taken over from the previous
/// table when it had one.
pub(super) struct Reuse<'p> {
    previous: &'p RoutingTable,
    /// Pool capacity of endpoints the previous table did not have.
    max_idle: usize,
    pub(super) upstreams: FastMap<SocketAddr, Arc<Upstream>>,
    pub(super) cursors: FastMap<Box<str>, Arc<AtomicUsize>>,
    pub(super) budgets: FastMap<Box<str>, Arc<RetryBudget>>,
}

impl<'p> Reuse<'p> {
    /// `services`: how many services are compiled (a capacity hint).
    pub(super) fn new(previous: &'p RoutingTable, max_idle: usize, services: usize) -> Self {
        let mut reuse = Reuse {
            previous,
            max_idle,
            upstreams: FastMap::default(),
            cursors: FastMap::default(),
            budgets: FastMap::default(),
        };
        reuse
            .upstreams
            .reserve(previous.upstreams.len().max(services));
        reuse.cursors.reserve(services);
        reuse.budgets.reserve(services);
        reuse
    }

    /// The round-robin cursor of route `id`.
    pub(super) fn cursor(&mut self, id: &str) -> Arc<AtomicUsize> {
        let cursor = self
            .previous
            .cursors
            .get(id)
            .cloned()
            .unwrap_or_else(|| Arc::new(AtomicUsize::new(0)));
        self.cursors.insert(id.into(), cursor.clone());
        cursor
    }

    /// The retry budget of route `id`.
    pub(super) fn budget(&mut self, id: &str) -> Arc<RetryBudget> {
        let budget = self.previous.budgets.get(id).cloned().unwrap_or_default();
        self.budgets.insert(id.into(), budget.clone());
        budget
    }

    /// The endpoint at `addr`: the new table's, else the previous table's unless retired,
    /// else a new one.
    pub(super) fn upstream(&mut self, addr: SocketAddr) -> Arc<Upstream> {
        let (previous, max_idle) = (self.previous, self.max_idle);
        self.upstreams
            .entry(addr)
            .or_insert_with(|| {
                previous
                    .upstreams
                    .get(&addr)
                    .filter(|u| !u.is_retired())
                    .cloned()
                    .unwrap_or_else(|| Upstream::new(addr, max_idle))
            })
            .clone()
    }
}

/// The metric handles of a routed service: the previous table's, else new ones.
pub(super) fn service_metrics(
    previous: &RoutingTable,
    service: &str,
    metrics: &Metrics,
) -> Arc<ServiceMetrics> {
    previous
        .services
        .get(service)
        .and_then(|s| s.metrics.clone())
        .unwrap_or_else(|| metrics.service(service))
}

/// Endpoints of `old` that `new` no longer routes to (their pools should be closed).
pub fn departed_upstreams(old: &RoutingTable, new: &RoutingTable) -> Vec<Arc<Upstream>> {
    old.upstreams
        .iter()
        .filter(|(addr, u)| new.upstreams.get(addr).is_none_or(|n| !Arc::ptr_eq(n, u)))
        .map(|(_, u)| u.clone())
        .collect()
}

/// Services with metric series in `old` that `new` no longer has.
pub fn departed_services<'a>(old: &'a RoutingTable, new: &RoutingTable) -> Vec<&'a str> {
    old.services
        .iter()
        .filter(|(name, s)| {
            s.metrics.is_some() && new.services.get(*name).is_none_or(|n| n.metrics.is_none())
        })
        .map(|(name, _)| name.as_str())
        .collect()
}
