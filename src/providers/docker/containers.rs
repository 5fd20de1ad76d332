//! Plain containers (the engine is not a swarm manager): each running container with
//! `com.docker.lb.*` labels is a service of one endpoint, its IP on the chosen network.
//! Containers sharing a host are merged into one route by the compiler, like Swarm tasks.

use std::collections::{BTreeMap, HashMap};

use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;

use super::{api, DockerError};
use crate::config::labels::{self, LabelError};
use crate::config::{DesiredState, EndpointSpec, ServiceSpec};

pub(super) async fn snapshot(docker: &Docker) -> Result<DesiredState, DockerError> {
    let filters = HashMap::from([("status", vec!["running"])]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(api("container list"))?;
    let services = list
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .is_some_and(|l| l.keys().any(|k| k.starts_with(labels::PREFIX)))
        })
        .map(container_service)
        .collect();
    Ok(DesiredState {
        services,
        ..Default::default()
    })
}

fn container_service(c: &ContainerSummary) -> ServiceSpec {
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| c.id.clone())
        .unwrap_or_default();
    let labels: BTreeMap<String, String> =
        c.labels.clone().unwrap_or_default().into_iter().collect();
    let networks = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    let wanted = labels.get(labels::NETWORK).map(|v| v.trim().to_string());
    let chosen = match (&wanted, names.as_slice()) {
        (Some(w), _) => networks.get(w).ok_or_else(|| LabelError {
            label: labels::NETWORK.into(),
            value: w.clone(),
            expected: format!("one of the container's networks ({})", join(&names)),
        }),
        (None, [only]) => Ok(&networks[*only]),
        (None, _) => Err(LabelError {
            label: labels::NETWORK.into(),
            value: String::new(),
            expected: format!(
                "a network to choose among the container's networks ({})",
                join(&names)
            ),
        }),
    };
    let (endpoints, errors) = match chosen {
        Ok(settings) => (
            settings
                .ip_address
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .map(|ip| EndpointSpec { ip, port: None })
                .into_iter()
                .collect(),
            Vec::new(),
        ),
        Err(e) => (Vec::new(), vec![e]),
    };
    ServiceSpec {
        name,
        labels,
        endpoints,
        errors,
        last_good: None,
    }
}

fn join(names: &[&String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
