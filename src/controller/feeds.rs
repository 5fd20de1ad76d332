//! The controller's versioned snapshots, one feed per service cluster.
//!
//! A cluster's version moves only when its own services change, so a change in `dev`
//! wakes no `prod` proxy. Snapshots are serialized once per version and shared by every
//! proxy that asks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::tls::TlsMaterial;
use crate::config::{DesiredState, ServiceSpec};
use crate::snapshot::{self, Encoded};

/// One version of one cluster, ready to send.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub etag: String,
    pub services: usize,
    /// The JSON of the [`Snapshot`](crate::snapshot::Snapshot).
    pub body: Bytes,
    /// The same, gzip-compressed (made once, for every proxy that accepts it).
    pub gzip: Bytes,
}

/// A cluster whose version moved.
#[derive(Debug, PartialEq)]
pub struct Moved {
    pub cluster: String,
    pub version: u64,
    /// Seconds from the change to this version's publication, when it carries a new change
    /// (a version moved by something else, e.g. an ACME certificate, has none).
    pub convergence: Option<f64>,
}

struct Feed {
    services: Vec<ServiceSpec>,
    tls: TlsMaterial,
    /// Seconds from the change behind the current version to its publication.
    convergence: Option<f64>,
    /// When that change happened (Unix seconds).
    observed_at: Option<f64>,
    tx: watch::Sender<Arc<Published>>,
}

/// Every cluster's feed. The lock guards only the map of feeds (a request takes it once to
/// subscribe; waiting happens on the feed's own channel).
pub struct Feeds {
    epoch: String,
    inner: Mutex<Inner>,
}

struct Inner {
    /// False until every provider has reported once: until then the controller knows
    /// nothing, and serving an empty snapshot would wipe the proxies' good tables.
    synced: bool,
    feeds: HashMap<String, Feed>,
    /// Each ACME host set's expiry and last problem (for `/routes`).
    acme: std::collections::BTreeMap<String, crate::config::tls::AcmeStatus>,
}

impl Feeds {
    /// Feeds of a new controller incarnation.
    pub fn new() -> Arc<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Arc::new(Feeds {
            epoch: format!("{:x}{:x}", nanos, std::process::id()),
            inner: Mutex::new(Inner {
                synced: false,
                feeds: HashMap::new(),
                acme: Default::default(),
            }),
        })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is one
        // assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(
        &self,
        cluster: &str,
        version: u64,
        services: &[ServiceSpec],
        tls: &TlsMaterial,
        observed_at: Option<f64>,
    ) -> Arc<Published> {
        let Encoded { body, etag } =
            Encoded::new(cluster, &self.epoch, version, services, tls, observed_at);
        let gzip = crate::snapshot::gzip(&body);
        Arc::new(Published {
            version,
            etag,
            services: services.len(),
            body: Bytes::from(body),
            gzip: Bytes::from(gzip),
        })
    }

    /// Takes a new desired state; returns the clusters whose version moved.
    pub fn update(&self, state: &DesiredState) -> Vec<Moved> {
        let mut parts = snapshot::partition(state);
        let mut inner = self.lock();
        inner.synced = true;
        inner.acme = state.tls.acme_status.clone();
        let mut moved = Vec::new();
        // Clusters that lost their last service get an empty snapshot: their proxies must
        // stop routing them.
        let known: Vec<String> = inner.feeds.keys().cloned().collect();
        for cluster in known {
            parts.entry(cluster).or_default();
        }
        for (cluster, services) in parts {
            let tls = snapshot::tls_share(&services, &state.tls);
            match inner.feeds.get_mut(&cluster) {
                Some(feed) if feed.services == services && feed.tls == tls => {}
                Some(feed) => {
                    let version = feed.tx.borrow().version + 1;
                    // Measured once per change: a version moved by something else (an ACME
                    // certificate) keeps the last measure.
                    let measured = if state.observed_at > feed.observed_at {
                        feed.observed_at = state.observed_at;
                        feed.convergence = convergence(state.observed_at);
                        feed.convergence
                    } else {
                        None
                    };
                    feed.tx.send_replace(self.publish(
                        &cluster,
                        version,
                        &services,
                        &tls,
                        state.observed_at,
                    ));
                    feed.services = services;
                    feed.tls = tls;
                    moved.push(Moved {
                        cluster,
                        version,
                        convergence: measured,
                    });
                }
                None => {
                    let (tx, _) = watch::channel(self.publish(
                        &cluster,
                        1,
                        &services,
                        &tls,
                        state.observed_at,
                    ));
                    let measured = convergence(state.observed_at);
                    inner.feeds.insert(
                        cluster.clone(),
                        Feed {
                            services,
                            tls,
                            convergence: measured,
                            observed_at: state.observed_at,
                            tx,
                        },
                    );
                    moved.push(Moved {
                        cluster,
                        version: 1,
                        convergence: measured,
                    });
                }
            }
        }
        moved
    }

    /// The feed of `cluster` (an empty one if no service names it yet), or `None` before
    /// the first sync.
    pub fn subscribe(&self, cluster: &str) -> Option<watch::Receiver<Arc<Published>>> {
        let mut inner = self.lock();
        if !inner.synced {
            return None;
        }
        if let Some(feed) = inner.feeds.get(cluster) {
            return Some(feed.tx.subscribe());
        }
        let (tx, rx) = watch::channel(self.publish(cluster, 1, &[], &TlsMaterial::default(), None));
        inner.feeds.insert(
            cluster.to_string(),
            Feed {
                services: Vec::new(),
                tls: TlsMaterial::default(),
                convergence: None,
                observed_at: None,
                tx,
            },
        );
        Some(rx)
    }

    /// `(cluster, version, services)` of every feed, for logs and metrics.
    pub fn versions(&self) -> Vec<(String, u64, usize)> {
        let inner = self.lock();
        let mut v: Vec<_> = inner
            .feeds
            .iter()
            .map(|(c, f)| {
                let p = f.tx.borrow();
                (c.clone(), p.version, p.services)
            })
            .collect();
        v.sort();
        v
    }

    /// Seconds from the change behind `cluster`'s current version to its publication.
    pub fn convergence(&self, cluster: &str) -> Option<f64> {
        self.lock().feeds.get(cluster).and_then(|f| f.convergence)
    }
}

/// Seconds from `observed_at` to now.
fn convergence(observed_at: Option<f64>) -> Option<f64> {
    observed_at.map(|at| (crate::config::unix_now() - at).max(0.0))
}

/// The controller on its admin listener: serving once its snapshot API listens; `/routes`
/// lists each cluster's version.
impl crate::admin::Status for Feeds {
    fn serving(&self) -> Option<String> {
        Some(format!("epoch={}", self.epoch()))
    }

    fn routes(&self) -> serde_json::Value {
        let acme = self.lock().acme.clone();
        serde_json::json!({
            "epoch": self.epoch(),
            "clusters": self.versions().into_iter().map(|(cluster, version, services)| {
                let convergence = self.convergence(&cluster);
                serde_json::json!({
                    "cluster": cluster,
                    "version": version,
                    "services": services,
                    "convergence_seconds": convergence,
                })
            }).collect::<Vec<_>>(),
            "acme": acme,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::labels::SERVICE_CLUSTER;
    use crate::snapshot::Snapshot;

    fn state(services: &[(&str, &str, &str)]) -> DesiredState {
        DesiredState {
            services: services
                .iter()
                .map(|(name, cluster, host)| ServiceSpec {
                    name: name.to_string(),
                    labels: [
                        (SERVICE_CLUSTER.to_string(), cluster.to_string()),
                        ("com.docker.lb.hosts".to_string(), host.to_string()),
                    ]
                    .into(),
                    endpoints: vec![],
                    errors: vec![],
                    last_good: None,
                })
                .collect(),
            ..DesiredState::default()
        }
    }

    fn versions(moved: &[Moved]) -> Vec<(String, u64)> {
        moved
            .iter()
            .map(|m| (m.cluster.clone(), m.version))
            .collect()
    }

    #[test]
    fn versions_move_only_for_the_cluster_that_changed() {
        let feeds = Feeds::new();
        assert!(feeds.subscribe("prod").is_none(), "not synced yet");
        feeds.update(&state(&[("a", "prod", "a.test"), ("b", "dev", "b.test")]));
        let prod = feeds.subscribe("prod").unwrap();
        assert_eq!(prod.borrow().version, 1);
        let moved = feeds.update(&state(&[("a", "prod", "a.test"), ("b", "dev", "b2.test")]));
        assert_eq!(versions(&moved), vec![("dev".to_string(), 2)]);
        assert!(!prod.has_changed().unwrap());
        let moved = feeds.update(&state(&[("b", "dev", "b2.test")]));
        assert_eq!(versions(&moved), vec![("prod".to_string(), 2)]);
        assert_eq!(prod.borrow().services, 0);
        let body: Snapshot =
            serde_json::from_slice(&feeds.subscribe("dev").unwrap().borrow().body).unwrap();
        assert_eq!(body.cluster, "dev");
        assert_eq!(body.services[0].labels["com.docker.lb.hosts"], "b2.test");
    }
}
