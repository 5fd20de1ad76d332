//! Prometheus metric families of one interlock instance, and the per-service handles the
//! data plane updates. Handles are resolved when a table is compiled, so a request touches
//! only atomics, never the registry's label maps.

use std::sync::{Arc, OnceLock};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metric families. Those of the core (the services file's reload failures, which
/// every role with `--config` counts) are registered from the start; a [`Part`]'s only by
/// [`Metrics::export`], where that part runs, so an instance never reports e.g.
/// `interlock_docker_up 0` for a provider it does not use, nor a controller
/// `interlock_open_connections 0` for traffic it does not serve.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    upstream_errors: IntCounterVec,
    pub no_route: IntCounter,
    pub open_connections: IntGauge,
    pub open_tunnels: IntGauge,
    /// HTTP/2 client connections the proxy closed for the client's misbehaviour, by the
    /// GOAWAY's reason (`ENHANCE_YOUR_CALM`: too many resets, a rapid-reset flood).
    pub h2_client_goaways: IntCounterVec,
    pub table_generation: IntGauge,
    /// Time from a change (a Docker event, a services file write) to it being live: on a
    /// proxy or all-in-one instance its table swapped in, on the controller its snapshot
    /// published.
    pub convergence: Histogram,
    pub reload_timestamp: IntGauge,
    pub reload_failures: IntCounter,
    pub services_rejected: IntGauge,
    pub docker_up: IntGauge,
    pub docker_resyncs: IntCounter,
    pub docker_errors: IntCounter,
    pub cert_errors: IntCounter,
    /// The `notAfter` of the certificate served for each host pattern (`*`: the default),
    /// by where the certificate came from (`files`, `controller`, `acme`).
    pub cert_expiry: IntGaugeVec,
    /// ACME client (all-in-one or controller with `--acme-agree-tos`): orders by kind
    /// (`issue`, `renew`) and result (`ok`, `error`).
    pub acme_orders: IntCounterVec,
    /// ACME client: the `notAfter` of each host set's current certificate.
    pub acme_expiry: IntGaugeVec,
    /// Proxy role: 1 while the last poll of the controller succeeded.
    pub controller_up: IntGauge,
    /// Proxy role: version of the snapshot the live table was compiled from.
    pub snapshot_version: IntGauge,
    pub controller_errors: IntCounter,
    /// Controller role: the current version of each cluster's snapshot.
    pub cluster_version: IntGaugeVec,
    /// Controller role: proxies parked in a long poll.
    pub control_waiting: IntGauge,
    /// Controller role: API responses by status code.
    pub control_responses: IntCounterVec,
    /// Controller role: refused control-channel handshakes (no or untrusted certificate).
    pub control_rejected_handshakes: IntCounter,
}

/// A part of interlock that runs in some roles only, with its own metric families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Serving traffic (the all-in-one and proxy roles, not the controller): the live
    /// routing table and the listeners. `interlock_requests_total`,
    /// `interlock_request_duration_seconds`, `interlock_upstream_errors_total`,
    /// `interlock_no_route_total`, `interlock_open_connections`, `interlock_open_tunnels`,
    /// `interlock_http2_client_goaways_total`, `interlock_table_generation`,
    /// `interlock_reload_timestamp_seconds`, `interlock_services_rejected`.
    Traffic,
    /// TLS termination (`--tls-listen`): `interlock_tls_certificate_errors_total`,
    /// `interlock_certificate_expiry_timestamp_seconds`.
    Tls,
    /// The Docker provider (`--docker`): `interlock_docker_*`.
    Docker,
    /// The proxy role's controller client: `interlock_controller_up`,
    /// `interlock_snapshot_version`, `interlock_controller_errors_total`.
    ControllerClient,
    /// The controller role's snapshot API: `interlock_cluster_snapshot_version`,
    /// `interlock_controller_waiting_proxies`, `interlock_controller_responses_total`,
    /// `interlock_controller_rejected_handshakes_total`.
    ControllerServer,
    /// The ACME client (`--acme-agree-tos`): `interlock_acme_orders_total`,
    /// `interlock_acme_certificate_expiry_timestamp_seconds`.
    Acme,
}

/// The status classes requests are counted by.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Handles for one service, resolved on its first response: resolving seven series per
/// service at compile time would cost more than the rest of a 10,000-service compile.
pub struct ServiceMetrics {
    name: Box<str>,
    requests: IntCounterVec,
    latency: HistogramVec,
    upstream_errors: IntCounterVec,
    handles: OnceLock<Handles>,
}

/// The resolved series: plain atomics from then on.
struct Handles {
    by_class: [IntCounter; 5],
    latency: Histogram,
    upstream_errors: IntCounter,
}

impl ServiceMetrics {
    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let name: &str = &self.name;
            Handles {
                by_class: CLASSES.map(|c| self.requests.with_label_values(&[name, c])),
                latency: self.latency.with_label_values(&[name]),
                upstream_errors: self.upstream_errors.with_label_values(&[name]),
            }
        })
    }

    /// Counts one response by its status class.
    pub fn record(&self, status: u16, seconds: f64) {
        let h = self.handles();
        let idx = (status / 100).clamp(1, 5) as usize - 1;
        h.by_class[idx].inc();
        h.latency.observe(seconds);
    }

    /// Counts one failed upstream exchange.
    pub fn upstream_error(&self) {
        self.handles().upstream_errors.inc();
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants; a failure here is a programming error caught by
    // every test run, not an input error.
    r.expect("metric definition is valid")
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "interlock_requests_total",
                "Responses sent, by service and status class",
            ),
            &["service", "class"],
        ));
        let latency = must(HistogramVec::new(
            HistogramOpts::new(
                "interlock_request_duration_seconds",
                "Time from request received to upstream response head, by service",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["service"],
        ));
        let upstream_errors = must(IntCounterVec::new(
            Opts::new(
                "interlock_upstream_errors_total",
                "Failed upstream exchanges (refused, timeout, reset), by service",
            ),
            &["service"],
        ));
        let gauge = |n: &str, h: &str| must(IntGauge::new(n, h));
        let counter = |n: &str, h: &str| must(IntCounter::new(n, h));
        let m = Metrics {
            no_route: counter("interlock_no_route_total", "Requests that matched no route (503)"),
            open_connections: gauge("interlock_open_connections", "Open client connections"),
            open_tunnels: gauge("interlock_open_tunnels", "Open upgraded (websocket) tunnels"),
            convergence: must(Histogram::with_opts(
                HistogramOpts::new(
                    "interlock_convergence_seconds",
                    "Time from a change (Docker event, services file write) to it being live: the table swapped in (proxy, all-in-one), the snapshot published (controller); across hosts it includes their clock difference",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )),
            h2_client_goaways: must(IntCounterVec::new(
                Opts::new(
                    "interlock_http2_client_goaways_total",
                    "HTTP/2 client connections closed for the client's misbehaviour, by GOAWAY reason (ENHANCE_YOUR_CALM: too many resets)",
                ),
                &["reason"],
            )),
            table_generation: gauge("interlock_table_generation", "Generation of the live routing table"),
            reload_timestamp: gauge(
                "interlock_reload_timestamp_seconds",
                "Unix time of the last successful routing table swap",
            ),
            reload_failures: counter(
                "interlock_reload_failures_total",
                "Provider updates that could not be applied (the last good table stayed)",
            ),
            services_rejected: gauge(
                "interlock_services_rejected",
                "Services of the live table skipped or kept at their last good routes because of label errors",
            ),
            docker_up: gauge("interlock_docker_up", "1 while the Docker provider is connected to the engine"),
            docker_resyncs: counter("interlock_docker_resyncs_total", "Complete re-lists of the Docker engine's state"),
            docker_errors: counter(
                "interlock_docker_errors_total",
                "Lost or failed connections to the Docker engine (the last good routes stay)",
            ),
            cert_errors: counter(
                "interlock_tls_certificate_errors_total",
                "Certificates named by ssl_cert/ssl_key that could not be loaded",
            ),
            cert_expiry: must(IntGaugeVec::new(
                Opts::new(
                    "interlock_certificate_expiry_timestamp_seconds",
                    "Unix time the certificate served for a host expires (notAfter), by host pattern as written in labels (*: the default certificate) and the certificate's source (files, controller, acme)",
                ),
                &["host", "source"],
            )),
            acme_orders: must(IntCounterVec::new(
                Opts::new(
                    "interlock_acme_orders_total",
                    "ACME certificate orders, by kind (issue, renew) and result (ok, error)",
                ),
                &["kind", "result"],
            )),
            acme_expiry: must(IntGaugeVec::new(
                Opts::new(
                    "interlock_acme_certificate_expiry_timestamp_seconds",
                    "Unix time the ACME certificate of a host set (names joined by commas) expires",
                ),
                &["hosts"],
            )),
            controller_up: gauge(
                "interlock_controller_up",
                "1 while this proxy's last poll of the controller succeeded (0: serving the last good snapshot)",
            ),
            snapshot_version: gauge(
                "interlock_snapshot_version",
                "Version of the controller snapshot the live table was compiled from",
            ),
            controller_errors: counter(
                "interlock_controller_errors_total",
                "Failed polls of the controller (the last good table stays)",
            ),
            cluster_version: must(IntGaugeVec::new(
                Opts::new("interlock_cluster_snapshot_version", "Current snapshot version, by service cluster"),
                &["cluster"],
            )),
            control_waiting: gauge(
                "interlock_controller_waiting_proxies",
                "Proxy requests parked in a long poll for a snapshot change",
            ),
            control_responses: must(IntCounterVec::new(
                Opts::new("interlock_controller_responses_total", "Snapshot API responses, by status code"),
                &["code"],
            )),
            control_rejected_handshakes: counter(
                "interlock_controller_rejected_handshakes_total",
                "Control-channel TLS handshakes refused (missing or untrusted client certificate)",
            ),
            requests,
            latency,
            upstream_errors,
            registry,
        };
        must(m.registry.register(Box::new(m.reload_failures.clone())));
        Arc::new(m)
    }

    /// Exports `part`'s families from now on (once; exporting again changes nothing).
    /// Called where the part starts, before the admin listener serves `/metrics`.
    pub fn export(&self, part: Part) {
        let families: Vec<Box<dyn Collector>> = match part {
            Part::Traffic => vec![
                Box::new(self.requests.clone()),
                Box::new(self.latency.clone()),
                Box::new(self.upstream_errors.clone()),
                Box::new(self.no_route.clone()),
                Box::new(self.open_connections.clone()),
                Box::new(self.open_tunnels.clone()),
                Box::new(self.h2_client_goaways.clone()),
                Box::new(self.table_generation.clone()),
                Box::new(self.convergence.clone()),
                Box::new(self.reload_timestamp.clone()),
                Box::new(self.services_rejected.clone()),
            ],
            Part::Tls => vec![
                Box::new(self.cert_errors.clone()),
                Box::new(self.cert_expiry.clone()),
            ],
            Part::Docker => vec![
                Box::new(self.docker_up.clone()),
                Box::new(self.docker_resyncs.clone()),
                Box::new(self.docker_errors.clone()),
            ],
            Part::ControllerClient => vec![
                Box::new(self.controller_up.clone()),
                Box::new(self.snapshot_version.clone()),
                Box::new(self.controller_errors.clone()),
            ],
            Part::ControllerServer => vec![
                Box::new(self.cluster_version.clone()),
                Box::new(self.convergence.clone()),
                Box::new(self.control_waiting.clone()),
                Box::new(self.control_responses.clone()),
                Box::new(self.control_rejected_handshakes.clone()),
            ],
            Part::Acme => vec![
                Box::new(self.acme_orders.clone()),
                Box::new(self.acme_expiry.clone()),
            ],
        };
        for c in families {
            match self.registry.register(c) {
                Err(prometheus::Error::AlreadyReg) => {}
                r => must(r),
            }
        }
    }

    /// Handles for one service (its series are created on its first response).
    pub fn service(&self, name: &str) -> Arc<ServiceMetrics> {
        Arc::new(ServiceMetrics {
            name: name.into(),
            requests: self.requests.clone(),
            latency: self.latency.clone(),
            upstream_errors: self.upstream_errors.clone(),
            handles: OnceLock::new(),
        })
    }

    /// Drops the series of a service that left the table.
    pub fn forget_service(&self, name: &str) {
        for c in CLASSES {
            let _ = self.requests.remove_label_values(&[name, c]);
        }
        let _ = self.latency.remove_label_values(&[name]);
        let _ = self.upstream_errors.remove_label_values(&[name]);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(m: &Metrics) -> Vec<String> {
        m.registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }

    #[test]
    fn a_part_is_exported_only_once_asked_and_asking_twice_is_harmless() {
        let m = Metrics::new();
        let core = families(&m);
        assert!(core.iter().any(|f| f == "interlock_reload_failures_total"));
        assert!(!core.iter().any(|f| f.starts_with("interlock_docker_")
            || f.starts_with("interlock_controller_")
            || f == "interlock_snapshot_version"
            || f == "interlock_open_connections"
            || f == "interlock_table_generation"));
        m.export(Part::Docker);
        m.export(Part::Docker);
        let with_docker = families(&m);
        assert_eq!(with_docker.len(), core.len() + 3, "{with_docker:?}");
        assert!(with_docker.iter().any(|f| f == "interlock_docker_up"));
        m.export(Part::ControllerClient);
        assert!(families(&m).iter().any(|f| f == "interlock_controller_up"));
        assert!(!families(&m)
            .iter()
            .any(|f| f == "interlock_controller_waiting_proxies"));
    }

    #[test]
    fn traffic_families_are_exported_only_where_traffic_is_served() {
        let m = Metrics::new();
        // Handles count before the export; their series are just not shown.
        m.service("web").record(200, 0.01);
        m.open_connections.inc();
        assert!(!m.render().contains("interlock_requests_total"));
        assert!(!families(&m)
            .iter()
            .any(|f| f == "interlock_open_connections" || f == "interlock_services_rejected"));
        m.export(Part::Traffic);
        m.export(Part::Traffic);
        let have = families(&m);
        for f in [
            "interlock_requests_total",
            "interlock_request_duration_seconds",
            "interlock_no_route_total",
            "interlock_open_connections",
            "interlock_open_tunnels",
            "interlock_table_generation",
            "interlock_reload_timestamp_seconds",
            "interlock_services_rejected",
            "interlock_reload_failures_total",
        ] {
            assert!(have.iter().any(|h| h == f), "{f}: {have:?}");
        }
        // TLS's families come with a TLS listener only.
        assert!(!have
            .iter()
            .any(|f| f == "interlock_tls_certificate_errors_total"));
        m.export(Part::Tls);
        assert!(families(&m)
            .iter()
            .any(|f| f == "interlock_tls_certificate_errors_total"));
        assert!(m
            .render()
            .contains("interlock_requests_total{class=\"2xx\",service=\"web\"} 1"));
        assert!(m.render().contains("interlock_open_connections 1"));
    }
}
