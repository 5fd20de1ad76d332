//! The labels in force for a service: its own when they are valid, else its last good ones
//! (those of the previous table, else those its provider published), else none.

use crate::config::labels::{self, LabelError, ServiceLabels};
use crate::config::ServiceSpec;
use crate::routing::{RoutingTable, ServiceStatus};

use super::endpoints;

/// The status and labels in force of `spec`, whose own labels parsed to `own` with `errors`.
pub(super) fn labels_in_force(
    spec: &ServiceSpec,
    own: ServiceLabels,
    errors: &[LabelError],
    previous: &RoutingTable,
    cluster: &str,
) -> (ServiceStatus, Option<ServiceLabels>) {
    let last_good = previous
        .services
        .get(&spec.name)
        .filter(|s| s.status.is_routed());
    if errors.is_empty() {
        (ServiceStatus::Active, Some(own))
    } else if let Some(good) = last_good {
        (ServiceStatus::KeptLastGood, good.labels.clone())
    } else if let Some(good) = published_last_good(spec, cluster) {
        (ServiceStatus::KeptLastGood, Some(good))
    } else {
        (ServiceStatus::Rejected, None)
    }
}

/// The last good labels a provider published with a service (the controller keeps them
/// across restarts), when they are valid, of this cluster, and give the service endpoints.
fn published_last_good(spec: &ServiceSpec, cluster: &str) -> Option<ServiceLabels> {
    let parsed = labels::parse(spec.last_good.as_ref()?);
    let mut errors = parsed.errors;
    endpoints::resolve(spec, &parsed.labels, &mut errors);
    (errors.is_empty() && parsed.labels.service_cluster == cluster).then_some(parsed.labels)
}
