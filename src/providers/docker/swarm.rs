//! Swarm mode: labelled services, their running tasks' IPs on the chosen network (or the
//! service VIP with `backend_mode=vip`).
//!
//! The task list of the API carries no network addresses in bollard's model, so addresses
//! come from the network's verbose inspect (its service-discovery view, the same one Swarm's
//! load balancer uses): a task is an endpoint when Swarm reports it running *and* the
//! network lists it. A task being stopped leaves that list first, before its container
//! stops, which is what makes rolling updates clean.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use bollard::models::{Service, TaskState};
use bollard::query_parameters::{InspectNetworkOptionsBuilder, ListTasksOptionsBuilder};
use bollard::Docker;

use super::{api, DockerError};
use crate::config::labels::{self, BackendMode, LabelError};
use crate::config::{DesiredState, EndpointSpec, ServiceSpec};

/// Reads every labelled service with its endpoints.
pub(super) async fn snapshot(docker: &Docker) -> Result<DesiredState, DockerError> {
    let services = docker
        .list_services(None)
        .await
        .map_err(api("service list"))?;
    let labelled: Vec<&Service> = services.iter().filter(|s| has_lb_labels(s)).collect();
    if labelled.is_empty() {
        return Ok(DesiredState::default());
    }
    let networks = docker
        .list_networks(None)
        .await
        .map_err(api("network list"))?;
    let net_names: HashMap<String, String> = networks
        .iter()
        .filter_map(|n| Some((n.id.clone()?, n.name.clone()?)))
        .collect();
    let filters = HashMap::from([("desired-state", vec!["running"])]);
    let tasks = docker
        .list_tasks(Some(
            ListTasksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(api("task list"))?;
    let running: HashSet<&str> = tasks
        .iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .filter_map(|t| t.id.as_deref())
        .collect();

    // Choose each service's network, then inspect every chosen network once.
    let mut chosen: Vec<(&Service, Result<String, LabelError>)> = Vec::new();
    for s in &labelled {
        chosen.push((s, choose_network(s, &net_names)));
    }
    let mut views: HashMap<String, NetworkView> = HashMap::new();
    for (_, net) in &chosen {
        if let Ok(id) = net {
            if !views.contains_key(id) {
                let opts = InspectNetworkOptionsBuilder::new().verbose(true).build();
                let inspect = docker
                    .inspect_network(id, Some(opts))
                    .await
                    .map_err(api("network inspect"))?;
                views.insert(
                    id.clone(),
                    NetworkView::parse(inspect.services.unwrap_or_default()),
                );
            }
        }
    }

    let mut out = Vec::with_capacity(chosen.len());
    for (svc, net) in chosen {
        let spec = svc.spec.as_ref();
        let name = spec.and_then(|s| s.name.clone()).unwrap_or_default();
        let labels: BTreeMap<String, String> = spec
            .and_then(|s| s.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut errors = Vec::new();
        let endpoints = match net {
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
            Ok(net_id) => {
                let view = views.get(&net_id);
                if labels::parse(&labels).labels.backend_mode == BackendMode::Vip {
                    service_vip(svc, &net_id).into_iter().collect()
                } else {
                    view.map(|v| v.task_ips(&name, &running))
                        .unwrap_or_default()
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
        });
    }
    Ok(DesiredState { services: out })
}

fn has_lb_labels(s: &Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.labels.as_ref())
        .is_some_and(|l| l.keys().any(|k| k.starts_with(labels::PREFIX)))
}

/// Network IDs the service's tasks are attached to.
fn service_networks(s: &Service) -> Vec<String> {
    let spec = s.spec.as_ref();
    let from_template = spec
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.networks.as_ref());
    #[allow(deprecated)]
    let legacy = spec.and_then(|s| s.networks.as_ref());
    from_template
        .or(legacy)
        .map(|n| n.iter().filter_map(|a| a.target.clone()).collect())
        .unwrap_or_default()
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

/// The service-discovery view of one network: per service name, (task id, IP).
struct NetworkView {
    services: HashMap<String, Vec<(String, IpAddr)>>,
}

impl NetworkView {
    fn parse(raw: HashMap<String, serde_json::Value>) -> Self {
        let services = raw
            .into_iter()
            .map(|(name, v)| {
                let tasks = v
                    .get("Tasks")
                    .and_then(|t| t.as_array())
                    .map(|tasks| {
                        tasks
                            .iter()
                            .filter_map(|t| {
                                // "web.2.<task id>" (replicated) or "web.<node>.<task id>" (global)
                                let id = t.get("Name")?.as_str()?.rsplit('.').next()?.to_string();
                                let ip = t.get("EndpointIP")?.as_str()?.parse().ok()?;
                                Some((id, ip))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (name, tasks)
            })
            .collect();
        NetworkView { services }
    }

    fn task_ips(&self, service: &str, running: &HashSet<&str>) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .services
            .get(service)
            .map(|tasks| {
                tasks
                    .iter()
                    .filter(|(id, _)| running.contains(id.as_str()))
                    .map(|(_, ip)| *ip)
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips
    }
}
