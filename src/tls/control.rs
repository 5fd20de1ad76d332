//! Mutual TLS of the control channel between the controller and its proxies.
//!
//! Both sides trust one private CA (`interlock certs` makes it). The controller presents a
//! server certificate and requires a client certificate signed by that CA; a proxy's
//! certificate names the one service cluster it may read: `<cluster>.cluster.interlock`,
//! or `cluster.interlock` for the default cluster. So a stolen `dev` proxy key cannot read
//! `prod`'s routes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::RootCertStore;
use thiserror::Error;

/// The DNS-name suffix of proxy identities.
pub const IDENTITY_SUFFIX: &str = "cluster.interlock";

/// Files of one side of the control channel.
#[derive(Debug, Clone)]
pub struct ControlTlsFiles {
    /// The CA both sides trust (PEM).
    pub ca: PathBuf,
    /// This side's certificate chain (PEM).
    pub cert: PathBuf,
    /// This side's private key (PEM).
    pub key: PathBuf,
}

/// Why the control channel's TLS could not be set up.
#[derive(Debug, Error)]
pub enum ControlTlsError {
    #[error("reading {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("building the control channel's TLS configuration: {0}")]
    Config(String),
}

/// The name a proxy certificate of `cluster` carries.
pub fn identity(cluster: &str) -> String {
    if cluster.is_empty() {
        IDENTITY_SUFFIX.to_string()
    } else {
        format!("{cluster}.{IDENTITY_SUFFIX}")
    }
}

/// Whether the client certificate `peer` (already verified against the CA by the
/// handshake) names `cluster`. DNS names match case-insensitively but cluster names do not
/// (`prod` is not `PROD`), so the name must also be there in exactly this case.
pub fn authorizes(peer: &CertificateDer<'_>, cluster: &str) -> bool {
    let want = identity(cluster);
    let Ok(name) = ServerName::try_from(want.clone()) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(peer) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
        && cert.valid_dns_names().any(|n| n == want)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ControlTlsError> {
    let err = |message: String| ControlTlsError::Read {
        what,
        path: path.into(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ControlTlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| ControlTlsError::Read {
        what: "private key",
        path: path.into(),
        message: e.to_string(),
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, ControlTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA certificate", ca)? {
        roots.add(cert).map_err(|e| {
            ControlTlsError::Config(format!("CA certificate {}: {e}", ca.display()))
        })?;
    }
    Ok(Arc::new(roots))
}

/// The controller's side: its certificate, and client certificates required.
pub fn server_config(files: &ControlTlsFiles) -> Result<Arc<ServerConfig>, ControlTlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|e| ControlTlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ControlTlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            read_certs("certificate", &files.cert)?,
            read_key(&files.key)?,
        )
        .map_err(|e| ControlTlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A proxy's side: trusts only the CA, presents its cluster certificate.
pub fn client_config(files: &ControlTlsFiles) -> Result<Arc<ClientConfig>, ControlTlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ControlTlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(
            read_certs("certificate", &files.cert)?,
            read_key(&files.key)?,
        )
        .map_err(|e| ControlTlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy_cert(cluster: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![identity(cluster)]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_authorizes_exactly_its_own_cluster() {
        let prod = proxy_cert("prod");
        assert!(authorizes(&prod, "prod"));
        assert!(
            !authorizes(&prod, "PROD"),
            "cluster names are case-sensitive"
        );
        assert!(!authorizes(&prod, "dev"));
        assert!(!authorizes(&prod, ""), "nor the default cluster");
        let default = proxy_cert("");
        assert!(authorizes(&default, ""));
        assert!(!authorizes(&default, "prod"));
    }
}
