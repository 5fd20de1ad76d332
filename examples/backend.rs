//! A tiny backend to put behind interlock (HTTP/1.1 and h2c, hyper + tokio only).
//!
//! ```text
//! cargo run --release --example backend -- --listen 127.0.0.1:9001 --name blue
//! ```
//!
//! - `GET /headers` answers the request headers, one `name: value` per line.
//! - `GET /slow?ms=N` answers like any other path, after N milliseconds (at most 60 s): a
//!   request still in flight when the backend is told to stop.
//! - Any other path answers one line naming this backend, the request's host and path.
//!
//! Stopping (SIGTERM or SIGINT) is what a production backend does within its
//! `stop_grace_period`: with `--lame-duck SECS` it first keeps serving for SECS seconds (the
//! time the proxies need to take it out of their routes), then it stops accepting, lets the
//! requests in flight finish (idle keep-alive connections are closed), and exits. Without it
//! the lame duck is 0: it stops accepting at once, then the same.
//!
//! `backend --check ADDR` is a health check for an image's `HEALTHCHECK` (exec form; the image
//! has no shell): exit 0 when `GET /` at ADDR answers 200, else 1. With one, Swarm reports a
//! task running only once it serves, so a proxy never routes to a task still starting.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

const USAGE: &str = "usage: backend [--listen ADDR] [--name NAME] [--lame-duck SECS]\n       \
    backend --check ADDR\n  \
    --listen ADDR     address to listen on (default 127.0.0.1:9001)\n  \
    --name NAME       name this backend answers with (default: $BACKEND_NAME, else backend)\n  \
    --lame-duck SECS  on SIGTERM/SIGINT, go on serving for SECS seconds (default 0), then stop\n                    \
    accepting, let requests in flight finish, and exit\n  \
    --check ADDR      health check: exit 0 if GET / at ADDR answers 200, else 1\n\
    paths: GET /headers (the request's fields), GET /slow?ms=N (answers after N ms, at most\n\
    60000), anything else (one line: this backend's name, the host and the path)";

/// The longest wait `/slow` honours.
const MAX_SLOW_MS: u64 = 60_000;

struct Args {
    listen: SocketAddr,
    name: String,
    lame_duck: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
        name: std::env::var("BACKEND_NAME").unwrap_or_else(|_| "backend".to_string()),
        lame_duck: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                args.listen = v
                    .parse()
                    .map_err(|_| format!("--listen {v:?}: expected ip:port"))?;
            }
            "--name" => args.name = value("--name")?,
            "--lame-duck" => {
                let v = value("--lame-duck")?;
                args.lame_duck = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or(format!("--lame-duck {v:?}: expected seconds"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// The wait `/slow?ms=N` asks for.
fn slow_wait(req: &Request<Incoming>) -> Option<Duration> {
    if req.uri().path() != "/slow" {
        return None;
    }
    let ms = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Some(Duration::from_millis(ms.min(MAX_SLOW_MS)))
}

fn answer(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = if req.uri().path() == "/headers" {
        let mut out = String::new();
        for (k, v) in req.headers() {
            out.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        out
    } else {
        // HTTP/1.1 carries the host in the Host field, HTTP/2 in the :authority.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("-");
        format!(
            "{name}: {} host={host} path={} ({:?})\n",
            req.method(),
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            req.version(),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = header::HeaderValue::from_str(name) {
        h.insert("x-backend", v);
    }
    resp
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--check") {
        let healthy = argv.next().is_some_and(|addr| check(&addr));
        std::process::exit(if healthy { 0 } else { 1 });
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("backend: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("backend: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    eprintln!("backend {} listening on http://{}", args.name, args.listen);
    let name: Arc<str> = args.name.into();
    let graceful = GracefulShutdown::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut lame_duck: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop, if lame_duck.is_none() => {
                eprintln!(
                    "backend {name}: stopping; serving {:?} more (lame duck)",
                    args.lame_duck
                );
                lame_duck = Some(Box::pin(tokio::time::sleep(args.lame_duck)));
                continue;
            }
            _ = async { lame_duck.as_mut().unwrap().await }, if lame_duck.is_some() => break,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let name = name.clone();
        let in_flight = in_flight.clone();
        let svc = service_fn(move |req| {
            let resp = answer(&name, &req);
            let wait = slow_wait(&req);
            let in_flight = in_flight.clone();
            async move {
                if let Some(wait) = wait {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(wait).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    eprintln!(
        "backend {name}: no longer accepting; finishing the requests in flight ({} slow)",
        in_flight.load(Ordering::SeqCst)
    );
    graceful.shutdown().await;
    eprintln!("backend {name}: stopped");
}

/// True when `GET /` at `addr` answers 200 within a second.
fn check(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let second = Some(Duration::from_secs(1));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = (s.set_read_timeout(second), s.set_write_timeout(second));
    let mut head = [0u8; 12];
    s.write_all(b"GET / HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 200")
}

/// Resolves at the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
