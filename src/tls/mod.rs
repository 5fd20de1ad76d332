//! TLS: termination with rustls (certificates chosen by SNI from a hot-swapped store) and
//! the ClientHello reader that lets the TLS listener route passthrough hosts without
//! terminating them.

pub mod certs;
pub mod control;
pub mod expiry;
pub mod issue;
pub mod memory;
pub mod sni;
pub mod watch;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::ServerConfig;

pub use certs::{CertError, CertStore};

use crate::config::tls::TlsMaterial;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;
use certs::PairSource;
use watch::{Outcome, PairFiles};

/// The TLS side of one instance: the live certificate store, the server config that reads
/// it, and the certificate files behind it.
pub struct TlsState {
    pub store: Arc<ArcSwap<CertStore>>,
    pub config: Arc<ServerConfig>,
    pub secrets_dir: PathBuf,
    metrics: Arc<Metrics>,
    files: Mutex<Files>,
}

/// The certificate files in use and what they hold. One lock: a table's refresh and a
/// check of the files never interleave.
struct Files {
    /// The current table's services' certificate pairs.
    uses: Vec<certs::Use>,
    /// `--tls-cert/--tls-key`, if given.
    default: Option<(PathBuf, PathBuf)>,
    /// Every pair in use, by its (certificate, key) paths.
    pairs: HashMap<(PathBuf, PathBuf), PairFiles>,
    /// The pairs and challenges that came with the state.
    memory: memory::Memory,
    hasher: RandomState,
}

/// Who a pair's messages name: the services using it (or the default certificate).
const DEFAULT_USER: &str = "--tls-cert/--tls-key";

impl TlsState {
    /// TLS 1.2 and 1.3 (rustls's safe defaults: AEAD suites, ECDHE only), ALPN h2 then
    /// http/1.1. `default` (`--tls-cert/--tls-key`) is served for names no service claims;
    /// it must load now (later versions of its files that do not load are reported, and
    /// the last good one stays).
    pub fn new(
        secrets_dir: PathBuf,
        default: Option<(PathBuf, PathBuf)>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let store = Arc::new(ArcSwap::from_pointee(CertStore::default()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs::Resolver {
                store: store.clone(),
            }));
        // `acme-tls/1` last: only the CA validating a TLS-ALPN-01 challenge offers it alone.
        config.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            certs::ACME_TLS_ALPN.to_vec(),
        ];
        let mut files = Files {
            uses: Vec::new(),
            default: default.clone(),
            pairs: HashMap::new(),
            memory: memory::Memory::default(),
            hasher: RandomState::new(),
        };
        if let Some((cert, key)) = default {
            let mut pair = PairFiles::new(cert.clone(), key.clone());
            if pair.check(&files.hasher) != Outcome::Loaded {
                anyhow::bail!(
                    "loading the default certificate: {}",
                    pair.error.unwrap_or_default()
                );
            }
            files.pairs.insert((cert, key), pair);
        }
        let tls = TlsState {
            store,
            config: Arc::new(config),
            secrets_dir,
            metrics,
            files: Mutex::new(files),
        };
        tls.sync(&mut tls.lock(), true);
        Ok(Arc::new(tls))
    }

    /// Follows a new table and the TLS material of its state: loads the certificates its
    /// services name (reusing those already loaded whose files or PEM text did not change),
    /// rebuilds the store and swaps it in. A service whose pair has never loaded is
    /// reported; its hosts fall back to the default certificate, if any.
    pub fn refresh(&self, table: &RoutingTable, material: &TlsMaterial) {
        let uses = certs::uses(table, &self.secrets_dir, material);
        let mut files = self.lock();
        files.uses = uses;
        let Files { memory, hasher, .. } = &mut *files;
        memory.update(material, hasher);
        self.sync(&mut files, true);
    }

    /// Checks the certificate files in use; swaps in a new store if any pair changed to a
    /// good one.
    pub fn poll(&self) {
        self.sync(&mut self.lock(), false);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        // A poisoned lock still holds whole values (every write replaces one).
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks every pair in use, reports what is new about each (once), and swaps in a new
    /// store if `rebuild` or any pair changed to a good one.
    fn sync(&self, files: &mut Files, rebuild: bool) {
        // Who uses each pair, in service order.
        let mut users: HashMap<(PathBuf, PathBuf), Vec<&str>> = HashMap::new();
        if let Some(d) = &files.default {
            users.entry(d.clone()).or_default().push(DEFAULT_USER);
        }
        let mut memory_users: HashMap<&str, Vec<&str>> = HashMap::new();
        for u in &files.uses {
            match &u.source {
                PairSource::Files { cert, key } => users
                    .entry((cert.clone(), key.clone()))
                    .or_default()
                    .push(&u.service),
                PairSource::Memory(id) => memory_users.entry(id).or_default().push(&u.service),
            }
        }
        for (id, who) in &memory_users {
            let Some(pair) = files.memory.pairs.get_mut(*id) else {
                continue;
            };
            if let (Some(error), false) = (&pair.error, pair.reported) {
                self.metrics.cert_errors.inc();
                tracing::warn!(
                    services = %who.join(","),
                    "certificate {id:?} sent with the state does not load: {error}; {}",
                    if pair.good.is_some() { "still serving the last good one" } else { "its hosts get the default certificate, if any" }
                );
                pair.reported = true;
            }
        }
        files.pairs.retain(|k, _| users.contains_key(k));
        let mut changed = rebuild;
        for (paths, who) in &users {
            let pair = files
                .pairs
                .entry(paths.clone())
                .or_insert_with(|| PairFiles::new(paths.0.clone(), paths.1.clone()));
            let had_good = pair.good.is_some();
            let outcome = pair.check(&files.hasher);
            let services = who.join(",");
            match (&pair.error, outcome) {
                (None, Outcome::Loaded) => {
                    changed = true;
                    // Said when it replaces a certificate, or ends a reported problem.
                    let news = had_good || pair.reported.is_some();
                    pair.reported = None;
                    let not_after = pair.good.as_ref().and_then(|g| g.not_after);
                    if news {
                        tracing::info!(
                            %services,
                            cert = %pair.cert.display(),
                            key = %pair.key.display(),
                            not_after,
                            "certificate files changed: new certificate served"
                        );
                    }
                    if not_after.is_none() {
                        tracing::warn!(
                            %services,
                            cert = %pair.cert.display(),
                            "the certificate's expiry cannot be read; no expiry metric for its hosts"
                        );
                    }
                }
                (Some(error), _) => {
                    let report = format!("{services}\n{error}");
                    if pair.reported.as_deref() != Some(report.as_str()) {
                        self.metrics.cert_errors.inc();
                        if had_good {
                            tracing::warn!(
                                %services,
                                cert = %pair.cert.display(),
                                key = %pair.key.display(),
                                "{error}; still serving the last good certificate (checked again at every interval)"
                            );
                        } else {
                            tracing::error!(
                                %services,
                                "{error}; its hosts get the default certificate, if any"
                            );
                        }
                        pair.reported = Some(report);
                    }
                }
                (None, _) => pair.reported = None,
            }
        }
        if !changed {
            return;
        }
        let default = files
            .default
            .as_ref()
            .and_then(|d| files.pairs.get(d))
            .and_then(|p| p.good.as_ref());
        let store = certs::build_store(
            &files.uses,
            default,
            |source| match source {
                PairSource::Files { cert, key } => files
                    .pairs
                    .get(&(cert.clone(), key.clone()))
                    .and_then(|p| p.good.as_ref()),
                PairSource::Memory(id) => files.memory.pairs.get(id).and_then(|p| p.good.as_ref()),
            },
            files.memory.alpn(),
        );
        let new = store.expiry().clone();
        let old = self.store.swap(Arc::new(store));
        // Expiry series: one per host served, gone with the host.
        for (host, (_, source)) in old.expiry() {
            if new.get(host).is_none_or(|(_, s)| s != source) {
                let _ = self
                    .metrics
                    .cert_expiry
                    .remove_label_values(&[host.as_str(), source]);
            }
        }
        for (host, (t, source)) in &new {
            self.metrics
                .cert_expiry
                .with_label_values(&[host.as_str(), source])
                .set(*t);
        }
    }
}
