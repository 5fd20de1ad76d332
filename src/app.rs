//! One running instance: applies provider states to the live table (compile -> swap ->
//! retire departed endpoints), and runs listeners, the admin server and draining.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::compile::{self, CompileOptions};
use crate::config::settings::ProxySettings;
use crate::config::DesiredState;
use crate::metrics::{Metrics, Part};
use crate::proxy::Proxy;
use crate::routing::{RoutingTable, TableStore};
use crate::shutdown;
use crate::tls::TlsState;

/// Turns desired states into live tables.
pub struct Applier {
    pub store: Arc<TableStore>,
    pub metrics: Arc<Metrics>,
    pub opts: CompileOptions,
    /// Certificates follow the table when TLS is served.
    pub tls: Option<Arc<TlsState>>,
    /// Each service's last good labels, kept in a file across restarts (all-in-one role
    /// with `--state-file`; a proxy gets them from its controller and snapshot file).
    pub last_good: Option<std::sync::Mutex<crate::last_good::LastGood>>,
    /// Whether every provider has reported: before that, the merged state is partial, and
    /// the last good labels are neither used nor updated (a service not listed yet must not
    /// be forgotten).
    synced: std::sync::atomic::AtomicBool,
}

impl Applier {
    pub fn new(metrics: Arc<Metrics>, opts: CompileOptions) -> Self {
        Applier {
            store: Arc::new(TableStore::default()),
            metrics,
            opts,
            tls: None,
            last_good: None,
            synced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Every provider has reported: the states applied from now on are complete.
    pub fn mark_synced(&self) {
        self.synced
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Also keeps each service's last good labels in `file` across restarts.
    pub fn with_last_good(mut self, file: PathBuf) -> Self {
        self.last_good = Some(std::sync::Mutex::new(crate::last_good::LastGood::load(
            Some(file),
        )));
        self
    }

    /// Also keeps `tls`'s certificate store in step with every table.
    pub fn with_tls(mut self, tls: Arc<TlsState>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Compiles `state` against the live table and publishes the result. Never fails:
    /// services with bad labels are reported and skipped or kept at their last good routes.
    pub fn apply(&self, state: &DesiredState) -> Arc<RoutingTable> {
        let previous = self.store.snapshot();
        let synced = self.synced.load(std::sync::atomic::Ordering::Acquire);
        let remembered = self.last_good.as_ref().filter(|_| synced).map(|store| {
            let mut state = state.clone();
            // A poisoned lock still holds whole maps (every write is one insert or retain).
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply(&mut state);
            state
        });
        let table = Arc::new(compile::compile(
            remembered.as_ref().unwrap_or(state),
            &previous,
            &self.opts,
            &self.metrics,
        ));
        if let Some(tls) = &self.tls {
            // Certificates first, so a new host's routes never go live before its certificate.
            // Problems are logged (once) and counted there.
            tls.refresh(&table);
        }
        let old = self.store.swap(table.clone());
        for upstream in compile::departed_upstreams(&old, &table) {
            upstream.retire();
        }
        for service in compile::departed_services(&old, &table) {
            self.metrics.forget_service(service);
        }
        self.report(&old, &table);
        table
    }

    fn report(&self, old: &RoutingTable, table: &RoutingTable) {
        let m = &self.metrics;
        m.table_generation
            .set(i64::try_from(table.generation).unwrap_or(i64::MAX));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        m.reload_timestamp.set(i64::try_from(now).unwrap_or(0));
        m.services_rejected
            .set(i64::try_from(table.report.errors.len()).unwrap_or(0));
        tracing::info!(
            generation = table.generation,
            services = table.services.len(),
            routes = table.route_count(),
            errors = table.report.errors.len(),
            "routing table swapped"
        );
        // Log each error and warning once, when it first appears.
        for e in &table.report.errors {
            if !old.report.errors.iter().any(|o| {
                o.service == e.service
                    && o.errors == e.errors
                    && o.kept_last_good == e.kept_last_good
            }) {
                tracing::error!(service = %e.service, kept_last_good = e.kept_last_good, "{e}");
            }
        }
        for w in &table.report.warnings {
            if !old.report.warnings.contains(w) {
                tracing::warn!(service = %w.0, "{}", w.1);
            }
        }
    }
}

/// Where desired state comes from; shared by the all-in-one, proxy and controller roles.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    /// Services file (file provider), if any.
    pub config: Option<PathBuf>,
    /// How often the services file is checked for changes.
    pub watch_interval: Duration,
    /// Watch the Docker engine (Docker provider).
    pub docker: Option<crate::providers::docker::DockerOptions>,
    /// Follow a controller's snapshots (the proxy role).
    pub controller: Option<crate::providers::controller::ControllerOptions>,
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
        merge(&self.sources)
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
pub async fn start_providers(
    cfg: &ProviderConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Providers> {
    anyhow::ensure!(
        cfg.config.is_some() || cfg.docker.is_some() || cfg.controller.is_some(),
        "nothing to route: give --config FILE, --docker, or both"
    );
    let mut p = Providers {
        sources: Vec::new(),
        unsynced: Vec::new(),
    };
    if let Some(path) = &cfg.config {
        let initial = crate::providers::file::load(path)
            .await
            .with_context(|| "loading the initial configuration")?;
        let (tx, rx) = watch::channel(initial);
        let reload_failures = metrics.reload_failures.clone();
        tokio::spawn(crate::providers::file::watch(
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
        tokio::spawn(crate::providers::docker::run(
            opts.clone(),
            tx,
            metrics.clone(),
        ));
        p.unsynced.push(rx.clone());
        p.sources.push(rx);
    }
    if let Some(opts) = &cfg.controller {
        metrics.export(Part::ControllerClient);
        let (tx, rx) = watch::channel(DesiredState::default());
        tokio::spawn(crate::providers::controller::run(
            opts.clone(),
            tx,
            metrics.clone(),
        ));
        p.unsynced.push(rx.clone());
        p.sources.push(rx);
    }
    Ok(p)
}

/// Everything one proxying instance (all-in-one or proxy role) needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub providers: ProviderConfig,
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (termination by SNI, and passthrough).
    pub tls_listen: Vec<SocketAddr>,
    /// Where `ssl_cert`/`ssl_key` names are looked up (Docker secrets).
    pub secrets_dir: PathBuf,
    /// The certificate for names no service claims.
    pub default_cert: Option<(PathBuf, PathBuf)>,
    pub admin: Option<SocketAddr>,
    pub cluster: String,
    pub settings: ProxySettings,
    pub access_log: bool,
    /// All-in-one role: where each service's last good labels are kept across restarts.
    pub last_good_file: Option<PathBuf>,
}

/// Runs until SIGTERM/SIGINT, then drains.
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    // This instance serves traffic (the controller, which does not, never exports these).
    metrics.export(Part::Traffic);
    let mut applier = Applier::new(
        metrics.clone(),
        CompileOptions {
            cluster: cfg.cluster.clone(),
            max_idle_per_endpoint: cfg.settings.pool_max_idle_per_endpoint,
        },
    );
    if let Some(file) = &cfg.last_good_file {
        applier = applier.with_last_good(file.clone());
    }
    let tls = if cfg.tls_listen.is_empty() {
        None
    } else {
        let tls = TlsState::new(
            cfg.secrets_dir.clone(),
            cfg.default_cert.clone(),
            metrics.clone(),
        )
        .context("building the TLS configuration")?;
        applier = applier.with_tls(tls.clone());
        Some(tls)
    };
    let applier = Arc::new(applier);
    let providers = start_providers(&cfg.providers, &metrics).await?;
    applier.apply(&providers.merged());
    if let Some(tls) = &tls {
        // Certificate files renewed in place are picked up at the services file's interval
        // (the proxy role, which has none, checks every second).
        let every = match cfg.providers.watch_interval {
            d if d.is_zero() => Duration::from_secs(1),
            d => d,
        };
        tokio::spawn(crate::tls::watch::run(tls.clone(), every));
    }
    tokio::spawn(crate::upstream::probe::run(applier.store.clone()));
    tokio::spawn(crate::upstream::reaper::run(
        applier.store.clone(),
        cfg.settings.pool_idle_timeout,
    ));
    let ready = crate::admin::Ready::default();
    tokio::spawn(follow(applier.clone(), providers, ready.clone()));

    let (trigger, shutdown) = shutdown::channel();
    let proxy = Proxy::new(
        applier.store.clone(),
        cfg.settings.clone(),
        metrics.clone(),
        cfg.access_log,
    );
    for addr in &cfg.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the proxy listener {addr}"))?;
        tracing::info!(%addr, "proxy listening (HTTP/1.1 and h2c)");
        tokio::spawn(proxy.clone().serve(listener, shutdown.clone()));
    }
    let mut proxies = vec![proxy.clone()];
    if let Some(tls) = &tls {
        let https = Proxy::new(
            applier.store.clone(),
            ProxySettings {
                scheme: crate::config::settings::Scheme::Https,
                ..cfg.settings.clone()
            },
            metrics.clone(),
            cfg.access_log,
        );
        for addr in &cfg.tls_listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TLS listener {addr}"))?;
            tracing::info!(%addr, "TLS listening (termination by SNI, passthrough, ALPN h2 and http/1.1)");
            tokio::spawn(
                https
                    .clone()
                    .serve_tls(listener, tls.clone(), shutdown.clone()),
            );
        }
        proxies.push(https);
    }
    if let Some(addr) = cfg.admin {
        let view = crate::admin::View::Table(applier.store.clone(), ready);
        crate::admin::start(addr, view, metrics.clone(), shutdown.clone()).await?;
    }

    wait_for_signal().await;
    tracing::info!(drain_timeout = ?cfg.settings.drain_timeout, "shutting down: draining connections");
    trigger.trigger();
    let mut left = 0;
    for p in &proxies {
        left += p.drain().await;
    }
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout reached; closing the remaining connections"
        );
    } else {
        tracing::info!("drained");
    }
    Ok(())
}

/// The union of every provider's current state.
fn merge(sources: &[watch::Receiver<DesiredState>]) -> DesiredState {
    DesiredState {
        services: sources
            .iter()
            .flat_map(|rx| rx.borrow().services.clone())
            .collect(),
    }
}

/// Applies the merged state whenever any provider publishes a new one; sets `ready` once
/// every provider has delivered its first state and that table is live.
pub async fn follow(applier: Arc<Applier>, mut providers: Providers, ready: crate::admin::Ready) {
    let changed = providers.changes();
    providers.synced().await;
    applier.mark_synced();
    let state = providers.merged();
    let first = applier.clone();
    if tokio::task::spawn_blocking(move || first.apply(&state))
        .await
        .is_ok()
    {
        ready.set();
    }
    loop {
        changed.notified().await;
        // Compiling thousands of services takes milliseconds of CPU: off the runtime's
        // threads, so proxying never waits for it.
        let state = providers.merged();
        let applier = applier.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || applier.apply(&state)).await {
            tracing::error!(error = %e, "applying a new state failed; the last good table stays");
        }
    }
}

pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
