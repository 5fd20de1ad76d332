//! Desired state -> [`RoutingTable`]. Pure apart from resolving metric handles: the same
//! input and previous table give the same routes.
//!
//! Each service is validated on its own. A service with a bad label keeps the routes of its
//! last good labels (applied to its current endpoints) if it had any, and is skipped
//! otherwise; either way the error names the service, the label and what was expected, and
//! no other service is affected. Endpoints, pools and round-robin cursors of the previous
//! table are reused, so a swap loses no balancing state or warm connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::Serialize;

use crate::balance::{Backend, BackendSet, Sticky};
use crate::config::labels::{
    self, BackendMode, BackendProtocol, BalancePolicy, HostPattern, LabelError, Redirect,
    ServiceLabels,
};
use crate::config::DesiredState;
use crate::metrics::{Metrics, ServiceMetrics};
use crate::routing::{ActiveCheck, FastMap, Route, RoutingTable, VirtualHost};
use crate::upstream::{HealthPolicy, Upstream};

/// Settings of the compiling instance.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// The service cluster this proxy serves (`""`: the default cluster). Services of other
    /// clusters are ignored entirely, errors included.
    pub cluster: String,
    /// Pool capacity of newly created endpoints.
    pub max_idle_per_endpoint: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            cluster: String::new(),
            max_idle_per_endpoint: crate::config::settings::ProxySettings::default()
                .pool_max_idle_per_endpoint,
        }
    }
}

/// What became of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// Routed with its current labels.
    Active,
    /// Its labels are invalid; routed with its last good labels.
    KeptLastGood,
    /// Its labels are invalid and it had no good routes: not routed.
    Rejected,
    /// No hosts and not a default backend: nothing to route here.
    NotPublished,
}

/// One service as compiled into a table.
#[derive(Clone, Serialize)]
pub struct CompiledService {
    pub status: ServiceStatus,
    /// The labels in force (the last good ones for `KeptLastGood`).
    pub labels: Option<ServiceLabels>,
    pub endpoints: Vec<SocketAddr>,
    pub errors: Vec<LabelError>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    metrics: Option<Arc<ServiceMetrics>>,
}

/// A service whose labels could not be used.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("service {service:?}: {}{}", join_errors(.errors), if *.kept_last_good { " (kept its last good routes)" } else { " (not routed)" })]
pub struct ServiceError {
    pub service: String,
    pub errors: Vec<LabelError>,
    pub kept_last_good: bool,
}

fn join_errors(errors: &[LabelError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors and warnings of one compile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompileReport {
    pub errors: Vec<ServiceError>,
    /// `(service, message)`.
    pub warnings: Vec<(String, String)>,
}

/// A routed service as grouping reads it: name, labels in force, endpoints, metric
/// handles, and the name shared by its backends.
type Routed<'t> = (
    &'t str,
    &'t ServiceLabels,
    &'t [SocketAddr],
    &'t Arc<ServiceMetrics>,
    Arc<str>,
);

/// Routes under construction for one (host, context root).
struct RouteDraft {
    rewrite: bool,
    policy: BalancePolicy,
    sticky: Sticky,
    health: HealthPolicy,
    protocol: BackendProtocol,
    check: Option<ActiveCheck>,
    services: Vec<String>,
    backends: Vec<(SocketAddr, usize)>,
}

/// Compiles desired state against the previous table.
pub fn compile(
    state: &DesiredState,
    previous: &RoutingTable,
    opts: &CompileOptions,
    metrics: &Metrics,
) -> RoutingTable {
    let mut table = RoutingTable {
        generation: previous.generation + 1,
        ..RoutingTable::default()
    };
    let endpoint_hint = previous.upstreams.len().max(state.services.len());
    table.upstreams.reserve(endpoint_hint);
    table.cursors.reserve(state.services.len());
    table.budgets.reserve(state.services.len());
    table.exact.reserve(state.services.len());
    let mut services: Vec<_> = state.services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));

    // 1. Validate each service on its own.
    for spec in services {
        if table.services.contains_key(&spec.name) {
            table
                .report
                .warnings
                .push((spec.name.clone(), "duplicate service name ignored".into()));
            continue;
        }
        let mut parsed = labels::parse(&spec.labels);
        parsed.errors.extend(spec.errors.iter().cloned());
        // A malformed cluster label belongs to no cluster: every cluster reports it.
        if parsed.labels.service_cluster != opts.cluster
            && !parsed.errors.iter().any(|e| {
                e.label == labels::SERVICE_CLUSTER
                    && !crate::snapshot::valid_cluster_name(e.value.trim())
            })
        {
            continue; // another cluster's service: not ours to route or to report
        }
        let endpoints = resolve_endpoints(spec, &parsed.labels, &mut parsed.errors);
        for w in &parsed.warnings {
            table.report.warnings.push((spec.name.clone(), w.clone()));
        }
        let last_good = previous.services.get(&spec.name).filter(|s| {
            matches!(
                s.status,
                ServiceStatus::Active | ServiceStatus::KeptLastGood
            )
        });
        let (status, labels) = if parsed.errors.is_empty() {
            (ServiceStatus::Active, Some(parsed.labels))
        } else if let Some(good) = last_good {
            (ServiceStatus::KeptLastGood, good.labels.clone())
        } else if let Some(good) = published_last_good(spec, &opts.cluster) {
            (ServiceStatus::KeptLastGood, Some(good))
        } else {
            (ServiceStatus::Rejected, None)
        };
        if !parsed.errors.is_empty() {
            table.report.errors.push(ServiceError {
                service: spec.name.clone(),
                errors: parsed.errors.clone(),
                kept_last_good: status == ServiceStatus::KeptLastGood,
            });
        }
        // Last good labels apply to the current endpoints (so scaling still works).
        let endpoints = match (status, &labels) {
            (ServiceStatus::KeptLastGood, Some(l)) => resolve_endpoints(spec, l, &mut Vec::new()),
            _ => endpoints,
        };
        let published = labels.as_ref().is_some_and(|l| l.is_published());
        let status = if status != ServiceStatus::Rejected && !published {
            ServiceStatus::NotPublished
        } else {
            status
        };
        let service_metrics = matches!(status, ServiceStatus::Active | ServiceStatus::KeptLastGood)
            .then(|| {
                previous
                    .services
                    .get(&spec.name)
                    .and_then(|s| s.metrics.clone())
                    .unwrap_or_else(|| metrics.service(&spec.name))
            });
        table.services.insert(
            spec.name.clone(),
            CompiledService {
                status,
                labels,
                endpoints,
                errors: parsed.errors,
                warnings: parsed.warnings,
                metrics: service_metrics,
            },
        );
    }

    // Routed services, in name order, borrowed from the table (no copies).
    let active: Vec<Routed<'_>> = table
        .services
        .iter()
        .filter_map(|(name, s)| {
            Some((
                name.as_str(),
                s.labels.as_ref()?,
                &s.endpoints[..],
                s.metrics.as_ref()?,
                Arc::from(name.as_str()),
            ))
        })
        .collect();

    // 2. Group services by (host, context root); canary = several services in one route.
    // Key: (TLS passthrough?, host or None for the default backend, context root).
    let mut drafts: BTreeMap<(bool, Option<HostPattern>, String), RouteDraft> = BTreeMap::new();
    let mut redirects: FastMap<HostPattern, Vec<Redirect>> = FastMap::default();
    for (idx, &(name, l, endpoints, _, _)) in active.iter().enumerate() {
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
            let draft = drafts
                .entry((l.ssl_passthrough, host, root.clone()))
                .or_insert_with(|| RouteDraft {
                    rewrite: l.context_root_rewrite,
                    policy: l.balance,
                    sticky: sticky_of(l),
                    health: health_of(l),
                    protocol: l.backend_protocol,
                    check: l.health_path.clone().map(|path| ActiveCheck {
                        path,
                        interval: l
                            .health_interval
                            .unwrap_or(std::time::Duration::from_secs(5)),
                    }),
                    services: Vec::new(),
                    backends: Vec::new(),
                });
            if draft.rewrite != l.context_root_rewrite || draft.policy != l.balance {
                table.report.warnings.push((
                    name.to_string(),
                    format!(
                        "shares a route with {} but sets context_root_rewrite/balance differently; {}'s settings apply",
                        draft.services[0], draft.services[0]
                    ),
                ));
            }
            draft.services.push(name.to_string());
            // A weight repeats the service's endpoints in the rotation (canary by weight).
            for _ in 0..l.weight.max(1) {
                draft.backends.extend(endpoints.iter().map(|a| (*a, idx)));
            }
        }
    }

    // 3. Build routes, reusing endpoints and cursors of the previous table.
    let mut routes: FastMap<Option<HostPattern>, Vec<Arc<Route>>> = FastMap::default();
    for ((passthrough, host, root), draft) in drafts {
        let host_name = host
            .as_ref()
            .map_or_else(|| "*".to_string(), ToString::to_string);
        let scheme = if passthrough { "tls://" } else { "" };
        let id: Box<str> = format!("{scheme}{host_name}{root}").into();
        let cursor = previous
            .cursors
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::new(AtomicUsize::new(0)));
        table.cursors.insert(id.clone(), cursor.clone());
        let budget = previous.budgets.get(&id).cloned().unwrap_or_default();
        table.budgets.insert(id.clone(), budget.clone());
        let backends = draft
            .backends
            .iter()
            .map(|&(addr, idx)| {
                let upstream = table
                    .upstreams
                    .entry(addr)
                    .or_insert_with(|| {
                        previous
                            .upstreams
                            .get(&addr)
                            .filter(|u| !u.is_retired())
                            .cloned()
                            .unwrap_or_else(|| Upstream::new(addr, opts.max_idle_per_endpoint))
                    })
                    .clone();
                let (_, _, _, metrics, name) = &active[idx];
                Backend {
                    upstream,
                    service: name.clone(),
                    metrics: (*metrics).clone(),
                }
            })
            .collect();
        let route = Arc::new(Route {
            id,
            context_root: root,
            rewrite: draft.rewrite,
            services: draft.services,
            backends: BackendSet {
                backends,
                policy: draft.policy,
                cursor,
                sticky: draft.sticky,
                health: draft.health,
                protocol: draft.protocol,
                budget,
            },
            check: draft.check,
        });
        match (passthrough, host) {
            (true, Some(h)) => {
                table.passthrough.insert(h.to_string().into(), route);
            }
            (_, host) => routes.entry(host).or_default().push(route),
        }
    }

    // 4. Virtual hosts, longest context root first.
    for (host, mut host_routes) in routes {
        host_routes.sort_by_key(|r| std::cmp::Reverse(r.context_root.len()));
        let vhost = |name: String, redirects: Vec<Redirect>| {
            Arc::new(VirtualHost {
                name,
                redirects,
                routes: host_routes,
            })
        };
        match host {
            None => table.default = Some(vhost("*".into(), Vec::new())),
            Some(h) => {
                let r = redirects.remove(&h).unwrap_or_default();
                match &h {
                    HostPattern::Exact(n) => table
                        .exact
                        .insert(n.as_str().into(), vhost(h.to_string(), r)),
                    HostPattern::Wildcard(s) => table
                        .wildcard
                        .insert(s.as_str().into(), vhost(h.to_string(), r)),
                };
            }
        }
    }
    // Hosts with redirects but no HTTP route (TLS passthrough hosts): their HTTP port
    // still answers the redirects, which Interlock could not do.
    for (h, r) in redirects.into_iter().filter(|(_, r)| !r.is_empty()) {
        let vhost = Arc::new(VirtualHost {
            name: h.to_string(),
            redirects: r,
            routes: Vec::new(),
        });
        match &h {
            HostPattern::Exact(n) => table.exact.entry(n.as_str().into()).or_insert(vhost),
            HostPattern::Wildcard(s) => table.wildcard.entry(s.as_str().into()).or_insert(vhost),
        };
    }
    table
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

/// Endpoint addresses: each endpoint's own port, else `com.docker.lb.port`.
/// The last good labels a provider published with a service (the controller keeps them
/// across restarts), when they are valid, of this cluster, and give the service endpoints.
fn published_last_good(spec: &crate::config::ServiceSpec, cluster: &str) -> Option<ServiceLabels> {
    let parsed = labels::parse(spec.last_good.as_ref()?);
    let mut errors = parsed.errors;
    resolve_endpoints(spec, &parsed.labels, &mut errors);
    (errors.is_empty() && parsed.labels.service_cluster == cluster).then_some(parsed.labels)
}

/// The validation errors of one service on its own (labels, provider, endpoints): what
/// decides whether its labels are good, as [`compile`] decides it.
pub fn service_errors(spec: &crate::config::ServiceSpec) -> Vec<LabelError> {
    let mut parsed = labels::parse(&spec.labels);
    parsed.errors.extend(spec.errors.iter().cloned());
    resolve_endpoints(spec, &parsed.labels, &mut parsed.errors);
    parsed.errors
}

fn resolve_endpoints(
    spec: &crate::config::ServiceSpec,
    l: &ServiceLabels,
    errors: &mut Vec<LabelError>,
) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(spec.endpoints.len());
    for ep in &spec.endpoints {
        match ep.port.or(l.port) {
            Some(port) => out.push(SocketAddr::new(ep.ip, port)),
            None if l.is_published() => {
                if errors.iter().any(|e| e.label == labels::PORT) {
                    return Vec::new(); // already reported as an invalid port
                }
                errors.push(LabelError {
                    label: labels::PORT.into(),
                    value: String::new(),
                    expected: "the port the service listens on (required)".into(),
                });
                return Vec::new();
            }
            None => return Vec::new(),
        }
    }
    out.sort();
    out.dedup();
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointSpec, ServiceSpec};
    use crate::routing::Decision;

    #[test]
    fn redirect_source_under_a_wildcard_host_redirects() {
        let spec = ServiceSpec {
            name: "web".into(),
            labels: [
                (labels::HOSTS, "*.example.com"),
                (
                    labels::REDIRECTS,
                    "http://old.example.com,https://new.example.com",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            endpoints: vec![EndpointSpec {
                ip: [127, 0, 0, 1].into(),
                port: Some(9001),
            }],
            errors: Vec::new(),
            last_good: None,
        };
        let state = DesiredState {
            services: vec![spec],
        };
        let table = compile(
            &state,
            &RoutingTable::default(),
            &CompileOptions::default(),
            &Metrics::new(),
        );
        assert!(table.report.errors.is_empty(), "{:?}", table.report.errors);
        match table.route("http", "old.example.com", "/a?b=1") {
            Decision::Redirect { status, location } => {
                assert_eq!(
                    (status, location.as_str()),
                    (302, "https://new.example.com/a?b=1")
                );
            }
            _ => panic!("old.example.com was not redirected"),
        }
        assert!(matches!(
            table.route("http", "app.example.com", "/"),
            Decision::Forward(_)
        ));
    }
}
