//! Step 3: routes from their drafts, on the endpoints, cursors and budgets taken over from
//! the previous table ([`Reuse`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::balance::{Backend, BackendSet};
use crate::config::labels::HostPattern;
use crate::routing::{FastMap, Route};

use super::group::{RouteDraft, RouteKey, RoutedService};
use super::reuse::Reuse;

/// The built routes: HTTP ones by host (`None`: the default backend), passthrough ones by
/// server name.
pub(super) struct Routes {
    pub(super) by_host: FastMap<Option<HostPattern>, Vec<Arc<Route>>>,
    pub(super) passthrough: FastMap<Box<str>, Arc<Route>>,
}

/// Builds every drafted route.
pub(super) fn routes(
    drafts: BTreeMap<RouteKey, RouteDraft>,
    routed: &[RoutedService<'_>],
    reuse: &mut Reuse<'_>,
) -> Routes {
    let mut out = Routes {
        by_host: FastMap::default(),
        passthrough: FastMap::default(),
    };
    for (key, draft) in drafts {
        let RouteKey {
            passthrough,
            host,
            context_root,
        } = key;
        let host_name = host
            .as_ref()
            .map_or_else(|| "*".to_string(), ToString::to_string);
        let scheme = if passthrough { "tls://" } else { "" };
        let id: Box<str> = format!("{scheme}{host_name}{context_root}").into();
        let cursor = reuse.cursor(&id);
        let budget = reuse.budget(&id);
        let backends = draft
            .backends
            .iter()
            .map(|&(addr, idx)| {
                let service = &routed[idx];
                Backend {
                    upstream: reuse.upstream(addr),
                    service: service.backend_name.clone(),
                    metrics: service.metrics.clone(),
                }
            })
            .collect();
        let route = Arc::new(Route {
            id,
            context_root,
            rewrite: draft.rewrite,
            services: draft.services,
            backends: BackendSet {
                backends,
                policy: draft.policy,
                cursor,
                sticky: draft.sticky,
                health: draft.health,
                protocol: draft.protocol,
                budget,
                retries: draft.retries,
            },
            check: draft.check,
        });
        match (passthrough, host) {
            (true, Some(h)) => {
                out.passthrough.insert(h.to_string().into(), route);
            }
            (_, host) => out.by_host.entry(host).or_default().push(route),
        }
    }
    out
}
