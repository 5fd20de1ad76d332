//! TLS material that travels with the desired state, in memory: certificate pairs read by
//! the controller from its secrets, certificates issued by ACME, and the answers to the
//! ACME challenges pending. A proxy gets only its own cluster's share (see
//! [`crate::snapshot`]); the all-in-one role gets it from its own ACME client.
//!
//! Keys never appear in logs: [`PemPair`]'s `Debug` leaves them out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A certificate chain and its private key, as PEM text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"(hidden)")
            .finish()
    }
}

/// The answer to one pending HTTP-01 challenge: `GET /.well-known/acme-challenge/<token>`
/// on port 80 of `host` answers `key_authorization`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http01 {
    pub host: String,
    pub key_authorization: String,
}

/// Everything TLS that comes with a desired state rather than from this instance's files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    /// Certificate pairs named by services' `ssl_cert`/`ssl_key`, by [`pair_name`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pairs: BTreeMap<String, PemPair>,
    /// Certificates issued by ACME, by [`acme_name`] of the hosts they cover.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acme: BTreeMap<String, PemPair>,
    /// Pending HTTP-01 challenges, by token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub http01: BTreeMap<String, Http01>,
    /// Pending TLS-ALPN-01 challenges: host -> the SHA-256 digest of the key
    /// authorization, in hex (what the challenge certificate carries, RFC 8737 §3).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tls_alpn01: BTreeMap<String, String>,
    /// Each `ssl_acme` host set's certificate expiry and last problem, by [`acme_name`]
    /// (for `/routes` and logs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acme_status: BTreeMap<String, AcmeStatus>,
}

/// Where one `ssl_acme` host set stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeStatus {
    /// Its current certificate's `notAfter` (Unix seconds), if it has one.
    #[serde(default)]
    pub not_after: Option<i64>,
    /// Why its last order or renewal failed, until one succeeds.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl TlsMaterial {
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
            && self.acme.is_empty()
            && self.http01.is_empty()
            && self.tls_alpn01.is_empty()
            && self.acme_status.is_empty()
    }

    /// Adds everything of `other` (its entries win on the same name).
    pub fn merge(&mut self, other: &TlsMaterial) {
        self.pairs.extend(other.pairs.clone());
        self.acme.extend(other.acme.clone());
        self.http01.extend(other.http01.clone());
        self.tls_alpn01.extend(other.tls_alpn01.clone());
        self.acme_status.extend(other.acme_status.clone());
    }
}

/// The name of the pair a service names with `ssl_cert` and `ssl_key`.
pub fn pair_name(cert: &str, key: &str) -> String {
    format!("{cert}\n{key}")
}

/// The host set an `ssl_acme` service's certificate covers: its [`acme_name`] and its names
/// (lower case, sorted, each once).
pub fn acme_hosts(hosts: &[crate::config::labels::HostPattern]) -> (String, Vec<String>) {
    let mut names: Vec<String> = hosts
        .iter()
        .map(|h| h.to_string().to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    (acme_name(names.iter().map(String::as_str)), names)
}

/// The name of the ACME certificate covering `hosts`: the names, sorted, comma-separated.
pub fn acme_name<'a>(hosts: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<String> = hosts.into_iter().map(str::to_ascii_lowercase).collect();
    names.sort();
    names.dedup();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_key() {
        let p = PemPair {
            cert: "CERT".into(),
            key: "-----BEGIN PRIVATE KEY-----secret".into(),
        };
        let shown = format!(
            "{:?}",
            TlsMaterial {
                pairs: [("a".to_string(), p)].into(),
                ..TlsMaterial::default()
            }
        );
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(acme_name(["b.test", "A.test", "b.test"]), "a.test,b.test");
    }
}
