//! Certificates that came with the desired state, in memory: the pairs a controller read
//! from its secrets, ACME certificates, and the TLS-ALPN-01 challenge certificates made
//! from the digests of pending challenges. Each is loaded once per content: the same PEM
//! text in the next state costs a hash, not a parse.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::certs::{self, Loaded};
use crate::config::tls::TlsMaterial;

/// One in-memory pair and what was made of it.
pub struct MemoryPair {
    hash: u64,
    pub good: Option<Loaded>,
    pub error: Option<String>,
    /// Whether its error was logged.
    pub(super) reported: bool,
}

/// The in-memory pairs by [`certs::memory_id`], and the challenge certificates by host.
#[derive(Default)]
pub struct Memory {
    pub pairs: HashMap<String, MemoryPair>,
    alpn: HashMap<String, (String, Arc<CertifiedKey>)>,
}

impl Memory {
    /// Takes `material`'s pairs and challenges; returns whether anything changed.
    pub fn update(&mut self, material: &TlsMaterial, hasher: &RandomState) -> bool {
        let mut changed = false;
        let ids: HashMap<String, &crate::config::tls::PemPair> =
            certs::memory_pairs(material).collect();
        let before = self.pairs.len();
        self.pairs.retain(|id, _| ids.contains_key(id));
        changed |= self.pairs.len() != before;
        for (id, pem) in ids {
            let hash = hasher.hash_one((&pem.cert, &pem.key));
            if self.pairs.get(&id).is_some_and(|p| p.hash == hash) {
                continue;
            }
            changed = true;
            let name = Path::new(&id);
            let loaded = certs::load_pair_pem(name, pem.cert.as_bytes(), name, pem.key.as_bytes());
            let pair = match loaded {
                Ok(ck) => MemoryPair {
                    hash,
                    good: Some(Loaded::new(ck)),
                    error: None,
                    reported: false,
                },
                Err(e) => MemoryPair {
                    hash,
                    // A bad new version keeps the last good one serving.
                    good: self.pairs.remove(&id).and_then(|p| p.good),
                    error: Some(e.to_string()),
                    reported: false,
                },
            };
            self.pairs.insert(id, pair);
        }
        let before = self.alpn.len();
        self.alpn
            .retain(|host, (digest, _)| material.tls_alpn01.get(host) == Some(digest));
        changed |= self.alpn.len() != before;
        for (host, digest) in &material.tls_alpn01 {
            if self.alpn.contains_key(host) {
                continue;
            }
            match challenge_certificate(host, digest) {
                Ok(ck) => {
                    self.alpn.insert(host.clone(), (digest.clone(), ck));
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, "cannot make the TLS-ALPN-01 challenge certificate")
                }
            }
        }
        changed
    }

    /// The challenge certificates by host, for the store.
    pub fn alpn(&self) -> HashMap<String, Arc<CertifiedKey>> {
        self.alpn
            .iter()
            .map(|(h, (_, ck))| (h.clone(), ck.clone()))
            .collect()
    }
}

/// A self-signed certificate for `host` carrying the `acmeIdentifier` extension with
/// `digest_hex` (RFC 8737 §3), on a fresh key.
pub fn challenge_certificate(host: &str, digest_hex: &str) -> Result<Arc<CertifiedKey>, String> {
    let digest = decode_hex(digest_hex).ok_or("the digest is not 32 bytes of hex")?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Not through `load_pair_pem`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension. The pair is ours, made just now.
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::PemPair;

    #[test]
    fn pairs_load_once_per_content_and_a_bad_version_keeps_the_good_one() {
        let ck = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let good = PemPair {
            cert: ck.cert.pem(),
            key: ck.signing_key.serialize_pem(),
        };
        let h = RandomState::new();
        let mut m = Memory::default();
        let mut material = TlsMaterial::default();
        material.acme.insert("a.test".into(), good.clone());
        material.tls_alpn01.insert("a.test".into(), "ab".repeat(32));
        assert!(m.update(&material, &h));
        assert!(!m.update(&material, &h), "the same content: nothing to do");
        assert!(m.pairs["acme:a.test"].good.is_some());
        assert_eq!(m.alpn().len(), 1);

        material.acme.insert(
            "a.test".into(),
            PemPair {
                cert: good.cert.clone(),
                key: "not a key".into(),
            },
        );
        material.tls_alpn01.clear();
        assert!(m.update(&material, &h));
        let p = &m.pairs["acme:a.test"];
        assert!(
            p.error.is_some() && p.good.is_some(),
            "the last good pair stays"
        );
        assert!(m.alpn().is_empty());
        assert!(challenge_certificate("a.test", "zz").is_err());
    }
}
