//! The interlock proxies deployed in the swarm, found by their command line: a service
//! started with `proxy` (as in the example stack) that names a controller (`--controller`
//! or `INTERLOCK_CONTROLLER`) serves the cluster of its `--cluster` (or
//! `INTERLOCK_SERVICE_CLUSTER`), through the networks it is attached to.
//!
//! With that, a service whose traffic could never arrive is reported as that service's
//! error instead of being accepted silently: a cluster that no proxy serves, or a network
//! that the cluster's proxies are not attached to (traffic would leave through the default
//! route). When the swarm runs no proxy service (proxies outside Swarm, the all-in-one
//! role), nothing is checked: there is nothing to check against.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::Service;

use super::service_networks;
use crate::config::labels::{self, LabelError};

/// Per cluster: the proxy services serving it and the network IDs they share with apps.
#[derive(Debug, Default)]
pub struct ProxyServices {
    clusters: BTreeMap<String, Cluster>,
    /// Networks of the controller services (the control plane's): never suggested to apps.
    control: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Cluster {
    services: BTreeSet<String>,
    networks: BTreeSet<String>,
}

impl ProxyServices {
    pub fn find(services: &[Service]) -> Self {
        let mut out = ProxyServices::default();
        for s in services {
            if role(s).as_deref() == Some("controller") {
                out.control.extend(service_networks(s));
            }
            let Some(cluster) = proxy_cluster(s) else {
                continue;
            };
            let c = out.clusters.entry(cluster).or_default();
            c.services.insert(
                s.spec
                    .as_ref()
                    .and_then(|s| s.name.clone())
                    .unwrap_or_default(),
            );
            c.networks.extend(service_networks(s));
        }
        out
    }

    /// The error, if any, of routing a service of `cluster` through network `net_id`
    /// (`named`: its `com.docker.lb.network` label, if set).
    pub fn check(
        &self,
        cluster: &str,
        net_id: &str,
        named: Option<&str>,
        names: &HashMap<String, String>,
    ) -> Option<LabelError> {
        if self.clusters.is_empty() {
            return None;
        }
        let name_of = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
        let Some(c) = self.clusters.get(cluster) else {
            let served = self
                .clusters
                .keys()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let expected = if cluster.is_empty() {
                format!(
                    "a cluster served by a proxy service: no proxy serves services without {} (the default cluster); label this service with one of {served}, or deploy a proxy with --cluster \"\"",
                    labels::SERVICE_CLUSTER
                )
            } else {
                format!(
                    "a cluster served by a proxy service ({served}); no proxy service runs with --cluster {cluster}"
                )
            };
            return Some(LabelError {
                label: labels::SERVICE_CLUSTER.into(),
                value: cluster.to_string(),
                expected,
            });
        };
        if c.networks.contains(net_id) {
            return None;
        }
        let for_apps: Vec<String> = c
            .networks
            .iter()
            .filter(|id| !self.control.contains(*id))
            .map(|id| name_of(id))
            .filter(|n| n != "ingress")
            .collect();
        let shared = if for_apps.is_empty() {
            "none but the control plane's: attach them to an apps network".to_string()
        } else {
            for_apps.join(", ")
        };
        let proxies = c.services.iter().cloned().collect::<Vec<_>>().join(", ");
        let net = name_of(net_id);
        Some(LabelError {
            label: labels::NETWORK.into(),
            value: named.unwrap_or_default().to_string(),
            expected: format!(
                "a network the proxies of cluster {cluster:?} ({proxies}) are attached to ({shared}); \
                 the service's network {net} is not one of them: attach the service to one \
                 (docker service update --network-add NETWORK SERVICE) and set {} to it",
                labels::NETWORK
            ),
        })
    }
}

/// The spec of a service's container.
fn container(s: &Service) -> Option<&bollard::models::TaskSpecContainerSpec> {
    s.spec
        .as_ref()?
        .task_template
        .as_ref()?
        .container_spec
        .as_ref()
}

/// The command line of a service's tasks from its role on (the first word, after the
/// binary's own path when the command names it).
fn command_line(s: &Service) -> Option<Vec<String>> {
    let c = container(s)?;
    let words: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect();
    let start = words.iter().position(|w| !w.contains('/'))?;
    Some(words[start..].to_vec())
}

fn role(s: &Service) -> Option<String> {
    command_line(s)?.into_iter().next()
}

/// Whether `s` runs interlock's controller role.
pub(super) fn is_controller(s: &Service) -> bool {
    role(s).as_deref() == Some("controller")
}

/// The cluster a service serves if it is an interlock proxy.
fn proxy_cluster(s: &Service) -> Option<String> {
    let c = container(s)?;
    let role = command_line(s)?;
    if role.first().map(String::as_str) != Some("proxy") {
        return None;
    }
    let env: HashMap<&str, &str> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.split_once('='))
        .collect();
    let flag = |name: &str| -> Option<String> {
        let eq = format!("{name}=");
        role.iter().enumerate().find_map(|(i, w)| {
            if w == name {
                role.get(i + 1).cloned()
            } else {
                w.strip_prefix(&eq).map(str::to_string)
            }
        })
    };
    flag("--controller").or_else(|| env.get("INTERLOCK_CONTROLLER").map(|v| v.to_string()))?;
    Some(
        flag("--cluster")
            .or_else(|| env.get("INTERLOCK_SERVICE_CLUSTER").map(|v| v.to_string()))
            .unwrap_or_default()
            .trim()
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{NetworkAttachmentConfig, ServiceSpec, TaskSpec, TaskSpecContainerSpec};

    fn service(name: &str, args: &[&str], env: &[&str], nets: &[&str]) -> Service {
        Service {
            spec: Some(ServiceSpec {
                name: Some(name.into()),
                task_template: Some(TaskSpec {
                    container_spec: Some(TaskSpecContainerSpec {
                        args: Some(args.iter().map(|s| s.to_string()).collect()),
                        env: Some(env.iter().map(|s| s.to_string()).collect()),
                        ..Default::default()
                    }),
                    networks: Some(
                        nets.iter()
                            .map(|n| NetworkAttachmentConfig {
                                target: Some(n.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn names() -> HashMap<String, String> {
        [
            ("n1", "control"),
            ("n2", "apps-prod"),
            ("n3", "apps-dev"),
            ("n4", "demo"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn proxies_are_found_by_role_controller_and_cluster() {
        let services = [
            service(
                "prod",
                &["proxy", "--cluster", "prod"],
                &["INTERLOCK_CONTROLLER=https://controller:7443"],
                &["n1", "n2"],
            ),
            service(
                "dev",
                &["proxy", "--controller=https://c:7443", "--cluster=dev"],
                &[],
                &["n1", "n3"],
            ),
            service(
                "default",
                &["/interlock", "proxy"],
                &["INTERLOCK_CONTROLLER=c"],
                &["n1", "n4"],
            ),
            // Not proxies: no controller, another role, another program.
            service("noctl", &["proxy", "--cluster", "x"], &[], &["n4"]),
            service("ctl", &["controller", "--docker"], &[], &["n1"]),
            service("app", &["serve"], &["INTERLOCK_CONTROLLER=c"], &["n2"]),
        ];
        let p = ProxyServices::find(&services);
        assert_eq!(
            p.clusters.keys().collect::<Vec<_>>(),
            ["", "dev", "prod"],
            "{p:?}"
        );
        assert!(p.check("prod", "n2", None, &names()).is_none());
        assert!(p.check("", "n4", Some("demo"), &names()).is_none());
        let e = p.check("prod", "n3", Some("apps-dev"), &names()).unwrap();
        assert_eq!(e.label, labels::NETWORK);
        assert_eq!(e.value, "apps-dev");
        assert!(e.expected.contains("are attached to (apps-prod)"), "{e}");
        let e = p.check("qa", "n2", None, &names()).unwrap();
        assert_eq!(e.label, labels::SERVICE_CLUSTER);
        assert!(e.expected.contains("\"dev\", \"prod\""), "{e}");
    }

    #[test]
    fn without_proxy_services_nothing_is_checked_and_the_default_cluster_is_named() {
        assert!(ProxyServices::default()
            .check("", "n4", None, &names())
            .is_none());
        let only_prod = ProxyServices::find(&[service(
            "prod",
            &["proxy", "--cluster", "prod"],
            &["INTERLOCK_CONTROLLER=c"],
            &["n2"],
        )]);
        let e = only_prod.check("", "n4", None, &names()).unwrap();
        assert!(
            e.expected.contains("no proxy serves services without"),
            "{e}"
        );
    }
}
