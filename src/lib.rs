//! interlock: a layer-7 reverse proxy and load balancer for Docker Swarm, driven by the
//! `com.docker.lb.*` service labels of Docker's Interlock.
//!
//! # Layout
//! Desired state flows one way, from providers to the data plane:
//!
//! ```text
//! providers (file, docker) -> config::DesiredState -> compile -> routing::RoutingTable
//!                                                               |  arc-swap (routing::TableStore)
//!                                                               v
//!   proxy (own HTTP/1.1 server for plain requests; hyper for the rest) -> balance -> upstream (pools, own HTTP/1.1 client; h2c via hyper)
//! ```
//!
//! Split roles put a wire between the providers and the compile: the `controller` (the only
//! role with Docker access) partitions desired state by service cluster and serves each
//! cluster's [`snapshot::Snapshot`] over mutual TLS; a `proxy` follows its cluster's snapshots
//! (`providers::controller`) and compiles them like any other provider's state.
//!
//! | module      | owns |
//! |-------------|------|
//! | `config`    | the desired-state model, label parsing, proxy settings and their defaults |
//! | `providers` | sources of desired state: the watched TOML file, Docker, a controller; starting them and following them as one |
//! | `compile`   | desired state -> immutable routing table, in named steps (validate, fallback, group, build, reuse, hosts), validated per service |
//! | `routing`   | the routing table and its host/path lookup; the compile report it carries; the swappable store |
//! | `balance`   | choosing an endpoint of a route (round robin, least connections) |
//! | `upstream`  | one backend endpoint: its connection pool and live counters; `upstream::h1`, the HTTP/1.1 client that runs inside the client connection's task |
//! | `proxy`     | the data plane: listeners, connections, forwarding, upgrades, errors; `proxy::fast_h1`, the HTTP/1.1 fast path for plain requests (hyper serves the rest) |
//! | `wire`      | writing an HTTP/1.1 head and body with vectored writes, both directions |
//! | `admin`     | the admin listener: `/metrics`, `/healthz`, `/routes` |
//! | `metrics`   | Prometheus metric families and per-route handles |
//! | `app`       | wiring of one proxying instance: provider -> compile -> swap, listeners, draining |
//! | `maintenance` | background tasks over the live table: active health probes, closing idle pooled connections |
//! | `shutdown`  | SIGTERM/SIGINT, the shutdown signal connections watch, the drain tracker |
//! | `snapshot`  | the per-cluster routing snapshot a controller serves, and the partition |
//! | `last_good` | each service's last good labels, kept by the controller and the proxies across restarts |
//! | `controller`| the controller role: versioned snapshots per cluster over mutual TLS |
//! | `tls`       | termination, SNI, the control channel's mutual TLS, `interlock certs` |
//! | `cli`       | command line of the `interlock` binary |
//! | `health`    | `interlock health`: the admin listener's `/healthz` as an exit code (HEALTHCHECK) |
#![forbid(unsafe_code)]

pub mod accept;
pub mod acme;
pub mod admin;
pub mod app;
pub mod balance;
pub mod certcheck;
pub mod cli;
pub mod compile;
pub mod config;
pub mod controller;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod last_good;
pub mod maintenance;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod shutdown;
pub mod snapshot;
pub mod tls;
pub mod trailers;
pub mod upstream;
pub mod wire;
