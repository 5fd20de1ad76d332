//! How many tasks of each interlock controller service run in the swarm. ACME wants one
//! controller: replicas with their own state each order their own certificates, and the CA's
//! challenges reach proxies that follow another replica. The controller warns when it sees
//! more (see `controller::warn_acme_replicas`).

use std::collections::BTreeMap;

use bollard::Docker;

use super::{api, proxies, tasks, DockerError};

/// Per controller service (by name): its running tasks.
pub async fn controller_replicas(docker: &Docker) -> Result<BTreeMap<String, usize>, DockerError> {
    let services = docker
        .list_services(None)
        .await
        .map_err(api("service list"))?;
    let controllers: BTreeMap<&str, &str> = services
        .iter()
        .filter(|s| proxies::is_controller(s))
        .filter_map(|s| Some((s.id.as_deref()?, s.spec.as_ref()?.name.as_deref()?)))
        .collect();
    let mut out: BTreeMap<String, usize> = controllers
        .values()
        .map(|name| (name.to_string(), 0))
        .collect();
    if controllers.is_empty() {
        return Ok(out);
    }
    for t in tasks::list(&docker.client_version().to_string()).await? {
        if let Some(name) = controllers.get(t.service_id.as_str()).filter(|_| t.running) {
            *out.entry(name.to_string()).or_default() += 1;
        }
    }
    Ok(out)
}
