//! Certificates by server name, for TLS termination. The store is rebuilt whenever the
//! routing table changes and swapped in atomically; the resolver reads it lock-free, so
//! certificates change (a new secret, a renewed file) without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

use crate::config::labels::HostPattern;
use crate::routing::RoutingTable;

/// Why a certificate could not be loaded.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("reading certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("reading private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// Loads a PEM certificate chain and private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| CertError::Cert {
            path: cert.into(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::Cert {
            path: cert.into(),
            message: "no PEM certificate in the file".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| CertError::Key {
        path: key.into(),
        message: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| CertError::Pair {
            cert: cert.into(),
            key: key.into(),
            message: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| CertError::Pair {
        cert: cert.into(),
        key: key.into(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

/// Certificates by host name: exact, then wildcard, then the default.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(name) {
            return Some(c.clone());
        }
        let mut rest = name;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(c) = self.wildcard.get(suffix) {
                return Some(c.clone());
            }
            rest = suffix;
        }
        self.default.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    pub fn names(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Where `ssl_cert`/`ssl_key` names point: an absolute path as is, else a file in the
/// secrets directory (Docker mounts secrets at `/run/secrets/<name>`).
pub fn resolve_name(name: &str, secrets_dir: &Path) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        secrets_dir.join(name)
    }
}

/// Builds the store for a table: each service's `ssl_cert`/`ssl_key` serve its hosts; the
/// `default` pair (if any) answers names nothing else claims. Returns the errors by service.
pub fn build_store(
    table: &RoutingTable,
    secrets_dir: &Path,
    default: Option<Arc<CertifiedKey>>,
) -> (CertStore, Vec<(String, CertError)>) {
    let mut store = CertStore {
        default,
        ..CertStore::default()
    };
    let mut errors = Vec::new();
    let mut cache: HashMap<(PathBuf, PathBuf), Arc<CertifiedKey>> = HashMap::new();
    for (name, svc) in &table.services {
        let Some(l) = svc.labels.as_ref() else {
            continue;
        };
        let (Some(cert), Some(key)) = (&l.ssl_cert, &l.ssl_key) else {
            continue;
        };
        let paths = (
            resolve_name(cert, secrets_dir),
            resolve_name(key, secrets_dir),
        );
        let ck = match cache.get(&paths) {
            Some(ck) => ck.clone(),
            None => match load_pair(&paths.0, &paths.1) {
                Ok(ck) => {
                    cache.insert(paths, ck.clone());
                    ck
                }
                Err(e) => {
                    errors.push((name.clone(), e));
                    continue;
                }
            },
        };
        for h in &l.hosts {
            match h {
                HostPattern::Exact(n) => store.exact.entry(n.clone()).or_insert_with(|| ck.clone()),
                HostPattern::Wildcard(s) => store
                    .wildcard
                    .entry(s.clone())
                    .or_insert_with(|| ck.clone()),
            };
        }
        if l.default_backend && store.default.is_none() {
            store.default = Some(ck.clone());
        }
    }
    (store, errors)
}

/// The rustls certificate resolver over the live store.
#[derive(Debug)]
pub struct Resolver {
    pub store: Arc<ArcSwap<CertStore>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        self.store.load().lookup(sni.as_deref())
    }
}
