//! The ACME client's HTTP: one HTTPS request per connection (hyper over rustls), with the
//! roots the operator chose (`--acme-ca-root`) or the public CAs' (webpki-roots). An ACME
//! client sends a few requests per certificate, so no pool; every request is bounded in
//! time and size. The last `Retry-After` a CA sent is kept for the scheduler's backoff.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest a whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a certificate chain or a directory is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// The client, and the last `Retry-After` it saw.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl Client {
    /// Trusts the certificates of `ca_root` (PEM) if given, else the public CAs.
    pub fn new(ca_root: Option<&Path>) -> anyhow::Result<Client> {
        let mut roots = RootCertStore::empty();
        match ca_root {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--acme-ca-root {}: {e}", path.display()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert
                        .map_err(|e| anyhow::anyhow!("--acme-ca-root {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| anyhow::anyhow!("--acme-ca-root {}: {e}", path.display()))?;
                }
                anyhow::ensure!(
                    !roots.is_empty(),
                    "--acme-ca-root {}: no PEM certificate in the file",
                    path.display()
                );
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
            retry_after: Arc::new(Mutex::new(None)),
        })
    }

    /// The `Retry-After` of the last answer that had one, and forgets it.
    pub fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    async fn exchange(
        tls: TlsConnector,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Result<http::Response<Bytes>, String> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{uri}: an ACME directory is reached over https only"
            ));
        }
        let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP with {host}:{port}: {e}"))?;
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        // Origin form on the wire, and the Host field hyper's client connection does not add.
        parts.uri = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|e| format!("{uri}: {e}"))?;
        let authority = uri.authority().map_or(host, |a| a.as_str());
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
        );
        let resp = send
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{uri}: reading the answer: {e}"))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let resp = tokio::time::timeout(TIMEOUT, Self::exchange(tls, req))
                .await
                .map_err(|_| "the ACME CA did not answer in time".to_string())
                .and_then(|r| r)
                .map_err(|e| instant_acme::Error::Other(e.into()))?;
            if let Some(when) = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
            {
                *retry_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(when);
            }
            let (parts, body) = resp.into_parts();
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return SystemTime::now().checked_add(Duration::from_secs(secs.min(7 * 86_400)));
    }
    httpdate::parse_http_date(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let in_a_minute = parse_retry_after("60").unwrap();
        let d = in_a_minute.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(55) && d <= Duration::from_secs(60));
        assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        assert!(parse_retry_after("soon").is_none());
    }
}
