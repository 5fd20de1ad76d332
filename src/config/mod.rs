//! The desired-state model every provider produces and the compiler consumes, plus the
//! typed form of the `com.docker.lb.*` labels and the proxy's own settings.
//!
//! A provider knows nothing about routing: it reports services, their raw labels and the
//! addresses of their running endpoints. Everything label-specific happens in [`labels`].

pub mod labels;
pub mod settings;
pub mod tls;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Everything the providers currently know: the input of one compile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DesiredState {
    pub services: Vec<ServiceSpec>,
    /// Certificates and ACME challenge answers that come with the state (from the
    /// controller, or this instance's ACME client), not from this instance's files.
    #[serde(default, skip_serializing_if = "tls::TlsMaterial::is_empty")]
    pub tls: tls::TlsMaterial,
    /// When the change that made this state happened, as Unix seconds: the Docker event,
    /// the services file's modification, or the poll that found it. Not content: two states
    /// that differ only here are equal. Convergence is measured from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<f64>,
}

impl PartialEq for DesiredState {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services && self.tls == other.tls
    }
}

impl Eq for DesiredState {}

/// Now, as Unix seconds (what [`DesiredState::observed_at`] holds).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One service (a Swarm service, a container, or an entry of the TOML file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name; errors and metrics are reported under it.
    pub name: String,
    /// Raw labels; only the `com.docker.lb.*` ones are read.
    pub labels: BTreeMap<String, String>,
    /// Running endpoints (task IPs, a VIP, or file entries).
    pub endpoints: Vec<EndpointSpec>,
    /// Label problems only the provider can see (e.g. `com.docker.lb.network` names a
    /// network the service is not attached to); compile reports them like parse errors.
    pub errors: Vec<labels::LabelError>,
    /// The labels this service last had without errors, when its current ones have some:
    /// the controller keeps them (across its restarts too) so that a proxy that starts
    /// while a label is broken still routes the service as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<BTreeMap<String, String>>,
}

/// Where one running instance of a service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub ip: IpAddr,
    /// Overrides `com.docker.lb.port` (host-published ports, file entries with a port).
    pub port: Option<u16>,
}
