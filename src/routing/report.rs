//! What a compile made of each service, carried by the table it built: each service's
//! status, labels in force and errors (for last-good reuse by the next compile, `/routes`
//! and `interlock check`), and the compile's errors and warnings.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::config::labels::{LabelError, ServiceLabels};
use crate::metrics::ServiceMetrics;

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

impl ServiceStatus {
    /// Routed (with its current or its last good labels).
    pub fn is_routed(self) -> bool {
        matches!(self, ServiceStatus::Active | ServiceStatus::KeptLastGood)
    }
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
    /// The service's metric handles while it is routed; the next compile reuses them.
    #[serde(skip)]
    pub(crate) metrics: Option<Arc<ServiceMetrics>>,
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

impl CompileReport {
    /// Logs the errors that `previous` did not have (same service, errors and outcome), so
    /// each is logged once, when it first appears; `cluster` names the cluster compiled
    /// when the instance compiles several.
    pub fn log_new_errors(&self, previous: &CompileReport, cluster: Option<&str>) {
        for e in &self.errors {
            if !previous.errors.iter().any(|o| {
                o.service == e.service
                    && o.errors == e.errors
                    && o.kept_last_good == e.kept_last_good
            }) {
                tracing::error!(
                    cluster = cluster.map(tracing::field::display),
                    service = %e.service,
                    kept_last_good = e.kept_last_good,
                    "{e}"
                );
            }
        }
    }

    /// Logs the warnings that `previous` did not have, once each.
    pub fn log_new_warnings(&self, previous: &CompileReport) {
        for w in &self.warnings {
            if !previous.warnings.contains(w) {
                tracing::warn!(service = %w.0, "{}", w.1);
            }
        }
    }
}
