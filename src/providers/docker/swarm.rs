//! Swarm mode: labelled services, their running tasks' IPs on the chosen network (or the
//! service VIP with `backend_mode=vip`).
//!
//! Addresses come from the task list's `NetworksAttachments` (see [`tasks`]), which Swarm
//! keeps for the tasks of every node. A task is an endpoint while Swarm wants it running
//! *and* reports it running: a task being stopped (rolling update, drain, scale down) gets
//! desired state `shutdown` the moment the orchestrator decides, before its container is
//! told to stop, so it leaves the routes first.
//!
//! For the controller and `check`, when the swarm runs interlock proxies (services started
//! with `proxy`, see [`proxies`]), each service is also checked against them: its cluster
//! must have proxies, and its network must be one they are attached to, or traffic could
//! never reach its tasks.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bollard::models::Service;
use bollard::Docker;

use super::proxies::ProxyServices;
use super::{api, service_networks, tasks, DockerError};
use crate::config::labels::{self, BackendMode, LabelError};
use crate::config::{DesiredState, EndpointSpec, ServiceSpec};

/// The services and networks of the swarm as last listed. They change only with the
/// events the provider follows (service, network), so a task poll reuses them and asks the
/// engine for the task list alone.
pub(super) struct Listing {
    services: Vec<Service>,
    /// Network ID -> name (not listed when no service is labelled).
    net_names: HashMap<String, String>,
}

/// Lists the services, and the networks when a service is labelled.
pub(super) async fn list(docker: &Docker) -> Result<Listing, DockerError> {
    let services = docker
        .list_services(None)
        .await
        .map_err(api("service list"))?;
    let net_names = if services.iter().any(has_lb_labels) {
        docker
            .list_networks(None)
            .await
            .map_err(api("network list"))?
            .iter()
            .filter_map(|n| Some((n.id.clone()?, n.name.clone()?)))
            .collect()
    } else {
        HashMap::new()
    };
    Ok(Listing {
        services,
        net_names,
    })
}

/// Every labelled service of `listing` with the addresses of its running tasks, as the
/// engine lists them now.
pub(super) async fn snapshot(
    docker: &Docker,
    listing: &Listing,
    check_proxies: bool,
) -> Result<DesiredState, DockerError> {
    let Listing {
        services,
        net_names,
    } = listing;
    let labelled: Vec<&Service> = services.iter().filter(|s| has_lb_labels(s)).collect();
    if labelled.is_empty() {
        return Ok(DesiredState::default());
    }
    let tasks = tasks::list(&docker.client_version().to_string()).await?;
    // Per service ID: (network ID, address) of each running task.
    let mut addresses: HashMap<&str, Vec<(&str, IpAddr)>> = HashMap::new();
    for t in tasks.iter().filter(|t| t.running) {
        addresses
            .entry(t.service_id.as_str())
            .or_default()
            .extend(t.addresses.iter().map(|(n, ip)| (n.as_str(), *ip)));
    }
    let proxies = if check_proxies {
        ProxyServices::find(services)
    } else {
        ProxyServices::default()
    };

    let mut out = Vec::with_capacity(labelled.len());
    for svc in labelled {
        let spec = svc.spec.as_ref();
        let name = spec.and_then(|s| s.name.clone()).unwrap_or_default();
        let labels: BTreeMap<String, String> = spec
            .and_then(|s| s.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut errors = Vec::new();
        let endpoints = match choose_network(svc, net_names) {
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
            Ok(net_id) => {
                let cluster = labels
                    .get(labels::SERVICE_CLUSTER)
                    .map(|c| c.trim())
                    .unwrap_or_default();
                let named = labels.get(labels::NETWORK).map(|v| v.trim());
                errors.extend(proxies.check(cluster, &net_id, named, net_names));
                if labels::parse(&labels).labels.backend_mode == BackendMode::Vip {
                    service_vip(svc, &net_id).into_iter().collect()
                } else {
                    let id = svc.id.as_deref().unwrap_or_default();
                    let mut ips: Vec<IpAddr> = addresses
                        .get(id)
                        .map(|a| {
                            a.iter()
                                .filter(|(n, _)| *n == net_id)
                                .map(|(_, ip)| *ip)
                                .collect()
                        })
                        .unwrap_or_default();
                    ips.sort();
                    ips.dedup();
                    ips
                }
            }
        };
        out.push(ServiceSpec {
            name,
            labels,
            endpoints: endpoints
                .into_iter()
                .map(|ip| EndpointSpec { ip, port: None })
                .collect(),
            errors,
            last_good: None,
        });
    }
    Ok(DesiredState {
        services: out,
        ..Default::default()
    })
}

fn has_lb_labels(s: &Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.labels.as_ref())
        .is_some_and(|l| l.keys().any(|k| k.starts_with(labels::PREFIX)))
}

/// The network whose task IPs are the service's upstreams: `com.docker.lb.network` if set
/// (it must be one of the service's networks), else the service's only network.
fn choose_network(s: &Service, names: &HashMap<String, String>) -> Result<String, LabelError> {
    let attached = service_networks(s);
    let name_of = |id: &String| names.get(id).cloned().unwrap_or_else(|| id.clone());
    let label = s
        .spec
        .as_ref()
        .and_then(|s| s.labels.as_ref())
        .and_then(|l| l.get(labels::NETWORK))
        .map(|v| v.trim().to_string());
    let list = || attached.iter().map(name_of).collect::<Vec<_>>().join(", ");
    match label {
        Some(wanted) => attached
            .iter()
            .find(|id| **id == wanted || name_of(id) == wanted)
            .cloned()
            .ok_or_else(|| LabelError {
                label: labels::NETWORK.into(),
                value: wanted,
                expected: format!(
                    "one of the service's networks ({})",
                    if attached.is_empty() {
                        "none".into()
                    } else {
                        list()
                    }
                ),
            }),
        None => match attached.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(LabelError {
                label: labels::NETWORK.into(),
                value: String::new(),
                expected: "the service attached to a network the proxy can reach (it has none)"
                    .into(),
            }),
            _ => Err(LabelError {
                label: labels::NETWORK.into(),
                value: String::new(),
                expected: format!(
                    "a network to choose among the service's networks ({})",
                    list()
                ),
            }),
        },
    }
}

/// The service's virtual IP on a network.
fn service_vip(s: &Service, net_id: &str) -> Option<IpAddr> {
    s.endpoint
        .as_ref()?
        .virtual_ips
        .as_ref()?
        .iter()
        .find(|v| v.network_id.as_deref() == Some(net_id))
        .and_then(|v| v.addr.as_deref())
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
}
