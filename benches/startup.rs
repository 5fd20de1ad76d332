//! Start-up with many services (issue 16): `interlock run` (the release binary) on a services
//! file of N services, each with its own host and endpoint. The figures, per N: the time from
//! spawning the process to the first table being live (the last service's host is routed:
//! the proxy answers it, with 502 since its endpoint refuses, where an unknown host gets 404),
//! the RSS then, the peak RSS (VmHWM) of the start, and the RSS 5 s later (settled: the
//! allocator has returned what parsing and compiling used). Three rounds per N; the median
//! and the spread are printed.
//!
//! Not a test and not run in CI: `cargo bench --bench startup` (N = 1,000 and 10,000; set
//! `STARTUP=1000,10000,50000` to choose). Every connection is to 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use interlock_testkit::node::{rss_kib, Node, Scratch};

const ROUNDS: usize = 3;

/// N services, `svc-<i>.example.com`, each on its own endpoint on 127.0.0.1 port 1 (nothing
/// listens there: a routed request is answered 502).
fn services_file(n: usize) -> String {
    let mut out = String::with_capacity(n * 160);
    for i in 0..n {
        out.push_str(&format!(
            "[[service]]\nname = \"svc-{i}\"\nendpoints = [\"127.0.{}.{}:1\"]\n[service.labels]\n\
             \"com.docker.lb.hosts\" = \"svc-{i}.example.com\"\n\n",
            i / 250,
            i % 250 + 1
        ));
    }
    out
}

/// The status of `GET /` for `host` at `addr`, if it answered.
fn status(addr: SocketAddr, host: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Peak RSS (VmHWM) of `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One start: (time to the first table, RSS then, peak RSS, RSS 5 s later; in KiB).
fn one_start(config: &str, n: usize) -> (Duration, u64, u64, u64) {
    let listen = SocketAddr::from(([127, 0, 0, 1], interlock_testkit::free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], interlock_testkit::free_port()));
    let args: Vec<String> = ["run", "--config", config, "--listen", &listen.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let start = Instant::now();
    let node = Node::spawn("startup", &args, admin, &[]);
    let last = format!("svc-{}.example.com", n - 1);
    let deadline = start + Duration::from_secs(120);
    loop {
        if status(listen, &last) == Some(502) {
            break;
        }
        assert!(Instant::now() < deadline, "no table within 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = start.elapsed();
    let pid = node.pid();
    let rss = rss_kib(pid).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(5));
    let settled = rss_kib(pid).unwrap_or(0);
    let peak = peak_kib(pid);
    drop(node);
    (took, rss, peak, settled)
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let counts: Vec<usize> = std::env::var("STARTUP")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    println!("| services | first table: median (min-max) | RSS then | peak RSS | RSS 5 s later |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for n in counts {
        let scratch = Scratch::new("startup");
        let config = scratch.path("services.toml");
        std::fs::write(&config, services_file(n)).unwrap();
        let runs: Vec<(Duration, u64, u64, u64)> =
            (0..ROUNDS).map(|_| one_start(&config, n)).collect();
        let times: Vec<f64> = runs.iter().map(|r| r.0.as_secs_f64() * 1e3).collect();
        let (lo, hi) = times
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), t| (l.min(*t), h.max(*t)));
        println!(
            "| {n} | {:.0} ms ({lo:.0}-{hi:.0}) | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            median(times.clone()),
            median(runs.iter().map(|r| r.1).collect()) as f64 / 1024.0,
            median(runs.iter().map(|r| r.2).collect()) as f64 / 1024.0,
            median(runs.iter().map(|r| r.3).collect()) as f64 / 1024.0,
        );
    }
}
