//! A service's endpoint addresses under a set of labels.

use std::net::SocketAddr;

use crate::config::labels::{self, LabelError, ServiceLabels};
use crate::config::ServiceSpec;

/// Endpoint addresses: each endpoint's own port, else `com.docker.lb.port`. A published
/// service with an endpoint that has neither gets a `port` error (once) and no endpoints.
pub(super) fn resolve(
    spec: &ServiceSpec,
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
