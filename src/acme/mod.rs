//! Automatic certificates from an ACME CA (RFC 8555), for services labelled
//! `com.docker.lb.ssl_acme=true`. Only the controller (or the all-in-one process) runs this
//! client: proxies never talk to the CA and never see the account key. What it produces
//! ([`crate::config::tls::TlsMaterial`]: certificates, challenge answers, problems) travels
//! with the desired state, so each proxy gets only its own cluster's share over the
//! mutual-TLS snapshot channel and swaps it in live.
//!
//! `http` is the client's HTTPS, `store` the state directory, `order` one order,
//! `manager` the scheduler (issue, renew at 2/3 of the lifetime, back off).

pub(crate) mod http;
mod manager;
pub mod order;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::labels;
use crate::config::tls::{acme_hosts, AcmeStatus, TlsMaterial};
use crate::config::{DesiredState, ServiceSpec};
use crate::metrics::{Metrics, Part};
pub use order::ChallengeKind;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The ACME client's settings (`--acme-*`).
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    /// Trust this PEM (a private CA's root) for the directory's HTTPS.
    pub ca_root: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub challenge: ChallengeKind,
    /// How long after publishing a challenge's answer the CA is asked to validate: the
    /// answer must have reached every proxy (the controller role waits longer).
    pub propagation: Duration,
}

/// The client as a role sees it: tell it the state, follow what it publishes.
pub struct Acme {
    wanted: watch::Sender<BTreeMap<String, Vec<String>>>,
    material: watch::Receiver<TlsMaterial>,
    /// False: the client is off; services that ask get an error saying so.
    running: bool,
    /// When off: the sender of `material`, kept so that the channel stays open (nothing
    /// is ever sent on it).
    _idle: Option<watch::Sender<TlsMaterial>>,
}

impl Acme {
    /// Starts the client with `cfg`, or an `Acme` that is off (`None`).
    pub fn start(cfg: Option<AcmeConfig>, metrics: &Arc<Metrics>) -> anyhow::Result<Arc<Acme>> {
        let (wanted, wanted_rx) = watch::channel(BTreeMap::new());
        let (out, material) = watch::channel(TlsMaterial::default());
        let running = cfg.is_some();
        let mut idle = None;
        if let Some(cfg) = cfg {
            metrics.export(Part::Acme);
            let store = store::Store::open(&cfg.state_dir)?;
            let client = http::Client::new(cfg.ca_root.as_deref())?;
            tracing::info!(directory = %cfg.directory, state = %cfg.state_dir.display(), challenge = ?cfg.challenge, "ACME client on");
            tokio::spawn(manager::run(
                cfg,
                store,
                client,
                metrics.clone(),
                wanted_rx,
                out,
            ));
        } else {
            idle = Some(out);
        }
        Ok(Arc::new(Acme {
            wanted,
            material,
            running,
            _idle: idle,
        }))
    }

    /// Follows `state`'s `ssl_acme` services.
    pub fn want(&self, state: &DesiredState) {
        let wanted = wanted(state);
        self.wanted.send_if_modified(|cur| {
            let changed = *cur != wanted;
            *cur = wanted;
            changed
        });
    }

    /// What the client publishes now (for an `Acme` that is off: an error for each host
    /// set asked for).
    pub fn material(&self) -> TlsMaterial {
        if self.running {
            return self.material.borrow().clone();
        }
        let mut m = TlsMaterial::default();
        for name in self.wanted.borrow().keys() {
            m.acme_status.insert(
                name.clone(),
                AcmeStatus {
                    not_after: None,
                    last_error: Some(
                        "interlock's ACME client is off: start it with --acme-agree-tos (and --acme-email)".into(),
                    ),
                },
            );
        }
        m
    }

    /// Changes of what it publishes.
    pub fn subscribe(&self) -> watch::Receiver<TlsMaterial> {
        self.material.clone()
    }
}

/// The host sets `state`'s services ask certificates for, by their name
/// ([`crate::config::tls::acme_name`]): each [`host_set`].
pub fn wanted(state: &DesiredState) -> BTreeMap<String, Vec<String>> {
    state.services.iter().filter_map(host_set).collect()
}

/// The host set `spec` asks a certificate for, with its name, if it asks: by its
/// labels in force (its own if valid, else its last good ones).
pub fn host_set(spec: &ServiceSpec) -> Option<(String, Vec<String>)> {
    let asks = |l: &BTreeMap<String, String>| l.contains_key(labels::SSL_ACME);
    if !asks(&spec.labels) && !spec.last_good.as_ref().is_some_and(asks) {
        return None;
    }
    let own = labels::parse(&spec.labels);
    let in_force = if own.errors.is_empty() {
        Some(own.labels)
    } else {
        spec.last_good
            .as_ref()
            .map(labels::parse)
            .filter(|p| p.errors.is_empty())
            .map(|p| p.labels)
    };
    in_force
        .filter(|l| l.ssl_acme)
        .map(|l| acme_hosts(&l.hosts))
}
