//! Control-plane and lookup micro-benchmarks: compiling 10,000 services into a routing
//! table (cold and as a steady-state reload), resolving requests against it, and the
//! controller publishing per-cluster snapshots of 10,000 services.
//!
//! `cargo bench --bench routing` (about two minutes). Target: a cold compile of 10,000
//! services well under 50 ms. See docs/benchmarks.md.

/// The binary's allocator (src/main.rs), so compiles are measured as the binary runs them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode,
};
use interlock::compile::{compile, CompileOptions};
use interlock::config::DesiredState;
use interlock::controller::feeds::Feeds;
use interlock::metrics::Metrics;
use interlock::providers::file;
use interlock::routing::{normalize_host, Decision, RoutingTable};
use interlock::upstream::Upstream;

const SERVICES: usize = 10_000;

/// Every tenth service has a wildcard host, every seventh (of the rest) a context root.
fn is_wildcard(i: usize) -> bool {
    i.is_multiple_of(10)
}

fn has_context_root(i: usize) -> bool {
    !is_wildcard(i) && i % 7 == 3
}

/// 10,000 services, each with its own host: `*.w{i}.example.com` for wildcard services,
/// `s{i}.example.com` otherwise, `/app{i % 50}` as context root on some (half of them
/// rewritten), and 2 or 3 endpoints on 10.x.y.z with `com.docker.lb.port`.
///
/// Built as a services file and read by the file provider, so the bench does not depend
/// on the fields of `ServiceSpec` (parsing is not timed).
fn desired_state() -> DesiredState {
    let mut toml = String::with_capacity(SERVICES * 300);
    for i in 0..SERVICES {
        let n_endpoints = if i % 3 == 0 { 3 } else { 2 };
        let endpoints: Vec<String> = (1..=n_endpoints)
            .map(|z| format!("\"10.{}.{}.{z}\"", i / 256, i % 256))
            .collect();
        let host = if is_wildcard(i) {
            format!("*.w{i}.example.com")
        } else {
            format!("s{i}.example.com")
        };
        let _ = write!(
            toml,
            "[[service]]\nname = \"svc-{i:05}\"\nendpoints = [{}]\n[service.labels]\n\
             \"com.docker.lb.hosts\" = \"{host}\"\n\"com.docker.lb.port\" = \"8080\"\n\
             \"com.docker.stack.namespace\" = \"stack{}\"\n",
            endpoints.join(", "),
            i % 100,
        );
        if has_context_root(i) {
            let _ = writeln!(toml, "\"com.docker.lb.context_root\" = \"/app{}\"", i % 50);
            if i % 2 == 0 {
                toml.push_str("\"com.docker.lb.context_root_rewrite\" = \"true\"\n");
            }
        }
    }
    let state = file::parse(Path::new("bench-10k.toml"), &toml).expect("bench services file");
    assert_eq!(state.services.len(), SERVICES);
    state
}

fn compiled(state: &DesiredState) -> RoutingTable {
    let table = compile(
        state,
        &RoutingTable::default(),
        &CompileOptions::default(),
        &Metrics::new(),
    );
    assert!(
        table.report.errors.is_empty(),
        "bench state must be valid: {:?}",
        table.report.errors
    );
    assert_eq!(table.services.len(), SERVICES);
    assert_eq!(table.route_count(), SERVICES);
    table
}

fn bench_compile(c: &mut Criterion) {
    let state = desired_state();
    let opts = CompileOptions::default();
    let mut g = c.benchmark_group("compile_10k");
    slow_group(&mut g);

    // (a) First compile: empty previous table and a fresh metrics registry, so every
    // endpoint, pool, cursor and metric series is created (what start-up does). Dropping
    // the table happens outside the timed section.
    let empty = RoutingTable::default();
    g.bench_function("cold", |b| {
        b.iter_batched(
            Metrics::new,
            // Returning the registry too keeps its drop out of the timed section.
            |metrics| (compile(black_box(&state), &empty, &opts, &metrics), metrics),
            BatchSize::PerIteration,
        );
    });

    // (a') Empty previous table, but the metric series already exist in the registry.
    // (`iter_batched` rather than `iter` so that dropping the table is not timed.)
    let warm_metrics = Metrics::new();
    drop(compile(&state, &empty, &opts, &warm_metrics));
    g.bench_function("empty_previous_warm_metrics", |b| {
        b.iter_batched(
            || (),
            |()| compile(black_box(&state), &empty, &opts, &warm_metrics),
            BatchSize::PerIteration,
        );
    });

    // (b) Steady-state reload: same services, previous table given, so endpoints, pools,
    // cursors and metric handles are all reused.
    // (Setup stays outside the closures: criterion calls them more than once.)
    let metrics = Metrics::new();
    let previous = compile(&state, &RoutingTable::default(), &opts, &metrics);
    g.bench_function("reload_unchanged", |b| {
        b.iter_batched(
            || (),
            |()| compile(black_box(&state), &previous, &opts, &metrics),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// The controller's side of a change: partition 10,000 services into clusters (10 here,
/// by `com.docker.lb.service_cluster`), compare with the published snapshots and serialize
/// the clusters that moved. (a) one cluster changed; (b) nothing changed.
fn bench_publish(c: &mut Criterion) {
    let mut state = desired_state();
    for (i, s) in state.services.iter_mut().enumerate() {
        s.labels.insert(
            "com.docker.lb.service_cluster".into(),
            format!("c{}", i % 10),
        );
    }
    let mut g = c.benchmark_group("controller_publish_10k");
    slow_group(&mut g);
    let feeds = Feeds::new();
    feeds.update(&state);
    let mut toggled = state.clone();
    let mut flip = false;
    g.bench_function("one_cluster_changed", |b| {
        b.iter(|| {
            flip = !flip;
            toggled.services[0]
                .endpoints
                .truncate(if flip { 1 } else { 2 });
            if !flip {
                toggled.services[0].endpoints = state.services[0].endpoints.clone();
            }
            black_box(feeds.update(black_box(&toggled)))
        });
    });
    feeds.update(&state);
    g.bench_function("unchanged", |b| {
        b.iter(|| black_box(feeds.update(black_box(&state))));
    });
    g.finish();
}

/// Where a cold compile's time goes: the per-endpoint and per-service objects it creates.
fn bench_compile_parts(c: &mut Criterion) {
    let state = desired_state();
    let table = compiled(&state);
    let addrs: Vec<_> = table
        .services
        .values()
        .flat_map(|s| s.endpoints.iter().copied())
        .collect();
    let names: Vec<String> = table.services.keys().cloned().collect();
    let default_idle = CompileOptions::default().max_idle_per_endpoint;
    drop(table);
    let mut g = c.benchmark_group("compile_parts");
    slow_group(&mut g);
    // One `Upstream` per endpoint address (23,334 here); its idle queue is allocated up
    // front with the pool capacity.
    for cap in [default_idle, 1] {
        g.bench_function(format!("upstream_new_x{}_pool_{cap}", addrs.len()), |b| {
            b.iter_batched(
                || (),
                |()| {
                    addrs
                        .iter()
                        .map(|&a| Upstream::new(black_box(a), cap))
                        .collect::<Vec<_>>()
                },
                BatchSize::PerIteration,
            );
        });
    }
    // Metric handles of every service, series created in a fresh registry.
    g.bench_function(format!("metrics_service_x{}", names.len()), |b| {
        b.iter_batched(
            Metrics::new,
            |m| {
                let handles: Vec<_> = names.iter().map(|n| m.service(black_box(n))).collect();
                (handles, m)
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let state = desired_state();
    let table = compiled(&state);

    let (exact, wildcard, ctx) = (5002, 5000, 5001);
    assert!(!is_wildcard(exact) && !has_context_root(exact));
    assert!(is_wildcard(wildcard) && has_context_root(ctx));
    let exact_host = format!("s{exact}.example.com");
    let wildcard_host = format!("api.w{wildcard}.example.com");
    let ctx_host = format!("s{ctx}.example.com");
    let ctx_path = format!("/app{}/v1/users?id=7", ctx % 50);
    let cases: [(&str, &str, &str, bool); 4] = [
        ("exact_hit", &exact_host, "/index.html?x=1", true),
        ("wildcard_hit", &wildcard_host, "/index.html?x=1", true),
        ("context_root_hit", &ctx_host, &ctx_path, true),
        ("miss", "www.unknown-site.org", "/", false),
    ];

    let mut g = c.benchmark_group("route");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    for (name, host, path, hit) in cases {
        let forwarded = matches!(table.route("http", host, path), Decision::Forward(_));
        assert_eq!(forwarded, hit, "{name}: {host}{path}");
        g.bench_function(name, |b| {
            b.iter(|| {
                let d = table.route(black_box("http"), black_box(host), black_box(path));
                black_box(matches!(d, Decision::Forward(_)))
            });
        });
    }
    g.finish();

    let mut g = c.benchmark_group("normalize_host");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    assert_eq!(
        normalize_host("Api.W5000.Example.COM:8443").as_deref(),
        Some("api.w5000.example.com")
    );
    g.bench_function("mixed_case_with_port", |b| {
        b.iter(|| normalize_host(black_box("Api.W5000.Example.COM:8443")));
    });
    g.bench_function("lower_case_with_port", |b| {
        b.iter(|| normalize_host(black_box("api.w5000.example.com:8443")));
    });
    g.finish();
}

/// Settings of the groups whose one iteration takes milliseconds: few samples of one
/// iteration each, so the whole bench stays around two minutes.
fn slow_group(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

criterion_group!(
    benches,
    bench_compile,
    bench_compile_parts,
    bench_lookup,
    bench_publish
);
criterion_main!(benches);
