//! Step 4: virtual hosts, each with its routes (longest context root first) and redirects.

use std::sync::Arc;

use crate::config::labels::{HostPattern, Redirect};
use crate::routing::{FastMap, Route, VirtualHost};

/// The table's virtual hosts.
pub(super) struct Hosts {
    pub(super) exact: FastMap<Box<str>, Arc<VirtualHost>>,
    /// Keyed by the suffix after `*.`.
    pub(super) wildcard: FastMap<Box<str>, Arc<VirtualHost>>,
    pub(super) default: Option<Arc<VirtualHost>>,
}

/// Virtual hosts of the HTTP routes `by_host` and of the hosts with `redirects`.
/// `services`: how many services are compiled (a capacity hint).
pub(super) fn virtual_hosts(
    by_host: FastMap<Option<HostPattern>, Vec<Arc<Route>>>,
    mut redirects: FastMap<HostPattern, Vec<Redirect>>,
    services: usize,
) -> Hosts {
    let mut out = Hosts {
        exact: FastMap::default(),
        wildcard: FastMap::default(),
        default: None,
    };
    out.exact.reserve(services);
    for (host, mut host_routes) in by_host {
        host_routes.sort_by_key(|r| std::cmp::Reverse(r.context_root.len()));
        let vhost = |name: String, redirects: Vec<Redirect>| {
            Arc::new(VirtualHost {
                name,
                redirects,
                routes: host_routes,
            })
        };
        match host {
            None => out.default = Some(vhost("*".into(), Vec::new())),
            Some(h) => {
                let r = redirects.remove(&h).unwrap_or_default();
                match &h {
                    HostPattern::Exact(n) => {
                        out.exact.insert(n.as_str().into(), vhost(h.to_string(), r))
                    }
                    HostPattern::Wildcard(s) => out
                        .wildcard
                        .insert(s.as_str().into(), vhost(h.to_string(), r)),
                };
            }
        }
    }
    // Hosts with redirects but no HTTP route (TLS passthrough hosts): their HTTP port
    // still answers the redirects, which Interlock could not do.
    for (h, r) in redirects.into_iter().filter(|(_, r)| !r.is_empty()) {
        let vhost = Arc::new(VirtualHost {
            name: h.to_string(),
            redirects: r,
            routes: Vec::new(),
        });
        match &h {
            HostPattern::Exact(n) => out.exact.entry(n.as_str().into()).or_insert(vhost),
            HostPattern::Wildcard(s) => out.wildcard.entry(s.as_str().into()).or_insert(vhost),
        };
    }
    out
}
