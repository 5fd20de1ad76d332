//! The certificate secrets the controller sends on: each pair a service names with
//! `ssl_cert`/`ssl_key`, read from the controller's `--secrets-dir` (Docker mounts the
//! secrets attached to the controller service there). Attaching a secret to the controller
//! restarts only the controller, which costs the proxies nothing; each pair then reaches
//! only the proxies of the clusters whose services name it ([`crate::snapshot::tls_share`]).
//!
//! The files are watched like the proxies' own ([`crate::tls::watch`]: a `stat` per pair
//! and check, contents read only when they changed, a pair that does not load keeps the
//! last good one). A pair the controller cannot read is not sent: proxies then look for it
//! in their own secrets directory, as before secrets went through the controller.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::config::labels::{self, SSL_CERT};
use crate::config::tls::{pair_name, PemPair};
use crate::config::DesiredState;
use crate::tls::certs::resolve_name;
use crate::tls::watch::{Outcome, PairFiles};

/// The pairs in use and their files.
pub struct Secrets {
    dir: PathBuf,
    /// By (ssl_cert, ssl_key) as written in labels.
    pairs: HashMap<(String, String), Watched>,
    hasher: RandomState,
}

struct Watched {
    files: PairFiles,
    /// The services naming it.
    services: Vec<String>,
    /// What was last logged about it.
    reported: Option<String>,
}

impl Secrets {
    pub fn new(dir: PathBuf) -> Self {
        Secrets {
            dir,
            pairs: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// Follows the pairs `state`'s services name (their labels and last good ones).
    pub fn follow(&mut self, state: &DesiredState) {
        let mut named: HashMap<(String, String), Vec<String>> = HashMap::new();
        for spec in &state.services {
            for raw in std::iter::once(&spec.labels).chain(spec.last_good.as_ref()) {
                if !raw.contains_key(SSL_CERT) {
                    continue;
                }
                let l = labels::parse(raw).labels;
                if let (Some(c), Some(k)) = (l.ssl_cert, l.ssl_key) {
                    let users = named.entry((c, k)).or_default();
                    if !users.contains(&spec.name) {
                        users.push(spec.name.clone());
                    }
                }
            }
        }
        self.pairs.retain(|k, _| named.contains_key(k));
        for (names, services) in named {
            let dir = &self.dir;
            self.pairs
                .entry(names.clone())
                .or_insert_with(|| Watched {
                    files: PairFiles::new(resolve_name(&names.0, dir), resolve_name(&names.1, dir)),
                    services: Vec::new(),
                    reported: None,
                })
                .services = services;
        }
    }

    /// Checks every pair's files; returns whether a pair sent on changed. Blocks (file
    /// system calls).
    pub fn check(&mut self) -> bool {
        let mut changed = false;
        for ((cert, key), w) in &mut self.pairs {
            let outcome = w.files.check(&self.hasher);
            changed |= outcome == Outcome::Loaded;
            let report = w.files.error.clone();
            if report != w.reported {
                if let Some(error) = &report {
                    tracing::warn!(
                        services = %w.services.join(","),
                        ssl_cert = %cert,
                        ssl_key = %key,
                        "{error}; {}",
                        if w.files.good.is_some() {
                            "the proxies keep the last good pair"
                        } else {
                            "not sent to the proxies: attach the secrets to the controller service (proxies look in their own secrets directory meanwhile)"
                        }
                    );
                } else if w.reported.is_some() {
                    tracing::info!(ssl_cert = %cert, ssl_key = %key, services = %w.services.join(","), "certificate secret readable again; sent to the proxies");
                }
                w.reported = report;
            }
        }
        changed
    }

    /// The good pairs, by [`pair_name`].
    pub fn pairs(&self) -> BTreeMap<String, PemPair> {
        self.pairs
            .iter()
            .filter_map(|((c, k), w)| Some((pair_name(c, k), w.files.good_pem.clone()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceSpec;

    #[test]
    fn pairs_named_by_services_are_read_and_followed() {
        let dir = std::env::temp_dir().join(format!("interlock-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        std::fs::write(dir.join("a.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("a.key"), ck.signing_key.serialize_pem()).unwrap();
        let svc = |name: &str, cert: &str| ServiceSpec {
            name: name.into(),
            labels: [
                ("com.docker.lb.hosts".to_string(), "a.test".to_string()),
                (SSL_CERT.to_string(), cert.to_string()),
                ("com.docker.lb.ssl_key".to_string(), "a.key".to_string()),
            ]
            .into(),
            endpoints: vec![],
            errors: vec![],
            last_good: None,
        };
        let mut s = Secrets::new(dir.clone());
        s.follow(&DesiredState {
            services: vec![svc("web", "a.crt"), svc("missing", "nope.crt")],
            ..DesiredState::default()
        });
        assert!(s.check(), "a.crt loaded");
        let pairs = s.pairs();
        assert_eq!(pairs.len(), 1, "the missing one is not sent");
        assert_eq!(pairs[&pair_name("a.crt", "a.key")].cert, ck.cert.pem());
        assert!(!s.check(), "nothing new");
        s.follow(&DesiredState::default());
        assert!(s.pairs().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
