//! The controller role: the only role with Docker access. It watches the providers,
//! partitions their desired state by service cluster and serves each cluster's versioned
//! snapshot to that cluster's proxies over mutual TLS (see [`api`]).
//!
//! It compiles nothing for traffic; it compiles each changed cluster once only to report
//! label errors (log, `check`), so operators see them where the Docker access is.

pub mod api;
pub mod feeds;
pub mod secrets;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::acme::Acme;
use crate::compile::{self, CompileOptions};
use crate::config::DesiredState;
use crate::last_good::LastGood;
use crate::metrics::Metrics;
use crate::providers::{self, ProviderConfig, Providers};
use crate::routing::RoutingTable;
use crate::shutdown;
use crate::tls::control::{self, ControlTlsFiles};
use feeds::Feeds;
use secrets::Secrets;

/// Everything the controller role needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub providers: ProviderConfig,
    /// The snapshot API (mutual TLS).
    pub api_listen: SocketAddr,
    pub tls: ControlTlsFiles,
    pub admin: Option<SocketAddr>,
    /// Where each service's last good labels are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Where `ssl_cert`/`ssl_key` names are read (the secrets attached to the controller).
    pub secrets_dir: PathBuf,
    /// The ACME client's settings; `None`: off.
    pub acme: Option<crate::acme::AcmeConfig>,
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(cfg: ControllerConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let tls = control::server_config(&cfg.tls).context("setting up the snapshot API's TLS")?;
    let providers = providers::start(&cfg.providers, &metrics).await?;
    let feeds = Feeds::new();
    let (trigger, shutdown) = shutdown::channel();

    let listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("binding the snapshot API listener {}", cfg.api_listen))?;
    tracing::info!(addr = %cfg.api_listen, epoch = feeds.epoch(), "controller: snapshot API listening (mutual TLS)");
    tokio::spawn(api::serve(
        listener,
        tls,
        feeds.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    if let Some(addr) = cfg.admin {
        crate::admin::start(addr, feeds.clone(), metrics.clone(), shutdown.clone()).await?;
    }
    let acme = crate::acme::Acme::start(cfg.acme.clone(), &metrics)?;
    if cfg.acme.is_some() && cfg.providers.docker.is_some() {
        tokio::spawn(warn_acme_replicas());
    }
    let secrets = Arc::new(Mutex::new(secrets::Secrets::new(cfg.secrets_dir.clone())));
    tokio::spawn(publish(
        providers,
        feeds,
        metrics,
        cfg.state_file.clone(),
        acme,
        secrets,
    ));
    crate::shutdown::wait_for_signal().await;
    tracing::info!("controller shutting down");
    trigger.trigger();
    Ok(())
}

/// Feeds every provider change to the clusters' snapshots, once all providers reported;
/// also every change of the ACME client's output and of the certificate secrets.
async fn publish(
    mut providers: Providers,
    feeds: Arc<Feeds>,
    metrics: Arc<Metrics>,
    state_file: Option<PathBuf>,
    acme: Arc<Acme>,
    secrets: Arc<Mutex<Secrets>>,
) {
    providers.synced().await;
    let changed = providers.changes();
    providers::notify_on_change(acme.subscribe(), changed.clone());
    tokio::spawn(watch_secrets(secrets.clone(), changed.clone()));
    let mut reported: HashMap<String, Arc<RoutingTable>> = HashMap::new();
    let mut last_good = None;
    loop {
        let mut state = providers.merged();
        let (f, m) = (feeds.clone(), metrics.clone());
        // Partitioning and serializing thousands of services: off the runtime's threads.
        let prev = std::mem::take(&mut reported);
        // Loaded once; again only if a panic lost it.
        let mut store = last_good
            .take()
            .unwrap_or_else(|| LastGood::load(state_file.clone()));
        let (acme, secrets) = (acme.clone(), secrets.clone());
        let work = move || {
            store.apply(&mut state);
            acme.want(&state);
            state.tls.merge(&acme.material());
            {
                let mut secrets = secrets.lock().unwrap_or_else(|p| p.into_inner());
                secrets.follow(&state);
                secrets.check();
                state.tls.pairs = secrets.pairs();
            }
            (update(&f, &m, &state, prev), store)
        };
        match tokio::task::spawn_blocking(work).await {
            Ok((r, store)) => {
                reported = r;
                last_good = Some(store);
            }
            Err(e) => {
                tracing::error!(error = %e, "publishing snapshots failed; proxies keep the previous ones")
            }
        }
        changed.notified().await;
    }
}

/// With ACME on, every 10 s: warns when more than one task of a controller service runs in
/// the swarm (and again when their number changes). Replicas each order their own
/// certificates, and the CA's challenges reach proxies that follow another replica.
async fn warn_acme_replicas() {
    let mut said: std::collections::BTreeMap<String, usize> = Default::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Not a swarm, or Docker away: the provider reports that already.
        let Ok(docker) = providers::docker::connect().await else {
            continue;
        };
        let Ok(replicas) = providers::docker::controller_replicas(&docker).await else {
            continue;
        };
        for (service, n) in &replicas {
            if *n > 1 && said.get(service) != Some(n) {
                tracing::warn!(
                    service = %service,
                    replicas = n,
                    "ACME is on and several controller replicas run: each orders its own \
                     certificates, and the CA's challenges reach the proxies that follow \
                     another replica; run one controller (the example stack: \
                     CONTROLLER_MODE=replicated)"
                );
            }
        }
        said = replicas;
    }
}

/// Checks the certificate secrets every second; wakes `changed` when a pair changed.
async fn watch_secrets(secrets: Arc<Mutex<Secrets>>, changed: Arc<tokio::sync::Notify>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = secrets.clone();
        let moved = tokio::task::spawn_blocking(move || {
            s.lock().unwrap_or_else(|p| p.into_inner()).check()
        })
        .await
        .unwrap_or(false);
        if moved {
            changed.notify_one();
        }
    }
}

/// Publishes `state`; logs each cluster's new label errors once.
fn update(
    feeds: &Feeds,
    metrics: &Metrics,
    state: &DesiredState,
    mut reported: HashMap<String, Arc<RoutingTable>>,
) -> HashMap<String, Arc<RoutingTable>> {
    let moved = feeds.update(state);
    if moved.is_empty() {
        return reported;
    }
    let parts = crate::snapshot::partition(state);
    for feeds::Moved {
        cluster,
        version,
        convergence,
    } in moved
    {
        metrics
            .cluster_version
            .with_label_values(&[cluster.as_str()])
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        if let Some(took) = convergence {
            metrics.convergence.observe(took);
        }
        let services = parts.get(&cluster).cloned().unwrap_or_default();
        tracing::info!(cluster = %cluster, version, services = services.len(), "snapshot published");
        if !crate::snapshot::valid_cluster_name(&cluster) {
            for s in &services {
                tracing::error!(service = %s.name, "label {}={cluster:?}: expected a cluster name of letters, digits, `-`, `_` and `.`; the service is served by no cluster", crate::config::labels::SERVICE_CLUSTER);
            }
            continue;
        }
        let previous = reported.remove(&cluster).unwrap_or_default();
        let opts = CompileOptions {
            cluster: cluster.clone(),
            ..CompileOptions::default()
        };
        let table = compile::compile(
            &DesiredState {
                services,
                ..Default::default()
            },
            &previous,
            &opts,
            metrics,
        );
        table
            .report
            .log_new_errors(&previous.report, Some(cluster.as_str()));
        reported.insert(cluster, Arc::new(table));
    }
    reported
}
