//! One proxying instance (the all-in-one and proxy roles), in order: the [`Applier`]
//! (provider states -> compile -> swap -> retire departed endpoints), the providers
//! ([`crate::providers::start`]), the table's background tasks ([`crate::maintenance`]),
//! the listeners, the admin server, and draining on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::compile::{self, CompileOptions};
use crate::config::settings::ProxySettings;
use crate::config::DesiredState;
use crate::metrics::{Metrics, Part};
use crate::providers::{self, ProviderConfig, Providers};
use crate::proxy::Proxy;
use crate::routing::{RoutingTable, TableStore};
use crate::shutdown::{self, Shutdown};
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
    /// Set once every provider has reported and the table compiled from their states is
    /// live ([`Applier::apply_synced`]): the instance serves (`/healthz` answers 200). Before
    /// that the merged state is partial, and the last good labels are neither used nor
    /// updated (a service not listed yet must not be forgotten).
    serving: AtomicBool,
    /// The last change measured: when it happened and how long it took to be live (Unix
    /// seconds, seconds), for `/routes`.
    convergence: std::sync::Mutex<Option<(f64, f64)>>,
}

impl Applier {
    pub fn new(metrics: Arc<Metrics>, opts: CompileOptions) -> Self {
        Applier {
            store: Arc::new(TableStore::default()),
            metrics,
            opts,
            tls: None,
            last_good: None,
            serving: AtomicBool::new(false),
            convergence: std::sync::Mutex::new(None),
        }
    }

    /// Whether the instance serves: every provider has reported and that table is live.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
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

    /// Applies a complete state, one every provider has reported to: with the last good
    /// labels; once its table is live, the instance serves.
    pub fn apply_synced(&self, state: &DesiredState) -> Arc<RoutingTable> {
        let table = self.compile_and_swap(state, true);
        self.serving.store(true, Ordering::Release);
        table
    }

    /// Applies `state`, complete only once the instance serves (see [`Applier::apply_synced`]).
    pub fn apply(&self, state: &DesiredState) -> Arc<RoutingTable> {
        self.compile_and_swap(state, self.is_serving())
    }

    /// Compiles `state` against the live table and publishes the result. Never fails:
    /// services with bad labels are reported and skipped or kept at their last good routes.
    /// `complete`: every provider has reported, so the last good labels apply.
    fn compile_and_swap(&self, state: &DesiredState, complete: bool) -> Arc<RoutingTable> {
        let previous = self.store.snapshot();
        let remembered = self.last_good.as_ref().filter(|_| complete).map(|store| {
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
            tls.refresh(&table, &state.tls);
        }
        let old = self.store.swap(table.clone());
        for upstream in compile::departed_upstreams(&old, &table) {
            upstream.retire();
        }
        for service in compile::departed_services(&old, &table) {
            self.metrics.forget_service(service);
        }
        self.report(&old, &table);
        self.measure(state.observed_at);
        table
    }

    /// Counts the time from the change behind `observed_at` to now (its table is live),
    /// once per change.
    fn measure(&self, observed_at: Option<f64>) {
        let Some(at) = observed_at else { return };
        // A poisoned lock still holds a whole value (every write is one assignment).
        let mut last = self.convergence.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|(seen, _)| seen >= at) {
            return;
        }
        let took = (crate::config::unix_now() - at).max(0.0);
        self.metrics.convergence.observe(took);
        *last = Some((at, took));
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
        table.report.log_new_errors(&old.report, None);
        table.report.log_new_warnings(&old.report);
    }
}

/// A proxying instance on its admin listener: serving once its first complete table is
/// live; `/routes` shows the live table.
impl crate::admin::Status for Applier {
    fn serving(&self) -> Option<String> {
        self.is_serving()
            .then(|| format!("generation={}", self.store.load().generation))
    }

    fn routes(&self) -> serde_json::Value {
        let mut view = self.store.snapshot().describe();
        let last = *self.convergence.lock().unwrap_or_else(|p| p.into_inner());
        view["convergence"] = match last {
            Some((observed_at, seconds)) => {
                serde_json::json!({"observed_at": observed_at, "seconds": seconds})
            }
            None => serde_json::Value::Null,
        };
        view
    }
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
    /// All-in-one role: its ACME client (`Some(None)`: off, services asking are told so).
    /// `None` in the proxy role, whose ACME certificates come from the controller.
    pub acme: Option<Option<crate::acme::AcmeConfig>>,
}

/// Runs until SIGTERM/SIGINT, then drains.
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    // This instance serves traffic (the controller, which does not, never exports these).
    metrics.export(Part::Traffic);
    // 1. The applier, with the last good labels and the certificates it keeps in step.
    let (applier, tls) = applier(&cfg, &metrics)?;
    // 2. The providers. Their first states make a first table (partial until every
    //    provider has reported: not serving yet).
    let providers = providers::start(&cfg.providers, &metrics).await?;
    applier.apply(&providers.merged());
    // 3. Background tasks: certificate files, health probes, idle pools, and following
    //    the providers.
    background(&cfg, &applier, tls.as_ref());
    let acme = match &cfg.acme {
        Some(acme) => Some(crate::acme::Acme::start(acme.clone(), &metrics)?),
        None => None,
    };
    tokio::spawn(follow(applier.clone(), providers, acme));
    // 4. Listeners: traffic (plain, then TLS) and admin.
    let (trigger, shutdown) = shutdown::channel();
    let proxies = listen(&cfg, &applier, tls.as_ref(), &metrics, &shutdown).await?;
    if let Some(addr) = cfg.admin {
        crate::admin::start(addr, applier.clone(), metrics.clone(), shutdown.clone()).await?;
    }
    // 5. Until SIGTERM/SIGINT; then drain.
    shutdown::wait_for_signal().await;
    tracing::info!(drain_timeout = ?cfg.settings.drain_timeout, "shutting down: draining connections");
    trigger.trigger();
    drain(&proxies).await;
    Ok(())
}

/// The instance's applier, and its TLS state when it serves TLS.
fn applier(
    cfg: &RunConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Arc<Applier>, Option<Arc<TlsState>>)> {
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
        metrics.export(Part::Tls);
        applier = applier.with_tls(tls.clone());
        Some(tls)
    };
    Ok((Arc::new(applier), tls))
}

/// Spawns the tasks that follow the live table and the certificate files.
fn background(cfg: &RunConfig, applier: &Applier, tls: Option<&Arc<TlsState>>) {
    if let Some(tls) = tls {
        // Certificate files renewed in place are picked up at the services file's interval
        // (the proxy role, which has none, checks every second).
        let every = match cfg.providers.watch_interval {
            d if d.is_zero() => Duration::from_secs(1),
            d => d,
        };
        tokio::spawn(crate::tls::watch::run(tls.clone(), every));
    }
    tokio::spawn(crate::maintenance::run_probes(applier.store.clone()));
    tokio::spawn(crate::maintenance::reap_idle(
        applier.store.clone(),
        cfg.settings.pool_idle_timeout,
    ));
}

/// Binds and serves the traffic listeners; returns the proxies to drain.
async fn listen(
    cfg: &RunConfig,
    applier: &Applier,
    tls: Option<&Arc<TlsState>>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<Arc<Proxy>>> {
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
        defer_until_data(&listener, addr);
        let listener = crate::accept::LazyListener::new(listener)
            .with_context(|| format!("polling the proxy listener {addr}"))?;
        tracing::info!(%addr, "proxy listening (HTTP/1.1 and h2c)");
        tokio::spawn(proxy.clone().serve(listener, shutdown.clone()));
    }
    let mut proxies = vec![proxy.clone()];
    if let Some(tls) = tls {
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
            defer_until_data(&listener, addr);
            tracing::info!(%addr, "TLS listening (termination by SNI, passthrough, ALPN h2 and http/1.1)");
            tokio::spawn(
                https
                    .clone()
                    .serve_tls(listener, tls.clone(), shutdown.clone()),
            );
        }
        proxies.push(https);
    }
    Ok(proxies)
}

/// Connections of a proxy listener are handed over with their first bytes
/// ([`crate::accept::defer_until_data`]); where the kernel refuses, they come as they are.
fn defer_until_data(listener: &TcpListener, addr: &SocketAddr) {
    if let Err(e) = crate::accept::defer_until_data(listener) {
        tracing::debug!(%addr, error = %e, "TCP_DEFER_ACCEPT not set");
    }
}

/// Lets in-flight requests and tunnels finish, at most the drain timeout.
async fn drain(proxies: &[Arc<Proxy>]) {
    let mut left = 0;
    for p in proxies {
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
}

/// Applies the merged state whenever any provider (or the ACME client, if any) publishes a
/// new one, once every provider has delivered its first state (the first such table live,
/// the instance serves).
pub async fn follow(
    applier: Arc<Applier>,
    mut providers: Providers,
    acme: Option<Arc<crate::acme::Acme>>,
) {
    let changed = providers.changes();
    if let Some(acme) = &acme {
        crate::providers::notify_on_change(acme.subscribe(), changed.clone());
    }
    providers.synced().await;
    let state = merged(&providers, acme.as_deref());
    let first = applier.clone();
    let _ = tokio::task::spawn_blocking(move || first.apply_synced(&state)).await;
    loop {
        changed.notified().await;
        // Compiling thousands of services takes milliseconds of CPU: off the runtime's
        // threads, so proxying never waits for it.
        let state = merged(&providers, acme.as_deref());
        let applier = applier.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || applier.apply_synced(&state)).await {
            tracing::error!(error = %e, "applying a new state failed; the last good table stays");
        }
    }
}

/// The providers' merged state, with what the ACME client publishes for it.
fn merged(providers: &Providers, acme: Option<&crate::acme::Acme>) -> DesiredState {
    let mut state = providers.merged();
    if let Some(acme) = acme {
        acme.want(&state);
        state.tls.merge(&acme.material());
    }
    state
}
