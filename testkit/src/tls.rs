//! TLS for the tests: self-signed certificates, a client that accepts any certificate (the
//! tests compare the served one byte for byte), one GET on a kept-alive connection.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for `names` valid until `not_after` (Unix seconds): its DER,
/// PEM and key PEM.
pub struct Pem {
    pub der: Vec<u8>,
    pub cert: String,
    pub key: String,
}

pub fn issue(names: &[&str], not_after: i64) -> Pem {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pem {
        der: cert.der().to_vec(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Accepts any certificate: the test compares the served one byte for byte.
#[derive(Debug)]
pub struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl AnyCert {
    /// The verifier, on ring's algorithms.
    pub fn new() -> Arc<AnyCert> {
        Arc::new(AnyCert(Arc::new(rustls::crypto::ring::default_provider())))
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `port` for `sni` (ALPN http/1.1).
pub async fn connect(port: u16, sni: &str) -> Tls {
    try_connect(port, sni)
        .await
        .unwrap_or_else(|e| panic!("TLS to 127.0.0.1:{port} for {sni}: {e}"))
}

/// A TLS connection to 127.0.0.1:`port` for `sni` (ALPN http/1.1), or why not.
pub async fn try_connect(port: u16, sni: &str) -> std::io::Result<Tls> {
    try_connect_to(std::net::SocketAddr::from(([127, 0, 0, 1], port)), sni).await
}

/// The leaf certificate a new handshake with `addr` for `sni` gets, if it succeeds.
pub async fn try_served_at(addr: std::net::SocketAddr, sni: &str) -> Option<Vec<u8>> {
    let tls = try_connect_to(addr, sni).await.ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].to_vec())
}

/// A TLS connection to `addr` for `sni` (ALPN http/1.1), or why not.
pub async fn try_connect_to(addr: std::net::SocketAddr, sni: &str) -> std::io::Result<Tls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// The leaf certificate a new handshake for `sni` gets, if the handshake succeeds.
pub async fn try_served(port: u16, sni: &str) -> Option<Vec<u8>> {
    let tls = try_connect(port, sni).await.ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].to_vec())
}

/// The leaf certificate a new handshake for `sni` gets.
pub async fn served(port: u16, sni: &str) -> Vec<u8> {
    let tls = connect(port, sni).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One GET on a kept-alive connection: status line and body (a content-length answer).
pub async fn get(tls: &mut Tls, host: &str) -> (String, String) {
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // tokio-rustls may keep written records in its buffer until flushed.
    tls.flush().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length answer");
            while buf.len() < end + 4 + len {
                let n = tls.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return (head.lines().next().unwrap_or("").to_string(), body);
        }
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}
