//! Starting the providers an instance is configured with, and following them as one:
//! shared by the all-in-one, proxy and controller roles.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::DesiredState;
use crate::metrics::{Metrics, Part};

/// Where desired state comes from; shared by the all-in-one, proxy and controller roles.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    /// Services file (file provider), if any.
    pub config: Option<PathBuf>,
    /// How often the services file is checked for changes.
    pub watch_interval: Duration,
    /// Watch the Docker engine (Docker provider).
    pub docker: Option<super::docker::DockerOptions>,
    /// Follow a controller's snapshots (the proxy role).
    pub controller: Option<super::controller::ControllerOptions>,
}

/// The running providers' state channels.
pub struct Providers {
    pub sources: Vec<watch::Receiver<DesiredState>>,
    /// Sources that have not reported yet (the Docker provider before its first list).
    unsynced: Vec<watch::Receiver<DesiredState>>,
}

impl Providers {
    /// Resolves once every provider has reported its state at least once.
    pub async fn synced(&mut self) {
        for rx in &mut self.unsynced {
            let _ = rx.changed().await;
        }
        self.unsynced.clear();
    }

    /// The union of every provider's current state.
    pub fn merged(&self) -> DesiredState {
        let mut state = DesiredState::default();
        for rx in &self.sources {
            let source = rx.borrow();
            state.services.extend(source.services.iter().cloned());
            state.tls.merge(&source.tls);
            // The latest change of any source is the one this state shows.
            state.observed_at = match (state.observed_at, source.observed_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        state
    }

    /// A notification that fires whenever any provider publishes a new state (changes
    /// that come while nobody waits are folded into one).
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        let changed = Arc::new(tokio::sync::Notify::new());
        for mut rx in self.sources.iter().cloned() {
            let changed = changed.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    changed.notify_one();
                }
            });
        }
        changed
    }
}

/// Starts the providers `cfg` names. The services file must load: there is no last good
/// state to fall back to yet.
pub async fn start(cfg: &ProviderConfig, metrics: &Arc<Metrics>) -> anyhow::Result<Providers> {
    anyhow::ensure!(
        cfg.config.is_some() || cfg.docker.is_some() || cfg.controller.is_some(),
        "nothing to route: give --config FILE, --docker, or both"
    );
    let mut p = Providers {
        sources: Vec::new(),
        unsynced: Vec::new(),
    };
    if let Some(path) = &cfg.config {
        let initial = super::file::load(path)
            .await
            .with_context(|| "loading the initial configuration")?;
        let (tx, rx) = watch::channel(initial);
        let reload_failures = metrics.reload_failures.clone();
        tokio::spawn(super::file::watch(
            path.clone(),
            cfg.watch_interval,
            tx,
            move |e| {
                reload_failures.inc();
                tracing::error!("{e}; keeping the last good configuration");
            },
        ));
        p.sources.push(rx);
    }
    if let Some(opts) = &cfg.docker {
        metrics.export(Part::Docker);
        let (tx, rx) = watch::channel(DesiredState::default());
        tokio::spawn(super::docker::run(opts.clone(), tx, metrics.clone()));
        p.unsynced.push(rx.clone());
        p.sources.push(rx);
    }
    if let Some(opts) = &cfg.controller {
        metrics.export(Part::ControllerClient);
        let (tx, rx) = watch::channel(DesiredState::default());
        tokio::spawn(super::controller::run(opts.clone(), tx, metrics.clone()));
        p.unsynced.push(rx.clone());
        p.sources.push(rx);
    }
    Ok(p)
}

/// Wakes `changed` whenever `rx` changes.
pub fn notify_on_change<T: Send + Sync + 'static>(
    mut rx: tokio::sync::watch::Receiver<T>,
    changed: Arc<tokio::sync::Notify>,
) {
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            changed.notify_one();
        }
    });
}
