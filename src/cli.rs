//! The `interlock` command line: the all-in-one proxy (the default), the split `controller`
//! and `proxy` roles, `check` for a configuration, and `certs` for the control channel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::RunConfig;
use crate::compile::{compile, CompileOptions};
use crate::config::settings::ProxySettings;
use crate::config::DesiredState;
use crate::controller::ControllerConfig;
use crate::metrics::Metrics;
use crate::providers::controller::ControllerOptions;
use crate::providers::ProviderConfig;
use crate::routing::{RoutingTable, ServiceStatus};
use crate::tls::control::ControlTlsFiles;

#[derive(Parser, Debug)]
#[command(
    name = "interlock",
    version,
    about = "Layer-7 reverse proxy for Docker Swarm, driven by com.docker.lb.* labels"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "INTERLOCK_LOG_FORMAT"
    )]
    pub log_format: String,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the all-in-one proxy: watch the providers and serve traffic (the default when
    /// no command is given).
    Run(RunArgs),
    /// Run the controller: watch Docker (and/or a services file) and serve each service
    /// cluster's routing snapshot to its proxies over mutual TLS. Serves no traffic.
    Controller(ControllerArgs),
    /// Run a proxy of one service cluster: follow the controller's snapshots and serve
    /// traffic. Needs no Docker access.
    Proxy(ProxyArgs),
    /// Issue the control channel's CA, the controller's certificate and one client
    /// certificate per proxy cluster.
    Certs(CertsArgs),
    /// Validate the services of a configuration: print each service's routes or its exact
    /// label errors; exit non-zero when any service has errors.
    Check(CheckArgs),
    /// Ask a running instance's admin listener whether it is serving (/healthz): exit 0 if
    /// so, 1 if not (the image's HEALTHCHECK).
    Health(crate::health::HealthArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Keep each service's last good labels here, so a service whose label is broken keeps
    /// its routes across restarts (put it on a volume).
    #[arg(long, env = "INTERLOCK_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

/// The ACME client (all-in-one and controller roles): certificates for services labelled
/// `com.docker.lb.ssl_acme=true`.
#[derive(Args, Debug, Clone)]
pub struct AcmeArgs {
    /// Agree to the ACME CA's terms of service; turns the ACME client on.
    #[arg(long, env = "INTERLOCK_ACME_AGREE_TOS")]
    pub acme_agree_tos: bool,
    /// The ACME directory (Let's Encrypt production by default; its staging URL, step-ca or
    /// any RFC 8555 CA work too).
    #[arg(long, env = "INTERLOCK_ACME_DIRECTORY", default_value = crate::acme::LETS_ENCRYPT)]
    pub acme_directory: String,
    /// Contact address registered with the account (expiry notices).
    #[arg(long, env = "INTERLOCK_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// Trust this PEM certificate (a private CA's root) for the directory's HTTPS.
    #[arg(long, env = "INTERLOCK_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// The account key and the certificates (files 0600; put it on a volume).
    #[arg(
        long,
        env = "INTERLOCK_ACME_STATE",
        default_value = "/var/lib/interlock/acme"
    )]
    pub acme_state: PathBuf,
    /// The challenge the proxies answer: `http-01` (plain listener, port 80) or
    /// `tls-alpn-01` (TLS listener, port 443).
    #[arg(
        long,
        env = "INTERLOCK_ACME_CHALLENGE",
        value_enum,
        default_value = "http-01"
    )]
    pub acme_challenge: crate::acme::ChallengeKind,
}

impl AcmeArgs {
    /// The client's settings, `None` when it is off; `propagation`: how long a challenge's
    /// answer takes to reach every proxy.
    fn config(&self, propagation: Duration) -> Option<crate::acme::AcmeConfig> {
        self.acme_agree_tos.then(|| crate::acme::AcmeConfig {
            directory: self.acme_directory.clone(),
            email: self.acme_email.clone(),
            ca_root: self.acme_ca_root.clone(),
            state_dir: self.acme_state.clone(),
            challenge: self.acme_challenge,
            propagation,
        })
    }
}

/// Where desired state comes from (all-in-one and controller roles).
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Services file (TOML), watched and hot reloaded.
    #[arg(long, short, env = "INTERLOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Route the Docker engine's labelled services (DOCKER_HOST or the local socket).
    #[arg(long, env = "INTERLOCK_DOCKER")]
    pub docker: bool,
    /// How often Swarm tasks are polled (Swarm emits no task events), in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub docker_poll_ms: u64,
    /// Read swarm services, plain containers, or decide by the engine's swarm role.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "INTERLOCK_DOCKER_MODE"
    )]
    pub docker_mode: crate::providers::docker::DockerMode,
    /// How often the services file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub watch_interval_ms: u64,
}

/// The traffic side (all-in-one and proxy roles).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Proxy listener (HTTP/1.1 and h2c); repeat for several.
    #[arg(
        long,
        env = "INTERLOCK_LISTEN",
        default_value = "0.0.0.0:8080",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,
    /// TLS listener (termination by SNI and `ssl_passthrough`); repeat for several.
    #[arg(long, env = "INTERLOCK_TLS_LISTEN", value_delimiter = ',')]
    pub tls_listen: Vec<SocketAddr>,
    /// Directory where `ssl_cert`/`ssl_key` names are found (Docker mounts secrets there).
    #[arg(long, env = "INTERLOCK_SECRETS_DIR", default_value = "/run/secrets")]
    pub secrets_dir: PathBuf,
    /// Default certificate (PEM chain) for names no service claims.
    #[arg(long, env = "INTERLOCK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "INTERLOCK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Admin listener for /metrics, /healthz and /routes; `off` disables it.
    #[arg(long, env = "INTERLOCK_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Service cluster served (com.docker.lb.service_cluster); empty = the default cluster.
    #[arg(long, env = "INTERLOCK_SERVICE_CLUSTER", default_value = "")]
    pub cluster: String,
    /// Log one `interlock::access` line per request.
    #[arg(long, env = "INTERLOCK_ACCESS_LOG")]
    pub access_log: bool,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long, env = "INTERLOCK_THREADS")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The control channel's files (controller and proxy roles).
#[derive(Args, Debug, Clone)]
pub struct ControlTlsArgs {
    /// CA certificate (PEM) both sides of the control channel trust.
    #[arg(long, env = "INTERLOCK_CONTROL_CA")]
    pub control_ca: PathBuf,
    /// This side's certificate (PEM): the controller's server certificate, or a proxy's
    /// client certificate naming its cluster.
    #[arg(long, env = "INTERLOCK_CONTROL_CERT")]
    pub control_cert: PathBuf,
    /// Private key (PEM) of --control-cert.
    #[arg(long, env = "INTERLOCK_CONTROL_KEY")]
    pub control_key: PathBuf,
}

impl ControlTlsArgs {
    fn files(&self) -> ControlTlsFiles {
        ControlTlsFiles {
            ca: self.control_ca.clone(),
            cert: self.control_cert.clone(),
            key: self.control_key.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Snapshot API listener (mutual TLS).
    #[arg(long, env = "INTERLOCK_API_LISTEN", default_value = "0.0.0.0:7443")]
    pub api_listen: SocketAddr,
    #[command(flatten)]
    pub tls: ControlTlsArgs,
    /// Admin listener for /metrics, /healthz and /routes (snapshot versions); `off`
    /// disables it.
    #[arg(long, env = "INTERLOCK_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Keep each service's last good labels here, so a service whose label is broken keeps
    /// its routes across restarts of the controller and of proxies (put it on a volume).
    #[arg(long, env = "INTERLOCK_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Directory where `ssl_cert`/`ssl_key` names are found: attach the certificate
    /// secrets to the controller; it sends each pair only to the proxies that need it.
    #[arg(long, env = "INTERLOCK_SECRETS_DIR", default_value = "/run/secrets")]
    pub secrets_dir: PathBuf,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The controller: https://HOST:PORT (HOST must be a name in its certificate). Several
    /// replicas: a comma-separated list, or a name resolving to each (tried in turn).
    #[arg(long, env = "INTERLOCK_CONTROLLER")]
    pub controller: String,
    #[command(flatten)]
    pub tls: ControlTlsArgs,
    /// Seconds the controller may hold a poll open when nothing changes.
    #[arg(long, default_value_t = 30)]
    pub poll_wait: u64,
    /// Save each snapshot here and serve the saved one after a restart until the
    /// controller answers (put it on a volume).
    #[arg(long, env = "INTERLOCK_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write into; its ca.pem/ca.key are reused when present.
    #[arg(long, default_value = "interlock-certs")]
    pub out: PathBuf,
    /// A name (or IP) proxies use to reach the controller; repeat for several.
    #[arg(long = "controller-name", value_delimiter = ',')]
    pub controller_names: Vec<String>,
    /// A proxy cluster to issue a client certificate for; repeat for several.
    #[arg(long = "cluster", value_delimiter = ',')]
    pub clusters: Vec<String>,
    /// Also issue a client certificate for the default cluster (services without
    /// com.docker.lb.service_cluster).
    #[arg(long)]
    pub default_cluster: bool,
    /// Validity of the issued certificates, in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

/// Timeouts and limits; defaults are those of [`ProxySettings::default`].
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Seconds a client has to send a complete request head.
    #[arg(long)]
    pub header_read_timeout: Option<f64>,
    /// Seconds before an idle client connection is closed.
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Seconds to connect to an upstream.
    #[arg(long)]
    pub connect_timeout: Option<f64>,
    /// Seconds to wait for an upstream's response head.
    #[arg(long)]
    pub upstream_timeout: Option<f64>,
    /// Seconds a request body may send nothing before it is cut (408).
    #[arg(long)]
    pub body_read_timeout: Option<f64>,
    /// Seconds a pooled upstream connection may stay idle and still be reused.
    #[arg(long)]
    pub pool_idle_timeout: Option<f64>,
    /// Largest request head in bytes.
    #[arg(long)]
    pub max_header_bytes: Option<usize>,
    /// Most request header fields.
    #[arg(long)]
    pub max_headers: Option<usize>,
    /// Largest request body in bytes (413 beyond it); no limit when unset.
    #[arg(long, env = "INTERLOCK_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Seconds graceful shutdown waits for in-flight requests and tunnels.
    #[arg(long)]
    pub drain_timeout: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Services file (TOML) to check.
    #[arg(
        long,
        short,
        env = "INTERLOCK_CONFIG",
        required_unless_present = "docker"
    )]
    pub config: Option<PathBuf>,
    /// Check the live Docker engine's labelled services.
    #[arg(long, env = "INTERLOCK_DOCKER")]
    pub docker: bool,
    /// Read swarm services, plain containers, or decide by the engine's swarm role.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "INTERLOCK_DOCKER_MODE"
    )]
    pub docker_mode: crate::providers::docker::DockerMode,
    /// Check only this service cluster (`""`: the default one); every cluster by default.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Where `ssl_cert`/`ssl_key` names are found; each pair must load from here (or, with
    /// --docker, be a pair of Docker secrets).
    #[arg(long, env = "INTERLOCK_SECRETS_DIR", default_value = "/run/secrets")]
    pub secrets_dir: PathBuf,
    /// The ACME client's state: an `ssl_acme` service whose last order failed is reported
    /// with the CA's reason (where the directory exists).
    #[arg(
        long,
        env = "INTERLOCK_ACME_STATE",
        default_value = "/var/lib/interlock/acme"
    )]
    pub acme_state: PathBuf,
}

fn secs(v: Option<f64>, default: Duration) -> anyhow::Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("{s} is not a valid number of seconds")),
    }
}

impl LimitArgs {
    pub fn settings(&self) -> anyhow::Result<ProxySettings> {
        let d = ProxySettings::default();
        Ok(ProxySettings {
            header_read_timeout: secs(self.header_read_timeout, d.header_read_timeout)?,
            idle_timeout: secs(self.idle_timeout, d.idle_timeout)?,
            connect_timeout: secs(self.connect_timeout, d.connect_timeout)?,
            upstream_timeout: secs(self.upstream_timeout, d.upstream_timeout)?,
            body_read_timeout: secs(self.body_read_timeout, d.body_read_timeout)?,
            pool_idle_timeout: secs(self.pool_idle_timeout, d.pool_idle_timeout)?,
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            max_body_bytes: self.max_body_bytes.or(d.max_body_bytes),
            drain_timeout: secs(self.drain_timeout, d.drain_timeout)?,
            ..d
        })
    }
}

fn parse_admin(admin: &str) -> anyhow::Result<Option<SocketAddr>> {
    match admin {
        "off" | "" => Ok(None),
        a => Ok(Some(a.parse().map_err(|_| {
            anyhow::anyhow!("--admin {a:?}: expected ip:port or `off`")
        })?)),
    }
}

impl SourceArgs {
    fn providers(&self) -> ProviderConfig {
        ProviderConfig {
            config: self.config.clone(),
            watch_interval: Duration::from_millis(self.watch_interval_ms.max(10)),
            docker: self
                .docker
                .then(|| crate::providers::docker::DockerOptions {
                    mode: self.docker_mode,
                    poll_interval: Duration::from_millis(self.docker_poll_ms.max(50)),
                    ..Default::default()
                }),
            controller: None,
        }
    }
}

impl ServeArgs {
    fn run_config(&self, providers: ProviderConfig) -> anyhow::Result<RunConfig> {
        Ok(RunConfig {
            providers,
            listen: self.listen.clone(),
            tls_listen: self.tls_listen.clone(),
            secrets_dir: self.secrets_dir.clone(),
            default_cert: self.tls_cert.clone().zip(self.tls_key.clone()),
            admin: parse_admin(&self.admin)?,
            cluster: self.cluster.clone(),
            settings: self.limits.settings()?,
            access_log: self.access_log,
            last_good_file: None,
            acme: None,
        })
    }
}

impl RunArgs {
    pub fn run_config(&self) -> anyhow::Result<RunConfig> {
        Ok(RunConfig {
            last_good_file: self.state_file.clone(),
            // The answers are this process's own: no wait.
            acme: Some(self.acme.config(Duration::ZERO)),
            ..self.serve.run_config(self.sources.providers())?
        })
    }
}

impl ProxyArgs {
    pub fn run_config(&self) -> anyhow::Result<RunConfig> {
        let cluster = &self.serve.cluster;
        anyhow::ensure!(
            crate::snapshot::valid_cluster_name(cluster),
            "--cluster {cluster:?}: expected letters, digits, `-`, `_` and `.`"
        );
        let endpoints = crate::providers::controller::parse_urls(&self.controller)
            .map_err(|e| anyhow::anyhow!("--controller {e}"))?;
        let tls = crate::tls::control::client_config(&self.tls.files())?;
        let providers = ProviderConfig {
            controller: Some(ControllerOptions {
                endpoints,
                cluster: cluster.clone(),
                tls,
                wait: Duration::from_secs(self.poll_wait.clamp(1, 300)),
                state_file: self.state_file.clone(),
            }),
            ..ProviderConfig::default()
        };
        self.serve.run_config(providers)
    }
}

impl ControllerArgs {
    pub fn controller_config(&self) -> anyhow::Result<ControllerConfig> {
        let mut providers = self.sources.providers();
        if let Some(d) = &mut providers.docker {
            d.check_proxies = true;
        }
        Ok(ControllerConfig {
            providers,
            api_listen: self.api_listen,
            tls: self.tls.files(),
            admin: parse_admin(&self.admin)?,
            state_file: self.state_file.clone(),
            secrets_dir: self.secrets_dir.clone(),
            // Answers reach the proxies in a long poll's round trip; a second is ample.
            acme: self.acme.config(Duration::from_secs(1)),
        })
    }
}

/// `interlock certs`: issues the files and lists them.
pub fn certs(args: &CertsArgs) -> anyhow::Result<()> {
    let mut clusters = args.clusters.clone();
    if args.default_cluster {
        clusters.push(String::new());
    }
    let written = crate::tls::issue::issue(&crate::tls::issue::IssueRequest {
        out: args.out.clone(),
        controller_names: args.controller_names.clone(),
        clusters,
        days: args.days,
    })?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// `interlock check`: prints a report, returns whether every service is clean.
pub async fn check(args: &CheckArgs) -> anyhow::Result<bool> {
    let mut state = DesiredState::default();
    if let Some(path) = &args.config {
        state
            .services
            .extend(crate::providers::file::load(path).await?.services);
    }
    let mut docker_secrets = None;
    if args.docker {
        let docker = crate::providers::docker::connect().await?;
        state.services.extend(
            crate::providers::docker::snapshot(&docker, args.docker_mode, true)
                .await?
                .services,
        );
        // Secrets exist only on a swarm manager; elsewhere only the files count.
        docker_secrets = crate::certcheck::docker_secret_names(&docker).await.ok();
    }
    crate::certcheck::check(&mut state, &args.secrets_dir, docker_secrets.as_ref());
    crate::certcheck::check_acme(&mut state, &args.acme_state);
    let clusters: Vec<(String, DesiredState)> = match &args.cluster {
        Some(c) => vec![(c.clone(), state)],
        None => {
            let parts = crate::snapshot::partition(&state);
            if parts.is_empty() {
                vec![(String::new(), state)]
            } else {
                parts
                    .into_iter()
                    .map(|(c, services)| {
                        (
                            c,
                            DesiredState {
                                services,
                                ..Default::default()
                            },
                        )
                    })
                    .collect()
            }
        }
    };
    let headed = clusters.len() > 1 || clusters.iter().any(|(c, _)| !c.is_empty());
    let (mut clean, mut services, mut failing) = (true, 0, 0);
    for (cluster, state) in &clusters {
        let opts = CompileOptions {
            cluster: cluster.clone(),
            ..CompileOptions::default()
        };
        let table = compile(state, &RoutingTable::default(), &opts, &Metrics::new());
        if headed && args.cluster.is_none() {
            let name = if cluster.is_empty() {
                "the default cluster (no com.docker.lb.service_cluster)".to_string()
            } else {
                format!("cluster {cluster:?}")
            };
            println!("== {name}");
        }
        print!("{}", render_check(&table));
        clean &= table.report.errors.is_empty();
        services += table.services.len();
        failing += table.report.errors.len();
    }
    if headed && args.cluster.is_none() {
        println!(
            "{} cluster(s), {services} service(s), {failing} with errors",
            clusters.len()
        );
    }
    Ok(clean)
}

/// The human-readable report of `check`.
pub fn render_check(table: &RoutingTable) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (name, svc) in &table.services {
        match svc.status {
            ServiceStatus::Active | ServiceStatus::KeptLastGood => {
                let _ = writeln!(out, "ok    {name}");
                if let Some(l) = &svc.labels {
                    let root = l.context_root.as_deref().unwrap_or("/");
                    let endpoints = match svc.endpoints.as_slice() {
                        [] => "no running endpoint".to_string(),
                        eps => eps
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                    };
                    for h in &l.hosts {
                        let _ = if l.ssl_passthrough {
                            writeln!(out, "        tls://{h} (passthrough) -> {endpoints}")
                        } else {
                            writeln!(out, "        http://{h}{root} -> {endpoints}")
                        };
                    }
                    if l.default_backend {
                        let _ = writeln!(out, "        default backend{root} -> {endpoints}");
                    }
                }
            }
            ServiceStatus::NotPublished => {
                let _ = writeln!(
                    out,
                    "skip  {name}: not published (no com.docker.lb.hosts or default_backend)"
                );
            }
            ServiceStatus::Rejected => {
                let _ = writeln!(out, "ERROR {name}");
            }
        }
        for e in &svc.errors {
            let _ = writeln!(out, "        error: {e}");
        }
        for w in &svc.warnings {
            let _ = writeln!(out, "        warning: {w}");
        }
    }
    let _ = writeln!(
        out,
        "{} service(s), {} route(s), {} with errors",
        table.services.len(),
        table.route_count(),
        table.report.errors.len()
    );
    out
}
