//! interlock: a layer-7 reverse proxy and load balancer for Docker Swarm, driven by the
//! `com.docker.lb.*` service labels of Docker's Interlock.
//!
//! # Layout
//! Desired state flows one way, from providers to the data plane:
//!
//! ```text
//! providers (file, docker) -> config::DesiredState -> compile -> routing::RoutingTable
//!                                                               |  arc-swap (table::TableStore)
//!                                                               v
//!                                      proxy (hyper data plane) -> balance -> upstream (pools)
//! ```
//!
//! | module      | owns |
//! |-------------|------|
//! | `config`    | the desired-state model, label parsing, proxy settings and their defaults |
//! | `providers` | sources of desired state (the watched TOML file) |
//! | `compile`   | desired state -> immutable routing table, validated per service |
//! | `routing`   | the routing table and its host/path lookup; the swappable store |
//! | `balance`   | choosing an endpoint of a route (round robin, least connections) |
//! | `upstream`  | one backend endpoint: its connection pool and live counters |
//! | `proxy`     | the data plane: listeners, connections, forwarding, upgrades, errors |
//! | `admin`     | the admin listener: `/metrics`, `/healthz`, `/routes` |
//! | `metrics`   | Prometheus metric families and per-route handles |
//! | `app`       | wiring of one running instance: provider -> compile -> swap, shutdown |
//! | `cli`       | command line of the `interlock` binary |
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod cli;
pub mod compile;
pub mod config;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod shutdown;
pub mod tls;
pub mod upstream;
