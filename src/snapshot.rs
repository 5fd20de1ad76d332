//! The routing snapshot: what a controller serves to the proxies of one service cluster
//! (and, [`Encoded`], its JSON and entity tag as served), and how the desired state is
//! partitioned into clusters.
//!
//! A snapshot is desired state, not a compiled table: every proxy compiles it itself with
//! the same per-service validation, so a proxy keeps its pools, balancing state and the
//! last good routes of a service whose labels broke, exactly as in the all-in-one role.
//! Only `com.docker.lb.*` labels leave the controller.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::labels::{self, SERVICE_CLUSTER, SSL_ACME, SSL_CERT};
use crate::config::tls::{acme_hosts, pair_name, TlsMaterial};
use crate::config::{DesiredState, ServiceSpec};

/// The prefix of every label interlock reads; other labels never leave the controller.
pub const LABEL_PREFIX: &str = "com.docker.lb.";

/// One cluster's services at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The service cluster (`""`: services without `com.docker.lb.service_cluster`).
    pub cluster: String,
    /// Changes whenever the controller restarts; with `version` it names one snapshot.
    pub epoch: String,
    /// Grows by one with every change of this cluster's services (not of other clusters').
    pub version: u64,
    pub services: Vec<ServiceSpec>,
    /// The certificates and ACME challenge answers of these services' hosts, and of no
    /// other cluster's ([`tls_share`]).
    #[serde(default, skip_serializing_if = "TlsMaterial::is_empty")]
    pub tls: TlsMaterial,
    /// When the change this version carries was seen by the controller's providers (Unix
    /// seconds): each proxy measures its convergence from it. Not part of the entity tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<f64>,
}

impl Snapshot {
    /// The HTTP entity tag of this snapshot: a digest of what it carries (cluster, services,
    /// TLS share), not of which controller made it when. Controller replicas holding the
    /// same state give the same tag, so a proxy failing over to another replica, or polling
    /// a restarted one, fetches nothing when nothing changed.
    pub fn etag(&self) -> String {
        content_etag(&self.cluster, &self.services, &self.tls)
    }
}

/// The entity tag of a cluster's content: the first 128 bits of the SHA-256 of its JSON
/// (deterministic: services sorted by name, maps ordered).
pub fn content_etag(cluster: &str, services: &[ServiceSpec], tls: &TlsMaterial) -> String {
    // Serializing plain data (strings, maps, numbers) cannot fail.
    let json = serde_json::to_vec(&(cluster, services, tls)).unwrap_or_default();
    etag_of(ring::digest::digest(&ring::digest::SHA256, &json))
}

fn etag_of(digest: ring::digest::Digest) -> String {
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// A snapshot as a controller serves it: its JSON (the [`Snapshot`] format) and its entity
/// tag ([`content_etag`]).
pub struct Encoded {
    pub body: Vec<u8>,
    pub etag: String,
}

impl Encoded {
    /// Serializes the services and the TLS share once for both the body and the tag (they
    /// are nearly all of a snapshot: 10,000 services make megabytes of JSON), from borrowed
    /// data: no [`Snapshot`] copy of them is made.
    pub fn new(
        cluster: &str,
        epoch: &str,
        version: u64,
        services: &[ServiceSpec],
        tls: &TlsMaterial,
        observed_at: Option<f64>,
    ) -> Encoded {
        use serde_json::value::{to_raw_value, RawValue};

        /// [`Snapshot`]'s fields, in its order and with its rules, the large ones as JSON
        /// already made.
        #[derive(Serialize)]
        struct Wire<'a> {
            cluster: &'a RawValue,
            epoch: &'a str,
            version: u64,
            services: &'a RawValue,
            #[serde(skip_serializing_if = "Option::is_none")]
            tls: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            observed_at: Option<f64>,
        }

        // Serializing plain data (strings, maps, numbers) cannot fail; if it did, the tag
        // would still be the content's and the body empty, as with `serde_json::to_vec`.
        let (Ok(cluster_json), Ok(services_json), Ok(tls_json)) = (
            to_raw_value(cluster),
            to_raw_value(services),
            to_raw_value(tls),
        ) else {
            return Encoded {
                body: Vec::new(),
                etag: content_etag(cluster, services, tls),
            };
        };
        // The bytes `content_etag` hashes: the JSON of (cluster, services, tls).
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            "[",
            cluster_json.get(),
            ",",
            services_json.get(),
            ",",
            tls_json.get(),
            "]",
        ] {
            digest.update(part.as_bytes());
        }
        let wire = Wire {
            cluster: &cluster_json,
            epoch,
            version,
            services: &services_json,
            tls: (!tls.is_empty()).then_some(&*tls_json),
            observed_at,
        };
        Encoded {
            body: serde_json::to_vec(&wire).unwrap_or_default(),
            etag: etag_of(digest.finish()),
        }
    }
}

/// `body` gzip-compressed, fast (level 1: a snapshot of 10,000 services shrinks about
/// tenfold in milliseconds).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// A gzip body decompressed, refused beyond `limit` bytes (a bomb stops there).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(body.len().saturating_mul(8).min(limit));
    flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not a valid gzip body: {e}"))?;
    if out.len() > limit {
        return Err(format!("larger than {limit} bytes once decompressed"));
    }
    Ok(out)
}

/// The services of `state` by service cluster, sorted by name, with only interlock's
/// labels. The key is the raw label value: a service whose cluster label is malformed
/// lands under a name no proxy can ask for, so it reaches no cluster at all.
pub fn partition(state: &DesiredState) -> BTreeMap<String, Vec<ServiceSpec>> {
    let mut clusters: BTreeMap<String, Vec<ServiceSpec>> = BTreeMap::new();
    for spec in &state.services {
        let cluster = spec
            .labels
            .get(SERVICE_CLUSTER)
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let labels = spec
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with(LABEL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        clusters.entry(cluster).or_default().push(ServiceSpec {
            labels,
            ..spec.clone()
        });
    }
    for services in clusters.values_mut() {
        services.sort_by(|a, b| a.name.cmp(&b.name));
    }
    clusters
}

/// The share of `tls` that `services` (one cluster's) use: the pairs their
/// `ssl_cert`/`ssl_key` name, the ACME certificates of their `ssl_acme` hosts, and the
/// challenges pending for those hosts. Nothing of another cluster's: a `dev` proxy never
/// receives a key of `prod`'s. The labels in force may be the last good ones, so those
/// count too.
pub fn tls_share(services: &[ServiceSpec], tls: &TlsMaterial) -> TlsMaterial {
    let mut out = TlsMaterial::default();
    if tls.is_empty() {
        return out;
    }
    for spec in services {
        for raw in std::iter::once(&spec.labels).chain(spec.last_good.as_ref()) {
            if !raw.contains_key(SSL_CERT) && !raw.contains_key(SSL_ACME) {
                continue;
            }
            let l = labels::parse(raw).labels;
            if let (Some(cert), Some(key)) = (&l.ssl_cert, &l.ssl_key) {
                let name = pair_name(cert, key);
                if let Some(p) = tls.pairs.get(&name) {
                    out.pairs.insert(name, p.clone());
                }
            }
            if !l.ssl_acme {
                continue;
            }
            let (name, hosts) = acme_hosts(&l.hosts);
            if let Some(p) = tls.acme.get(&name) {
                out.acme.insert(name.clone(), p.clone());
            }
            if let Some(e) = tls.acme_status.get(&name) {
                out.acme_status.insert(name, e.clone());
            }
            for (token, c) in &tls.http01 {
                if hosts.contains(&c.host) {
                    out.http01.insert(token.clone(), c.clone());
                }
            }
            for h in &hosts {
                if let Some(k) = tls.tls_alpn01.get(h) {
                    out.tls_alpn01.insert(h.clone(), k.clone());
                }
            }
        }
    }
    out
}

/// Whether `name` may name a service cluster (the rule of the label, and a DNS label or
/// dotted name so it fits in a certificate).
pub fn valid_cluster_name(name: &str) -> bool {
    name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointSpec;

    fn svc(name: &str, labels: &[(&str, &str)]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            endpoints: vec![EndpointSpec {
                ip: "10.0.0.1".parse().unwrap(),
                port: None,
            }],
            errors: vec![],
            last_good: None,
        }
    }

    #[test]
    fn partitions_by_cluster_label_and_keeps_only_interlock_labels() {
        let state = DesiredState {
            services: vec![
                svc("b", &[(SERVICE_CLUSTER, "prod"), ("secret.password", "x")]),
                svc("a", &[(SERVICE_CLUSTER, "prod")]),
                svc("c", &[(SERVICE_CLUSTER, "dev")]),
                svc("d", &[("com.docker.lb.hosts", "d.local")]),
                svc("e", &[(SERVICE_CLUSTER, "bad name!")]),
            ],
            ..DesiredState::default()
        };
        let p = partition(&state);
        let names = |c: &str| p[c].iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
        assert_eq!(names("prod"), ["a", "b"]);
        assert_eq!(names("dev"), ["c"]);
        assert_eq!(names(""), ["d"]);
        assert_eq!(names("bad name!"), ["e"]);
        assert!(!valid_cluster_name("bad name!"));
        assert!(p["prod"][1]
            .labels
            .keys()
            .all(|k| k.starts_with(LABEL_PREFIX)));
    }

    #[test]
    fn a_cluster_gets_only_the_certificates_and_challenges_of_its_own_hosts() {
        use crate::config::tls::{Http01, PemPair};
        let pem = |s: &str| PemPair {
            cert: format!("cert {s}"),
            key: format!("key {s}"),
        };
        let tls = TlsMaterial {
            pairs: [
                (pair_name("prod.crt", "prod.key"), pem("prod")),
                (pair_name("dev.crt", "dev.key"), pem("dev")),
            ]
            .into(),
            acme: [
                ("a.prod.test".to_string(), pem("acme prod")),
                ("a.dev.test".to_string(), pem("acme dev")),
            ]
            .into(),
            http01: [
                (
                    "t1".to_string(),
                    Http01 {
                        host: "a.prod.test".into(),
                        key_authorization: "k1".into(),
                    },
                ),
                (
                    "t2".to_string(),
                    Http01 {
                        host: "a.dev.test".into(),
                        key_authorization: "k2".into(),
                    },
                ),
            ]
            .into(),
            tls_alpn01: [("a.dev.test".to_string(), "k3".to_string())].into(),
            acme_status: [(
                "a.dev.test".to_string(),
                crate::config::tls::AcmeStatus {
                    not_after: None,
                    last_error: Some("rate limited".into()),
                },
            )]
            .into(),
        };
        let prod = vec![
            svc(
                "p1",
                &[
                    (SSL_CERT, "prod.crt"),
                    ("com.docker.lb.ssl_key", "prod.key"),
                    ("com.docker.lb.hosts", "p.test"),
                ],
            ),
            svc(
                "p2",
                &[(SSL_ACME, "true"), ("com.docker.lb.hosts", "A.prod.test")],
            ),
        ];
        let share = tls_share(&prod, &tls);
        assert_eq!(
            share.pairs.keys().collect::<Vec<_>>(),
            [&pair_name("prod.crt", "prod.key")]
        );
        assert_eq!(share.acme.keys().collect::<Vec<_>>(), ["a.prod.test"]);
        assert_eq!(share.http01.keys().collect::<Vec<_>>(), ["t1"]);
        assert!(share.tls_alpn01.is_empty() && share.acme_status.is_empty());
        let shown = serde_json::to_string(&share).unwrap();
        assert!(!shown.contains("dev"), "{shown}");
    }

    #[test]
    fn gzip_round_trips_and_a_bomb_stops_at_the_limit() {
        let body = br#"{"cluster":"prod","services":[]}"#.repeat(1000);
        let small = gzip(&body);
        assert!(small.len() * 10 < body.len());
        assert_eq!(gunzip(&small, body.len()).unwrap(), body);
        assert!(gunzip(&small, body.len() - 1)
            .unwrap_err()
            .contains("larger"));
        assert!(gunzip(b"not gzip", 100).is_err());
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let s = Snapshot {
            cluster: "prod".into(),
            epoch: "e1".into(),
            version: 7,
            services: vec![svc("a", &[(SERVICE_CLUSTER, "prod")])],
            tls: TlsMaterial::default(),
            observed_at: Some(1.5),
        };
        let back: Snapshot = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // The tag is the content's: another controller (epoch) and version, the same tag;
        // other services, another tag.
        let replica = Snapshot {
            epoch: "e2".into(),
            version: 3,
            observed_at: Some(2.0),
            ..s.clone()
        };
        assert_eq!(replica.etag(), s.etag());
        assert_eq!(s.etag().len(), 34);
        let other = Snapshot {
            services: vec![svc("b", &[(SERVICE_CLUSTER, "prod")])],
            ..s.clone()
        };
        assert_ne!(other.etag(), s.etag());
    }

    /// The served snapshot, made from borrowed data with one serialization, is the
    /// snapshot's JSON byte for byte, and its tag the content's: with and without a TLS
    /// share and an observation time.
    #[test]
    fn encoded_is_the_snapshots_json_and_tag() {
        let mut tls = TlsMaterial::default();
        tls.tls_alpn01
            .insert("web.prod.test".into(), "answer".into());
        for (tls, observed_at) in [
            (TlsMaterial::default(), None),
            (TlsMaterial::default(), Some(1.5)),
            (tls.clone(), None),
            (tls, Some(1_700_000_000.25)),
        ] {
            let s = Snapshot {
                cluster: "prod \"quoted\"".into(),
                epoch: "e1".into(),
                version: 7,
                services: vec![
                    svc("a", &[(SERVICE_CLUSTER, "prod")]),
                    svc("b", &[(SERVICE_CLUSTER, "prod")]),
                ],
                tls,
                observed_at,
            };
            let encoded = Encoded::new(
                &s.cluster,
                &s.epoch,
                s.version,
                &s.services,
                &s.tls,
                s.observed_at,
            );
            assert_eq!(
                String::from_utf8(encoded.body).unwrap(),
                serde_json::to_string(&s).unwrap()
            );
            assert_eq!(encoded.etag, s.etag());
        }
    }
}
