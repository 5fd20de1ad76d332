//! Certificates by server name, for TLS termination. The store is rebuilt whenever the
//! routing table changes or a certificate file does ([`super::watch`]) and swapped in
//! atomically; the resolver reads it lock-free, so certificates change (a new secret, a
//! renewed file) without a restart.

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
use crate::config::tls::{acme_hosts, pair_name, PemPair, TlsMaterial};
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

/// Largest certificate or key file read (a chain is a few KB; this bounds a name pointing
/// at something that is not a certificate file).
pub const MAX_FILE: u64 = 1 << 20;

/// Reads one certificate or key file, at most [`MAX_FILE`] bytes.
pub fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE} bytes: not a certificate or key file"
        )));
    }
    Ok(bytes)
}

/// Builds a certificate pair from the PEM text of its files (`cert` and `key` name them in
/// errors): the chain must hold a certificate and the key must be the leaf's.
pub fn load_pair_pem(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
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
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Key {
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

/// A loaded pair and its leaf's expiry.
#[derive(Clone)]
pub struct Loaded {
    pub ck: Arc<CertifiedKey>,
    /// The leaf's `notAfter` in Unix seconds (`None`: rustls took the certificate but
    /// [`super::expiry`] could not read its validity).
    pub not_after: Option<i64>,
}

impl Loaded {
    pub fn new(ck: Arc<CertifiedKey>) -> Self {
        let not_after = ck
            .cert
            .first()
            .and_then(|leaf| super::expiry::not_after(leaf.as_ref()).ok());
        Loaded { ck, not_after }
    }
}

/// Certificates by host name: exact, then wildcard, then the default.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// TLS-ALPN-01 challenge certificates by host, served only to a client that offers
    /// nothing but `acme-tls/1` (the CA validating).
    alpn: HashMap<String, Arc<CertifiedKey>>,
    /// Each served host pattern's certificate expiry (Unix seconds), as written in labels
    /// (`*.example.com` for a wildcard); [`DEFAULT_HOST`] for the default certificate.
    expiry: std::collections::BTreeMap<String, (i64, &'static str)>,
}

/// The `host` the default certificate's expiry is reported under: `*`, the names nothing
/// else claims (no label can name it: a host pattern is a name or `*.name`).
pub const DEFAULT_HOST: &str = "*";

impl CertStore {
    /// Each served host pattern's certificate expiry, in Unix seconds, and its source.
    pub fn expiry(&self) -> &std::collections::BTreeMap<String, (i64, &'static str)> {
        &self.expiry
    }

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

/// Where a service's certificate pair comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PairSource {
    /// Files of this instance (`ssl_cert`/`ssl_key` resolved against the secrets
    /// directory), watched by [`super::watch`].
    Files { cert: PathBuf, key: PathBuf },
    /// PEM text that came with the desired state ([`crate::config::tls::TlsMaterial`]):
    /// `pairs` (a secret the controller read) or `acme`, by [`memory_id`].
    Memory(String),
}

impl PairSource {
    /// The `source` of its expiry metric: `files`, `controller` (a secret the controller
    /// sent) or `acme`.
    pub fn label(&self) -> &'static str {
        match self {
            PairSource::Files { .. } => "files",
            PairSource::Memory(id) if id.starts_with("acme:") => "acme",
            PairSource::Memory(_) => "controller",
        }
    }
}

/// The name of an in-memory pair: `pair:<cert>\n<key>` or `acme:<hosts>`.
pub fn memory_id(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

/// One service's use of a certificate pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub service: String,
    pub source: PairSource,
    pub hosts: Vec<HostPattern>,
    pub default_backend: bool,
}

/// The certificate pairs a table's services use, in service order: `ssl_cert`/`ssl_key`
/// from `material` when the controller sent that pair, else from files (resolved against
/// `secrets_dir`); `ssl_acme` from `material`'s ACME certificates.
pub fn uses(table: &RoutingTable, secrets_dir: &Path, material: &TlsMaterial) -> Vec<Use> {
    let mut out = Vec::new();
    for (name, svc) in &table.services {
        let Some(l) = svc.labels.as_ref() else {
            continue;
        };
        let source = match (&l.ssl_cert, &l.ssl_key) {
            (Some(cert), Some(key)) => {
                let pair = pair_name(cert, key);
                if material.pairs.contains_key(&pair) {
                    PairSource::Memory(memory_id("pair", &pair))
                } else {
                    PairSource::Files {
                        cert: resolve_name(cert, secrets_dir),
                        key: resolve_name(key, secrets_dir),
                    }
                }
            }
            _ if l.ssl_acme => PairSource::Memory(memory_id("acme", &acme_hosts(&l.hosts).0)),
            _ => continue,
        };
        out.push(Use {
            service: name.clone(),
            source,
            hosts: l.hosts.clone(),
            default_backend: l.default_backend,
        });
    }
    out
}

/// The in-memory pairs of `material`, by [`memory_id`].
pub fn memory_pairs(material: &TlsMaterial) -> impl Iterator<Item = (String, &PemPair)> {
    let pairs = material
        .pairs
        .iter()
        .map(|(n, p)| (memory_id("pair", n), p));
    let acme = material.acme.iter().map(|(n, p)| (memory_id("acme", n), p));
    pairs.chain(acme)
}

/// Builds the store: each use's pair (as `pair` finds it loaded) serves its hosts, first
/// service first; `default` (if any) answers names nothing else claims, unless a
/// `default_backend` service brings its own. A use whose pair is not loaded serves nothing
/// (its hosts fall back to the default). `alpn` holds the TLS-ALPN-01 challenge
/// certificates by host.
pub fn build_store<'a>(
    uses: &[Use],
    default: Option<&'a Loaded>,
    pair: impl Fn(&PairSource) -> Option<&'a Loaded>,
    alpn: HashMap<String, Arc<CertifiedKey>>,
) -> CertStore {
    let mut store = CertStore {
        alpn,
        ..CertStore::default()
    };
    let mut default = default;
    let mut default_source = "files";
    for u in uses {
        let Some(loaded) = pair(&u.source) else {
            continue;
        };
        for h in &u.hosts {
            let slot = match h {
                HostPattern::Exact(n) => store.exact.entry(n.clone()),
                HostPattern::Wildcard(s) => store.wildcard.entry(s.clone()),
            };
            if let std::collections::hash_map::Entry::Vacant(v) = slot {
                v.insert(loaded.ck.clone());
                if let Some(t) = loaded.not_after {
                    store.expiry.insert(h.to_string(), (t, u.source.label()));
                }
            }
        }
        if u.default_backend && default.is_none() {
            default = Some(loaded);
            default_source = u.source.label();
        }
    }
    if let Some(d) = default {
        store.default = Some(d.ck.clone());
        if let Some(t) = d.not_after {
            store
                .expiry
                .insert(DEFAULT_HOST.to_string(), (t, default_source));
        }
    }
    store
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

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let store = self.store.load();
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // The CA validating (RFC 8737 §3): its challenge certificate, or no handshake.
            return sni.and_then(|name| store.alpn.get(&name).cloned());
        }
        store.lookup(sni.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(name: &str, not_after: i64) -> Loaded {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ck = load_pair_pem(
            Path::new("c"),
            cert.pem().as_bytes(),
            Path::new("k"),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let l = Loaded::new(ck);
        assert_eq!(l.not_after, Some(not_after));
        l
    }

    fn use_of(service: &str, pair: &str, hosts: &[HostPattern], default_backend: bool) -> Use {
        Use {
            service: service.into(),
            source: PairSource::Files {
                cert: format!("{pair}.crt").into(),
                key: format!("{pair}.key").into(),
            },
            hosts: hosts.to_vec(),
            default_backend,
        }
    }

    #[test]
    fn the_store_serves_each_host_from_its_first_service_and_reports_each_expiry() {
        let exact = |s: &str| HostPattern::Exact(s.into());
        let pairs: HashMap<PathBuf, Loaded> = [
            ("a", loaded("a.test", 2_000_000_000)),
            ("b", loaded("b.test", 3_000_000_000)),
            ("fallback", loaded("fallback.test", 4_000_000_000)),
        ]
        .into_iter()
        .map(|(k, v)| (PathBuf::from(format!("{k}.crt")), v))
        .collect();
        let uses = [
            use_of("a", "a", &[exact("a.test"), exact("shared.test")], false),
            use_of(
                "b",
                "b",
                &[exact("shared.test"), HostPattern::Wildcard("b.test".into())],
                true,
            ),
            use_of("broken", "missing", &[exact("broken.test")], false),
        ];
        let find = |source: &PairSource| match source {
            PairSource::Files { cert, .. } => pairs.get(cert),
            PairSource::Memory(_) => None,
        };
        // No --tls-cert: the default_backend's certificate is the default.
        let store = build_store(&uses, None, find, HashMap::new());
        let want: Vec<(&str, i64)> = vec![
            ("*", 3_000_000_000),
            ("*.b.test", 3_000_000_000),
            ("a.test", 2_000_000_000),
            ("shared.test", 2_000_000_000),
        ];
        let got: Vec<(&str, i64)> = store
            .expiry()
            .iter()
            .map(|(k, v)| (k.as_str(), v.0))
            .collect();
        assert_eq!(got, want);
        let served = |sni| store.lookup(Some(sni)).map(|c| c.cert[0].clone());
        let cert_of = |k: &str| Some(pairs[Path::new(&format!("{k}.crt"))].ck.cert[0].clone());
        assert_eq!(served("shared.test"), cert_of("a"));
        assert_eq!(served("x.b.test"), cert_of("b"));
        assert_eq!(
            served("broken.test"),
            cert_of("b"),
            "falls back to the default"
        );
        // --tls-cert wins over a default_backend's certificate.
        let fallback = &pairs[Path::new("fallback.crt")];
        let store = build_store(&uses, Some(fallback), find, HashMap::new());
        assert_eq!(
            store.expiry().get(DEFAULT_HOST),
            Some(&(4_000_000_000, "files"))
        );
        assert_eq!(served_default(&store), Some(fallback.ck.cert[0].clone()));
    }

    fn served_default(store: &CertStore) -> Option<CertificateDer<'static>> {
        store.lookup(None).map(|c| c.cert[0].clone())
    }
}
