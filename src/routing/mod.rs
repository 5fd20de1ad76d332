//! The routing table: an immutable snapshot compiled from desired state, and its lookup
//! (host, then longest context root). The live table sits in a [`TableStore`]; a request
//! loads it once, resolves its route and drops the guard before any await.

mod host;
mod report;
mod store;

pub use host::normalize_host;
pub use report::{CompileReport, CompiledService, ServiceError, ServiceStatus};
pub use store::TableStore;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::Serialize;

use crate::balance::BackendSet;
use crate::config::labels::Redirect;
use crate::upstream::Upstream;

/// The table's hash maps: foldhash, several times faster than SipHash on short host names.
/// Their keys come from configuration, never from requests, so collision flooding is not a
/// concern (and foldhash is randomly seeded anyway).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Where an ACME CA asks for the answers to HTTP-01 challenges (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// An immutable routing snapshot. Built by [`crate::compile::compile`], never mutated.
#[derive(Default)]
pub struct RoutingTable {
    pub generation: u64,
    pub(crate) exact: FastMap<Box<str>, Arc<VirtualHost>>,
    /// Keyed by the suffix after `*.`.
    pub(crate) wildcard: FastMap<Box<str>, Arc<VirtualHost>>,
    /// The `default_backend` services, for hosts that match nothing else.
    pub(crate) default: Option<Arc<VirtualHost>>,
    /// TLS passthrough (`ssl_passthrough`) routes by SNI: exact names, and `*.suffix`.
    pub(crate) passthrough: FastMap<Box<str>, Arc<Route>>,
    /// Every endpoint of the table, so the next compile can reuse pools and counters.
    pub(crate) upstreams: FastMap<SocketAddr, Arc<Upstream>>,
    /// Round-robin cursors by route id, carried to the next generation.
    pub(crate) cursors: FastMap<Box<str>, Arc<AtomicUsize>>,
    /// Retry budgets by route id, carried to the next generation.
    pub(crate) budgets: FastMap<Box<str>, Arc<crate::balance::RetryBudget>>,
    /// What each service compiled to (or why it did not), for last-good reuse and `/routes`.
    pub services: BTreeMap<String, CompiledService>,
    /// Pending ACME HTTP-01 challenges: token -> (host, key authorization). Answered on the
    /// plain listener before routing ([`RoutingTable::acme_http01`]); empty nearly always.
    pub(crate) acme_http01: FastMap<Box<str>, (Box<str>, Box<str>)>,
    /// Each `ssl_acme` host set's certificate expiry and last problem (for `/routes`).
    pub acme: BTreeMap<String, crate::config::tls::AcmeStatus>,
    pub report: CompileReport,
}

/// Everything routed for one host pattern.
pub struct VirtualHost {
    pub name: String,
    pub redirects: Vec<Redirect>,
    /// Longest context root first.
    pub routes: Vec<Arc<Route>>,
}

/// One (host, context root) pair and its endpoints.
pub struct Route {
    /// `host` + `context_root`, e.g. `app.example.com/api`.
    pub id: Box<str>,
    /// Normalised prefix; `/` routes the whole host.
    pub context_root: String,
    /// Strip the context root before forwarding.
    pub rewrite: bool,
    pub services: Vec<String>,
    pub backends: BackendSet,
    /// Active health check of the route's endpoints, if labelled.
    pub check: Option<ActiveCheck>,
}

/// `com.docker.lb.health_path` / `health_interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub path: String,
    pub interval: std::time::Duration,
}

/// What to do with a request.
pub enum Decision<'t> {
    Forward(&'t Arc<Route>),
    /// Answer with a redirect (302 for `redirects`, 301 for a bare rewritten context root).
    Redirect {
        status: u16,
        location: String,
    },
    NotFound,
}

impl Route {
    /// True when `path` is the context root or lies below it (segment boundary).
    pub fn matches(&self, path: &str) -> bool {
        let root = self.context_root.as_str();
        root == "/"
            || path
                .strip_prefix(root)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The path and query to send upstream.
    pub fn upstream_path<'a>(&self, path_and_query: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.rewrite || self.context_root == "/" {
            return path_and_query.into();
        }
        match path_and_query.strip_prefix(self.context_root.as_str()) {
            Some(rest) if rest.starts_with('/') => rest.into(),
            Some(rest) => format!("/{rest}").into(),
            None => path_and_query.into(),
        }
    }
}

impl RoutingTable {
    /// The virtual host for an already normalised host name.
    pub fn virtual_host(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        // Most specific wildcard first: a.b.example.com tries b.example.com, then example.com.
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.bytes().position(|b| b == b'.') {
                let suffix = &rest[dot + 1..];
                if let Some(v) = self.wildcard.get(suffix) {
                    return Some(v);
                }
                rest = suffix;
            }
        }
        self.default.as_ref()
    }

    /// The key authorization answering `GET /.well-known/acme-challenge/<token>` for `host`
    /// (normalised), if that challenge is pending.
    pub fn acme_http01(&self, host: &str, path_and_query: &str) -> Option<&str> {
        if self.acme_http01.is_empty() {
            return None;
        }
        let token = path_and_query.strip_prefix(ACME_CHALLENGE_PATH)?;
        let (for_host, answer) = self.acme_http01.get(token)?;
        (**for_host == *host).then_some(&**answer)
    }

    /// The passthrough route for a TLS server name (lower case), exact before wildcard.
    pub fn passthrough(&self, sni: &str) -> Option<&Arc<Route>> {
        if let Some(r) = self.passthrough.get(sni) {
            return Some(r);
        }
        let mut rest = sni;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(r) = self.passthrough.get(format!("*.{suffix}").as_str()) {
                return Some(r);
            }
            rest = suffix;
        }
        None
    }

    /// Resolves a request. `host` must be normalised ([`normalize_host`]); `path_and_query`
    /// is the request target in origin form.
    pub fn route<'t>(&'t self, scheme: &str, host: &str, path_and_query: &str) -> Decision<'t> {
        let Some(vhost) = self.virtual_host(host) else {
            return Decision::NotFound;
        };
        if let Some(r) = vhost
            .redirects
            .iter()
            .find(|r| r.source_host == host && r.source_scheme == scheme)
        {
            return Decision::Redirect {
                status: r.status,
                location: format!("{}{}", r.target, path_and_query),
            };
        }
        let path = match path_and_query.bytes().position(|b| b == b'?') {
            Some(q) => &path_and_query[..q],
            None => path_and_query,
        };
        match vhost.routes.iter().find(|r| r.matches(path)) {
            Some(route)
                if route.rewrite && route.context_root != "/" && path == route.context_root =>
            {
                let query = &path_and_query[path.len()..];
                Decision::Redirect {
                    status: 301,
                    location: format!("{path}/{query}"),
                }
            }
            Some(route) => Decision::Forward(route),
            None => Decision::NotFound,
        }
    }

    /// Every route with its host pattern (HTTP and passthrough).
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Arc<Route>)> {
        self.vhosts()
            .flat_map(|v| v.routes.iter().map(move |r| (v.name.as_str(), r)))
            .chain(self.passthrough.iter().map(|(h, r)| (&**h, r)))
    }

    /// Number of routes in the table.
    pub fn route_count(&self) -> usize {
        self.routes().count()
    }

    fn vhosts(&self) -> impl Iterator<Item = &Arc<VirtualHost>> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.default.iter())
    }

    /// A JSON view of the live table for the admin `/routes` endpoint.
    pub fn describe(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct RouteView<'a> {
            host: &'a str,
            tls_passthrough: bool,
            context_root: &'a str,
            rewrite: bool,
            services: &'a [String],
            policy: crate::config::labels::BalancePolicy,
            endpoints: Vec<EndpointView<'a>>,
        }
        #[derive(Serialize)]
        struct EndpointView<'a> {
            addr: &'a str,
            service: &'a str,
            active: usize,
            idle_connections: usize,
        }
        let mut routes: Vec<RouteView> = self
            .routes()
            .map(|(host, r)| RouteView {
                host,
                tls_passthrough: r.id.starts_with("tls://"),
                context_root: &r.context_root,
                rewrite: r.rewrite,
                services: &r.services,
                policy: r.backends.policy,
                endpoints: r
                    .backends
                    .backends
                    .iter()
                    .map(|b| EndpointView {
                        addr: b.upstream.label(),
                        service: &b.service,
                        active: b.upstream.active(),
                        idle_connections: b.upstream.idle_connections(),
                    })
                    .collect(),
            })
            .collect();
        routes.sort_by(|a, b| (a.host, a.context_root).cmp(&(b.host, b.context_root)));
        let redirects: Vec<_> = self.vhosts().flat_map(|v| v.redirects.iter()).collect();
        serde_json::json!({
            "generation": self.generation,
            "routes": routes,
            "redirects": redirects,
            "services": self.services,
            "report": self.report,
            "acme": self.acme,
        })
    }
}
