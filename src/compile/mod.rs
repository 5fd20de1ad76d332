//! Desired state -> [`RoutingTable`]. Pure apart from resolving metric handles: the same
//! input and previous table give the same routes.
//!
//! Each service is validated on its own. A service with a bad label keeps the routes of its
//! last good labels (applied to its current endpoints) if it had any, and is skipped
//! otherwise; either way the error names the service, the label and what was expected, and
//! no other service is affected. Endpoints, pools and round-robin cursors of the previous
//! table are reused, so a swap loses no balancing state or warm connection.
//!
//! The steps, one file each: `validate.rs` each service on its own (its labels in force:
//! `fallback.rs`; its addresses: `endpoints.rs`), `group.rs` the routed ones by (host,
//! context root), `build.rs` the routes on what `reuse.rs` takes over from the previous
//! table, and gather them into virtual hosts (`hosts.rs`). The report types the table
//! carries are [`crate::routing`]'s.

mod build;
mod endpoints;
mod fallback;
mod group;
mod hosts;
mod options;
mod reuse;
mod validate;

pub use crate::routing::{CompileReport, CompiledService, ServiceError, ServiceStatus};
pub use options::CompileOptions;
pub use reuse::{departed_services, departed_upstreams};
pub use validate::service_errors;

use crate::config::DesiredState;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;

use build::Routes;
use group::{Grouped, RoutedService};
use hosts::Hosts;
use reuse::Reuse;
use validate::Validated;

/// Compiles desired state against the previous table.
pub fn compile(
    state: &DesiredState,
    previous: &RoutingTable,
    opts: &CompileOptions,
    metrics: &Metrics,
) -> RoutingTable {
    let count = state.services.len();
    // 1. Validate each service on its own; broken labels fall back to the last good ones.
    let Validated {
        services,
        mut report,
    } = validate::services(state, previous, opts, metrics);
    // 2. Group the routed services by (host, context root); canary = several in one route.
    let routed = RoutedService::all(&services);
    let Grouped { drafts, redirects } = group::routes(&routed, &mut report.warnings);
    // 3. Build the routes, on the endpoints, cursors and budgets of the previous table.
    let mut reuse = Reuse::new(previous, opts.max_idle_per_endpoint, count);
    let Routes {
        by_host,
        passthrough,
    } = build::routes(drafts, &routed, &mut reuse);
    drop(routed);
    // 4. Virtual hosts, longest context root first.
    let Hosts {
        exact,
        wildcard,
        default,
    } = hosts::virtual_hosts(by_host, redirects, count);
    RoutingTable {
        generation: previous.generation + 1,
        exact,
        wildcard,
        default,
        passthrough,
        upstreams: reuse.upstreams,
        cursors: reuse.cursors,
        budgets: reuse.budgets,
        services,
        report,
        acme_http01: state
            .tls
            .http01
            .iter()
            .map(|(token, c)| {
                (
                    token.as_str().into(),
                    (
                        c.host.to_ascii_lowercase().into(),
                        c.key_authorization.as_str().into(),
                    ),
                )
            })
            .collect(),
        acme: state.tls.acme_status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::labels;
    use crate::config::{EndpointSpec, ServiceSpec};
    use crate::routing::Decision;

    #[test]
    fn redirect_source_under_a_wildcard_host_redirects() {
        let spec = ServiceSpec {
            name: "web".into(),
            labels: [
                (labels::HOSTS, "*.example.com"),
                (
                    labels::REDIRECTS,
                    "http://old.example.com,https://new.example.com",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            endpoints: vec![EndpointSpec {
                ip: [127, 0, 0, 1].into(),
                port: Some(9001),
            }],
            errors: Vec::new(),
            last_good: None,
        };
        let state = DesiredState {
            services: vec![spec],
            ..DesiredState::default()
        };
        let table = compile(
            &state,
            &RoutingTable::default(),
            &CompileOptions::default(),
            &Metrics::new(),
        );
        assert!(table.report.errors.is_empty(), "{:?}", table.report.errors);
        match table.route("http", "old.example.com", "/a?b=1") {
            Decision::Redirect { status, location } => {
                assert_eq!(
                    (status, location.as_str()),
                    (302, "https://new.example.com/a?b=1")
                );
            }
            _ => panic!("old.example.com was not redirected"),
        }
        assert!(matches!(
            table.route("http", "app.example.com", "/"),
            Decision::Forward(_)
        ));
    }
}
