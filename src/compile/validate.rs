//! Step 1: each service on its own. Its labels are parsed and checked with its endpoints;
//! broken labels fall back to the last good ones ([`fallback`](super::fallback)); the
//! outcome is one [`CompiledService`] per service of this cluster, and the report.

use std::collections::BTreeMap;

use crate::config::labels::{self, LabelError, Parsed};
use crate::config::{DesiredState, ServiceSpec};
use crate::metrics::Metrics;
use crate::routing::{CompileReport, CompiledService, RoutingTable, ServiceError, ServiceStatus};

use super::{endpoints, fallback, reuse, CompileOptions};

/// Every service of the cluster, by name, and what was wrong with them.
pub(super) struct Validated {
    pub(super) services: BTreeMap<String, CompiledService>,
    pub(super) report: CompileReport,
}

/// Validates the services of `state` (in name order; a repeated name is ignored).
pub(super) fn services(
    state: &DesiredState,
    previous: &RoutingTable,
    opts: &CompileOptions,
    metrics: &Metrics,
) -> Validated {
    let mut out = Validated {
        services: BTreeMap::new(),
        report: CompileReport::default(),
    };
    let mut specs: Vec<_> = state.services.iter().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    for spec in specs {
        if out.services.contains_key(&spec.name) {
            out.report
                .warnings
                .push((spec.name.clone(), "duplicate service name ignored".into()));
            continue;
        }
        if let Some(compiled) = service(spec, previous, opts, metrics, &mut out.report) {
            out.services.insert(spec.name.clone(), compiled);
        }
    }
    out
}

/// One service, or `None` when it belongs to another cluster (not ours to route or to
/// report). Its errors and warnings go to `report`.
fn service(
    spec: &ServiceSpec,
    previous: &RoutingTable,
    opts: &CompileOptions,
    metrics: &Metrics,
    report: &mut CompileReport,
) -> Option<CompiledService> {
    let mut parsed = labels::parse(&spec.labels);
    parsed.errors.extend(spec.errors.iter().cloned());
    if !in_cluster(&parsed, &opts.cluster) {
        return None;
    }
    let endpoints = endpoints::resolve(spec, &parsed.labels, &mut parsed.errors);
    for w in &parsed.warnings {
        report.warnings.push((spec.name.clone(), w.clone()));
    }
    let Parsed {
        labels: own,
        errors,
        warnings,
    } = parsed;
    let (status, labels) = fallback::labels_in_force(spec, own, &errors, previous, &opts.cluster);
    if !errors.is_empty() {
        report.errors.push(ServiceError {
            service: spec.name.clone(),
            errors: errors.clone(),
            kept_last_good: status == ServiceStatus::KeptLastGood,
        });
    }
    // Last good labels apply to the current endpoints (so scaling still works).
    let endpoints = match (status, &labels) {
        (ServiceStatus::KeptLastGood, Some(l)) => endpoints::resolve(spec, l, &mut Vec::new()),
        _ => endpoints,
    };
    let published = labels.as_ref().is_some_and(|l| l.is_published());
    let status = if status != ServiceStatus::Rejected && !published {
        ServiceStatus::NotPublished
    } else {
        status
    };
    let metrics = status
        .is_routed()
        .then(|| reuse::service_metrics(previous, &spec.name, metrics));
    Some(CompiledService {
        status,
        labels,
        endpoints,
        errors,
        warnings,
        metrics,
    })
}

/// Whether a service belongs to `cluster`. A malformed cluster label belongs to no
/// cluster: every cluster reports it.
fn in_cluster(parsed: &Parsed, cluster: &str) -> bool {
    parsed.labels.service_cluster == cluster
        || parsed.errors.iter().any(|e| {
            e.label == labels::SERVICE_CLUSTER
                && !crate::snapshot::valid_cluster_name(e.value.trim())
        })
}

/// The validation errors of one service on its own (labels, provider, endpoints): what
/// decides whether its labels are good, as [`compile`](super::compile) decides it.
pub fn service_errors(spec: &ServiceSpec) -> Vec<LabelError> {
    let mut parsed = labels::parse(&spec.labels);
    parsed.errors.extend(spec.errors.iter().cloned());
    endpoints::resolve(spec, &parsed.labels, &mut parsed.errors);
    parsed.errors
}
