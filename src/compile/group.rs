//! Step 2: the routed services grouped by route, a (host, context root) pair: several
//! services in one route are a canary. Also collects each host's redirects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::balance::Sticky;
use crate::config::labels::{
    self, BackendMode, BackendProtocol, BalancePolicy, HostPattern, Redirect, Retries,
    ServiceLabels,
};
use crate::metrics::ServiceMetrics;
use crate::routing::{ActiveCheck, CompiledService, FastMap};
use crate::upstream::HealthPolicy;

/// A routed service as grouping and route building read it, borrowed from the compiled
/// services (no copies).
pub(super) struct RoutedService<'t> {
    pub(super) name: &'t str,
    /// The labels in force.
    pub(super) labels: &'t ServiceLabels,
    pub(super) endpoints: &'t [SocketAddr],
    pub(super) metrics: &'t Arc<ServiceMetrics>,
    /// The service name its backends share.
    pub(super) backend_name: Arc<str>,
}

impl<'t> RoutedService<'t> {
    /// The routed services (those with labels in force and metrics), in name order.
    pub(super) fn all(services: &'t BTreeMap<String, CompiledService>) -> Vec<Self> {
        services
            .iter()
            .filter_map(|(name, s)| {
                Some(RoutedService {
                    name: name.as_str(),
                    labels: s.labels.as_ref()?,
                    endpoints: &s.endpoints[..],
                    metrics: s.metrics.as_ref()?,
                    backend_name: Arc::from(name.as_str()),
                })
            })
            .collect()
    }
}

/// Where a route is found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RouteKey {
    /// TLS passthrough (routed by SNI) rather than HTTP.
    pub(super) passthrough: bool,
    /// `None`: the default backend.
    pub(super) host: Option<HostPattern>,
    pub(super) context_root: String,
}

/// A route under construction. Its settings are those of its first service (in name order).
pub(super) struct RouteDraft {
    pub(super) rewrite: bool,
    pub(super) policy: BalancePolicy,
    pub(super) sticky: Sticky,
    pub(super) health: HealthPolicy,
    pub(super) protocol: BackendProtocol,
    /// `com.docker.lb.retries` is not `off`.
    pub(super) retries: bool,
    pub(super) check: Option<ActiveCheck>,
    pub(super) services: Vec<String>,
    /// Each endpoint with the index of its service in the routed services.
    pub(super) backends: Vec<(SocketAddr, usize)>,
}

/// The routes to build and each host's redirects.
pub(super) struct Grouped {
    pub(super) drafts: BTreeMap<RouteKey, RouteDraft>,
    pub(super) redirects: FastMap<HostPattern, Vec<Redirect>>,
}

/// Groups `routed` by route; a service that shares a route with different settings gets a
/// warning.
pub(super) fn routes(
    routed: &[RoutedService<'_>],
    warnings: &mut Vec<(String, String)>,
) -> Grouped {
    let mut drafts: BTreeMap<RouteKey, RouteDraft> = BTreeMap::new();
    let mut redirects: FastMap<HostPattern, Vec<Redirect>> = FastMap::default();
    for (idx, s) in routed.iter().enumerate() {
        let l = s.labels;
        let root = l.context_root.clone().unwrap_or_else(|| "/".to_string());
        let hosts: Vec<Option<HostPattern>> = l
            .hosts
            .iter()
            .cloned()
            .map(Some)
            .chain(l.default_backend.then_some(None))
            .collect();
        for host in hosts {
            if let (Some(h), false) = (&host, l.redirects.is_empty()) {
                let mine = l
                    .redirects
                    .iter()
                    .filter(|r| labels::host_matches(h, &r.source_host));
                redirects
                    .entry(h.clone())
                    .or_default()
                    .extend(mine.cloned());
            }
            if l.ssl_passthrough && host.is_none() {
                continue; // a default backend is an HTTP notion; passthrough needs a name
            }
            let key = RouteKey {
                passthrough: l.ssl_passthrough,
                host,
                context_root: root.clone(),
            };
            let draft = drafts.entry(key).or_insert_with(|| RouteDraft::of(l));
            if draft.rewrite != l.context_root_rewrite
                || draft.policy != l.balance
                || draft.retries != (l.retries == Retries::On)
            {
                warnings.push((
                    s.name.to_string(),
                    format!(
                        "shares a route with {} but sets context_root_rewrite/balance/retries differently; {}'s settings apply",
                        draft.services[0], draft.services[0]
                    ),
                ));
            }
            draft.services.push(s.name.to_string());
            // A weight repeats the service's endpoints in the rotation (canary by weight).
            for _ in 0..l.weight.max(1) {
                draft.backends.extend(s.endpoints.iter().map(|a| (*a, idx)));
            }
        }
    }
    Grouped { drafts, redirects }
}

impl RouteDraft {
    /// An empty route with the settings of `l`.
    fn of(l: &ServiceLabels) -> Self {
        RouteDraft {
            rewrite: l.context_root_rewrite,
            policy: l.balance,
            sticky: sticky_of(l),
            health: health_of(l),
            protocol: l.backend_protocol,
            retries: l.retries == Retries::On,
            check: l.health_path.clone().map(|path| ActiveCheck {
                path,
                interval: l
                    .health_interval
                    .unwrap_or(std::time::Duration::from_secs(5)),
            }),
            services: Vec::new(),
            backends: Vec::new(),
        }
    }
}

/// How a service's route pins clients: the cookie wins over `ip_hash`; neither applies in
/// VIP mode (one upstream).
fn sticky_of(l: &ServiceLabels) -> Sticky {
    match (&l.sticky_session_cookie, l.ip_hash, l.backend_mode) {
        (_, _, BackendMode::Vip) => Sticky::None,
        (Some(c), _, _) => Sticky::Cookie(c.as_str().into()),
        (None, true, _) => Sticky::ClientIp,
        (None, false, _) => Sticky::None,
    }
}

/// Passive health from `max_fails`/`fail_timeout`, defaults where unset.
fn health_of(l: &ServiceLabels) -> HealthPolicy {
    let d = HealthPolicy::default();
    HealthPolicy {
        max_fails: l.max_fails.unwrap_or(d.max_fails),
        fail_timeout: l.fail_timeout.unwrap_or(d.fail_timeout),
    }
}
