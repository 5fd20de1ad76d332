//! The routing snapshot: what a controller serves to the proxies of one service cluster,
//! and how the desired state is partitioned into clusters.
//!
//! A snapshot is desired state, not a compiled table: every proxy compiles it itself with
//! the same per-service validation, so a proxy keeps its pools, balancing state and the
//! last good routes of a service whose labels broke, exactly as in the all-in-one role.
//! Only `com.docker.lb.*` labels leave the controller.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::labels::SERVICE_CLUSTER;
use crate::config::{DesiredState, ServiceSpec};

/// The prefix of every label interlock reads; other labels never leave the controller.
pub const LABEL_PREFIX: &str = "com.docker.lb.";

/// One cluster's services at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The service cluster (`""`: services without `com.docker.lb.service_cluster`).
    pub cluster: String,
    /// Changes whenever the controller restarts; with `version` it names one snapshot.
    pub epoch: String,
    /// Grows by one with every change of this cluster's services (not of other clusters').
    pub version: u64,
    pub services: Vec<ServiceSpec>,
}

impl Snapshot {
    /// The HTTP entity tag of this snapshot.
    pub fn etag(&self) -> String {
        etag(&self.epoch, self.version)
    }
}

/// The entity tag of version `version` of controller incarnation `epoch`.
pub fn etag(epoch: &str, version: u64) -> String {
    format!("\"{epoch}-{version}\"")
}

/// The services of `state` by service cluster, sorted by name, with only interlock's
/// labels. The key is the raw label value: a service whose cluster label is malformed
/// lands under a name no proxy can ask for, so it reaches no cluster at all.
pub fn partition(state: &DesiredState) -> BTreeMap<String, Vec<ServiceSpec>> {
    let mut clusters: BTreeMap<String, Vec<ServiceSpec>> = BTreeMap::new();
    for spec in &state.services {
        let cluster = spec
            .labels
            .get(SERVICE_CLUSTER)
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let labels = spec
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with(LABEL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        clusters.entry(cluster).or_default().push(ServiceSpec {
            labels,
            ..spec.clone()
        });
    }
    for services in clusters.values_mut() {
        services.sort_by(|a, b| a.name.cmp(&b.name));
    }
    clusters
}

/// Whether `name` may name a service cluster (the rule of the label, and a DNS label or
/// dotted name so it fits in a certificate).
pub fn valid_cluster_name(name: &str) -> bool {
    name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointSpec;

    fn svc(name: &str, labels: &[(&str, &str)]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            endpoints: vec![EndpointSpec {
                ip: "10.0.0.1".parse().unwrap(),
                port: None,
            }],
            errors: vec![],
            last_good: None,
        }
    }

    #[test]
    fn partitions_by_cluster_label_and_keeps_only_interlock_labels() {
        let state = DesiredState {
            services: vec![
                svc("b", &[(SERVICE_CLUSTER, "prod"), ("secret.password", "x")]),
                svc("a", &[(SERVICE_CLUSTER, "prod")]),
                svc("c", &[(SERVICE_CLUSTER, "dev")]),
                svc("d", &[("com.docker.lb.hosts", "d.local")]),
                svc("e", &[(SERVICE_CLUSTER, "bad name!")]),
            ],
        };
        let p = partition(&state);
        let names = |c: &str| p[c].iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
        assert_eq!(names("prod"), ["a", "b"]);
        assert_eq!(names("dev"), ["c"]);
        assert_eq!(names(""), ["d"]);
        assert_eq!(names("bad name!"), ["e"]);
        assert!(!valid_cluster_name("bad name!"));
        assert!(p["prod"][1]
            .labels
            .keys()
            .all(|k| k.starts_with(LABEL_PREFIX)));
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let s = Snapshot {
            cluster: "prod".into(),
            epoch: "e1".into(),
            version: 7,
            services: vec![svc("a", &[(SERVICE_CLUSTER, "prod")])],
        };
        let back: Snapshot = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.etag(), "\"e1-7\"");
    }
}
