//! TLS: termination with rustls (certificates chosen by SNI from a hot-swapped store) and
//! the ClientHello reader that lets the TLS listener route passthrough hosts without
//! terminating them.

pub mod certs;
pub mod control;
pub mod issue;
pub mod sni;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::ServerConfig;
use rustls::sign::CertifiedKey;

pub use certs::{CertError, CertStore};

use crate::routing::RoutingTable;

/// The TLS side of one instance: the live certificate store and the server config that
/// reads it.
pub struct TlsState {
    pub store: Arc<ArcSwap<CertStore>>,
    pub config: Arc<ServerConfig>,
    pub secrets_dir: PathBuf,
    /// Served for names no service claims (`--tls-cert/--tls-key`).
    pub default: Option<Arc<CertifiedKey>>,
}

impl TlsState {
    /// TLS 1.2 and 1.3 (rustls's safe defaults: AEAD suites, ECDHE only), ALPN h2 then
    /// http/1.1.
    pub fn new(
        secrets_dir: PathBuf,
        default: Option<Arc<CertifiedKey>>,
    ) -> Result<Arc<Self>, rustls::Error> {
        let store = Arc::new(ArcSwap::from_pointee(CertStore::default()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs::Resolver {
                store: store.clone(),
            }));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(TlsState {
            store,
            config: Arc::new(config),
            secrets_dir,
            default,
        }))
    }

    /// Rebuilds the certificate store for a new table and swaps it in. Returns the errors
    /// by service (their hosts fall back to the default certificate, if any).
    pub fn refresh(&self, table: &RoutingTable) -> Vec<(String, CertError)> {
        let (store, errors) = certs::build_store(table, &self.secrets_dir, self.default.clone());
        self.store.store(Arc::new(store));
        errors
    }
}
