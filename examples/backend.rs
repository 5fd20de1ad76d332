//! A tiny backend to put behind interlock (HTTP/1.1 and h2c, hyper + tokio only).
//!
//! ```text
//! cargo run --release --example backend -- --listen 127.0.0.1:9001 --name blue
//! ```
//!
//! - `GET /headers` answers the request headers, one `name: value` per line.
//! - Any other path answers one line naming this backend, the request's host and path.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const USAGE: &str = "usage: backend [--listen ADDR] [--name NAME]\n  \
    --listen ADDR  address to listen on (default 127.0.0.1:9001)\n  \
    --name NAME    name this backend answers with (default: $BACKEND_NAME, else backend)";

struct Args {
    listen: SocketAddr,
    name: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
        name: std::env::var("BACKEND_NAME").unwrap_or_else(|_| "backend".to_string()),
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
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
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
    let name: std::sync::Arc<str> = args.name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = answer(&name, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
