//! The proxy role's only provider: follows its service cluster's snapshots from the
//! controller (long polls over mutual TLS) and publishes them as desired state.
//!
//! When the controller is gone the last snapshot stays published, so the proxy keeps
//! serving its last good table; polling resumes with backoff. Controller replicas (several
//! `--controller` URLs, or one name resolving to several addresses) are tried in turn: a
//! failed poll moves to the next one. Entity tags are digests of the content, so a replica
//! holding the same state answers the proxy's tag with "not modified": a failover fetches
//! nothing and swaps no table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::config::DesiredState;
use crate::last_good::LastGood;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// The largest snapshot accepted (10,000 services are a few MiB).
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One address of a replica (a replica that is gone may not even refuse).
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One controller replica: a host name (checked against its certificate) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Where the controller replicas are and who this proxy is.
#[derive(Clone)]
pub struct ControllerOptions {
    /// Tried in turn; a name may resolve to several addresses, each tried too.
    pub endpoints: Vec<Endpoint>,
    pub cluster: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// How long the controller may hold a poll open when nothing changes.
    pub wait: Duration,
    /// Where the last snapshot is saved, to serve it after a restart while the controller
    /// is unreachable.
    pub state_file: Option<PathBuf>,
}

impl std::fmt::Debug for ControllerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerOptions")
            .field("endpoints", &self.endpoints)
            .field("cluster", &self.cluster)
            .field("wait", &self.wait)
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

/// Why one poll failed.
#[derive(Debug, Error)]
pub enum PollError {
    #[error("connecting to the controller at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with the controller: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange with the controller: {0}")]
    Http(String),
    #[error("the controller answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the controller's snapshot is not valid: {0}")]
    Invalid(String),
}

/// Parses a comma-separated list of controller URLs (replicas), each as [`parse_url`].
pub fn parse_urls(urls: &str) -> Result<Vec<Endpoint>, String> {
    let endpoints: Vec<Endpoint> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| parse_url(u).map(|(host, port)| Endpoint { host, port }))
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err(format!("{urls:?}: no controller"));
    }
    Ok(endpoints)
}

/// Parses `https://host:port`, `host:port` or `host` (port 7443).
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    if rest.contains("://") {
        return Err(format!(
            "{url:?}: the controller is reached over https only"
        ));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, "7443"), // bare IPv6
        Some((h, p)) => (h, p),
        None => (rest, "7443"),
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{url:?}: expected https://HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((host.to_string(), port))
}

/// What one poll brought.
enum Outcome {
    Changed(Box<Snapshot>, String),
    Unchanged,
}

/// Runs forever: keeps `tx` at the cluster's latest snapshot.
pub async fn run(opts: ControllerOptions, tx: watch::Sender<DesiredState>, metrics: Arc<Metrics>) {
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    let mut etag: Option<String> = None;
    // Whether a state was delivered yet: the first one is news even when it equals the
    // empty state the proxy starts with (the proxy is serving only once it came).
    let mut delivered = false;
    // Last good labels of services broken now, also when a snapshot lacks them.
    let mut last_good = LastGood::default();
    if let Some(path) = &opts.state_file {
        if let Some(mut saved) = load_saved(path, &opts.cluster).await {
            last_good.apply_to(&mut saved.services);
            tracing::info!(
                path = %path.display(),
                version = saved.version,
                services = saved.services.len(),
                "serving the saved snapshot until the controller answers"
            );
            etag = Some(saved.etag());
            tx.send_replace(DesiredState {
                services: saved.services,
                tls: saved.tls,
                // A saved state is old news: no convergence to measure.
                observed_at: None,
            });
            delivered = true;
        }
    }
    let mut backoff = Duration::from_millis(100);
    let mut down_since: Option<Instant> = None;
    // The replica polled now, by index in `opts.endpoints`.
    let mut current = 0;
    loop {
        if tx.is_closed() {
            return;
        }
        let endpoint = &opts.endpoints[current % opts.endpoints.len()];
        match poll(&opts, endpoint, &mut conn, etag.as_deref()).await {
            Ok(outcome) => {
                metrics.controller_up.set(1);
                backoff = Duration::from_millis(100);
                if let Some(since) = down_since.take() {
                    tracing::info!(after = ?since.elapsed(), "controller reachable again");
                }
                if let Outcome::Changed(mut snap, tag) = outcome {
                    last_good.apply_to(&mut snap.services);
                    tracing::info!(
                        cluster = %snap.cluster,
                        version = snap.version,
                        services = snap.services.len(),
                        "new snapshot from the controller"
                    );
                    metrics
                        .snapshot_version
                        .set(i64::try_from(snap.version).unwrap_or(i64::MAX));
                    if let Some(path) = &opts.state_file {
                        save(path, &snap).await;
                    }
                    let state = DesiredState {
                        services: snap.services,
                        tls: snap.tls,
                        observed_at: snap.observed_at,
                    };
                    tx.send_if_modified(|cur| {
                        let changed = *cur != state || !delivered;
                        *cur = state;
                        changed
                    });
                    delivered = true;
                    etag = Some(tag);
                }
            }
            Err(e) => {
                conn = None;
                // The next replica, if there are several.
                current = (current + 1) % opts.endpoints.len();
                metrics.controller_up.set(0);
                metrics.controller_errors.inc();
                let not_ready = matches!(&e, PollError::Refused { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE);
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    tracing::warn!(error = %e, "controller poll failed; serving the last good snapshot");
                } else {
                    tracing::debug!(error = %e, retry_in = ?backoff, "controller still unavailable");
                }
                // With another replica to try, at once (once around the list, then back off).
                let untried = opts.endpoints.len() > 1 && current != 0;
                if !untried {
                    tokio::time::sleep(if not_ready {
                        Duration::from_millis(500)
                    } else {
                        backoff
                    })
                    .await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The snapshot saved at `path`, if it is readable and of this cluster.
async fn load_saved(path: &Path, cluster: &str) -> Option<Snapshot> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the saved snapshot");
            return None;
        }
    };
    match serde_json::from_slice::<Snapshot>(&bytes) {
        Ok(s) if s.cluster == cluster => Some(s),
        Ok(s) => {
            tracing::warn!(path = %path.display(), saved = %s.cluster, "the saved snapshot is another cluster's; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the saved snapshot is not valid; ignored");
            None
        }
    }
}

/// Saves `snap` atomically (a sibling file renamed over), so a crash never leaves half a
/// file. The file may hold private keys: it is created readable by its owner only (0600).
/// A failure is logged: the proxy keeps working, it only loses the restart fallback.
async fn save(path: &Path, snap: &Snapshot) {
    let tmp = path.with_extension("tmp");
    let result = async {
        let bytes = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
        let _ = tokio::fs::remove_file(&tmp).await;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the snapshot");
    }
}

async fn connect(
    opts: &ControllerOptions,
    endpoint: &Endpoint,
) -> Result<SendRequest<Empty<Bytes>>, PollError> {
    let addr = format!("{}:{}", endpoint.host, endpoint.port);
    let connect_err = |source| PollError::Connect {
        addr: addr.clone(),
        source,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect_any(endpoint))
        .await
        .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_err)?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| PollError::Tls(std::io::Error::other(e)))?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(opts.tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| PollError::Tls(std::io::ErrorKind::TimedOut.into()))?
    .map_err(PollError::Tls)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| PollError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A connection to one of the addresses `endpoint`'s name resolves to, each given
/// [`ADDRESS_TIMEOUT`] (one that is gone does not hold up the others).
async fn connect_any(endpoint: &Endpoint) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await? {
        match tokio::time::timeout(ADDRESS_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr}")),
        }
    }
    Err(last)
}

async fn poll(
    opts: &ControllerOptions,
    endpoint: &Endpoint,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    etag: Option<&str>,
) -> Result<Outcome, PollError> {
    let reusable = conn.as_mut().is_some_and(|s| !s.is_closed());
    if !reusable {
        *conn = Some(connect(opts, endpoint).await?);
    }
    let Some(sender) = conn.as_mut() else {
        return Err(PollError::Http("no connection".into()));
    };
    sender
        .ready()
        .await
        .map_err(|e| PollError::Http(e.to_string()))?;
    let mut req = Request::get(format!(
        "/v1/snapshot?cluster={}&wait={}",
        opts.cluster,
        opts.wait.as_secs()
    ))
    .header(header::HOST, endpoint.host.as_str());
    if let Some(tag) = etag {
        req = req.header(header::IF_NONE_MATCH, tag);
    }
    req = req.header(header::ACCEPT_ENCODING, "gzip");
    let req = req
        .body(Empty::new())
        .map_err(|e| PollError::Http(e.to_string()))?;
    let exchange = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| PollError::Http(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_SNAPSHOT_BYTES)
            .collect()
            .await
            .map_err(|e| PollError::Http(format!("reading the snapshot: {e}")))?
            .to_bytes();
        Ok::<_, PollError>((parts, body))
    };
    let (parts, body) = tokio::time::timeout(opts.wait + Duration::from_secs(15), exchange)
        .await
        .map_err(|_| PollError::Http("no answer in time".into()))??;
    match parts.status {
        StatusCode::NOT_MODIFIED => Ok(Outcome::Unchanged),
        StatusCode::OK => {
            let gzipped = parts
                .headers
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let body = if gzipped {
                Bytes::from(
                    crate::snapshot::gunzip(&body, MAX_SNAPSHOT_BYTES)
                        .map_err(PollError::Invalid)?,
                )
            } else {
                body
            };
            let snap: Snapshot =
                serde_json::from_slice(&body).map_err(|e| PollError::Invalid(e.to_string()))?;
            if snap.cluster != opts.cluster {
                return Err(PollError::Invalid(format!(
                    "it is for cluster {:?}, this proxy serves {:?}",
                    snap.cluster, opts.cluster
                )));
            }
            // The controller's tag, as it will compare it (ours only if it sent none).
            let tag = parts
                .headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| snap.etag(), str::to_string);
            Ok(Outcome::Changed(Box::new(snap), tag))
        }
        status => Err(PollError::Refused {
            status,
            message: String::from_utf8_lossy(&body).trim().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_url, parse_urls};

    #[test]
    fn several_controllers() {
        let e = parse_urls("https://a:7443, https://b:8443").unwrap();
        assert_eq!((e[0].host.as_str(), e[1].port), ("a", 8443));
        assert!(parse_urls(" , ").is_err());
    }

    #[test]
    fn controller_urls() {
        assert_eq!(parse_url("https://ctl:7443").unwrap(), ("ctl".into(), 7443));
        assert_eq!(parse_url("ctl").unwrap(), ("ctl".into(), 7443));
        assert_eq!(
            parse_url("127.0.0.1:9000/").unwrap(),
            ("127.0.0.1".into(), 9000)
        );
        assert_eq!(
            parse_url("https://[::1]:9000").unwrap(),
            ("::1".into(), 9000)
        );
        assert!(parse_url("http://ctl:80").is_err());
        assert!(parse_url("https://ctl:http").is_err());
    }
}
