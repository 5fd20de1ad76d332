//! The ACME scheduler: which host sets need a certificate and when. Each wanted host set
//! is, at any time, waiting for its time (its renewal at 2/3 of its certificate's lifetime,
//! a little earlier by a jitter of its own; or its next retry), or being ordered (at most
//! [`PARALLEL`] at once). A failed order is retried with exponential backoff, later if the
//! CA said so (`Retry-After`), and never removes the certificate in use. Certificates on
//! disk are used as they are after a restart: no reissue.
//!
//! What it publishes ([`TlsMaterial`]): every host set's current certificate, the answers
//! of the challenges pending, and each host set's last problem.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, AccountCredentials, NewAccount};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::http::Client;
use super::order::{self, Answers};
use super::store::{SavedAccount, SavedCert, Store};
use super::AcmeConfig;
use crate::config::tls::{AcmeStatus, TlsMaterial};
use crate::metrics::Metrics;

/// Orders in flight at most.
const PARALLEL: usize = 8;
/// The first retry after a failure; each next one waits three times longer, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// One wanted host set.
struct Entry {
    hosts: Vec<String>,
    cert: Option<SavedCert>,
    /// When to order next (`None`: being ordered now).
    next: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
}

/// What the scheduler shares with its orders.
struct Shared {
    cfg: AcmeConfig,
    store: Store,
    client: Client,
    metrics: Arc<Metrics>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// The answers of the orders in flight, by host set.
    answers: Mutex<HashMap<String, Answers>>,
    answers_changed: Notify,
}

/// Runs forever: follows `wanted` (host set name -> names), publishes on `out`.
pub async fn run(
    cfg: AcmeConfig,
    store: Store,
    client: Client,
    metrics: Arc<Metrics>,
    mut wanted: watch::Receiver<BTreeMap<String, Vec<String>>>,
    out: watch::Sender<TlsMaterial>,
) {
    let shared = Arc::new(Shared {
        cfg,
        store,
        client,
        metrics,
        account: tokio::sync::Mutex::new(None),
        answers: Mutex::new(HashMap::new()),
        answers_changed: Notify::new(),
    });
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut orders: JoinSet<(String, Result<Ordered, String>)> = JoinSet::new();
    let jitter = std::collections::hash_map::RandomState::new();
    loop {
        // 1. Follow the wanted host sets.
        let want = wanted.borrow_and_update().clone();
        entries.retain(|name, _| want.contains_key(name));
        for (name, hosts) in &want {
            entries.entry(name.clone()).or_insert_with(|| {
                let cert = shared
                    .store
                    .cert(name)
                    .filter(|c| c.directory == shared.cfg.directory && c.hosts == *hosts);
                let next = Some(match &cert {
                    Some(c) => renew_at(c, jitter.hash_one(name)),
                    None => Instant::now(),
                });
                Entry {
                    hosts: hosts.clone(),
                    cert,
                    next,
                    failures: 0,
                    last_error: None,
                }
            });
        }
        // 2. Start the orders that are due.
        let now = Instant::now();
        for (name, e) in entries.iter_mut() {
            if orders.len() >= PARALLEL {
                break;
            }
            if e.next.is_some_and(|t| t <= now) {
                e.next = None;
                let (shared, name, hosts) = (shared.clone(), name.clone(), e.hosts.clone());
                let current = e.cert.as_ref().map(|c| c.issued_at);
                orders.spawn(async move {
                    let result = order_one(&shared, &name, &hosts, current).await;
                    (name, result)
                });
            }
        }
        publish(&out, &entries, &shared);
        // 3. Wait for a change of the wanted sets, an order's end or answers, or the next due time.
        let due = entries
            .values()
            .filter_map(|e| e.next)
            .min()
            .filter(|_| orders.len() < PARALLEL);
        let sleep = async move {
            match due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            Some(done) = orders.join_next() => {
                let Ok((name, result)) = done else { continue };
                shared.answers.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
                let Some(e) = entries.get_mut(&name) else { continue };
                let kind = if e.cert.is_some() { "renew" } else { "issue" };
                match result {
                    Ok(Ordered { cert, by_us }) => {
                        if by_us {
                            shared.metrics.acme_orders.with_label_values(&[kind, "ok"]).inc();
                            tracing::info!(hosts = %name, not_after = cert.not_after, "ACME certificate {}", if kind == "renew" { "renewed" } else { "issued" });
                        } else {
                            tracing::info!(hosts = %name, not_after = cert.not_after, "ACME certificate taken from --acme-state: another controller sharing it ordered it");
                        }
                        e.next = Some(renew_at(&cert, jitter.hash_one(&name)));
                        e.cert = Some(cert);
                        e.failures = 0;
                        e.last_error = None;
                    }
                    Err(why) => {
                        shared.metrics.acme_orders.with_label_values(&[kind, "error"]).inc();
                        e.failures += 1;
                        let mut wait = backoff(e.failures);
                        if let Some(t) = shared.client.take_retry_after() {
                            let asked = t.duration_since(SystemTime::now()).unwrap_or_default();
                            wait = wait.max(asked);
                        }
                        tracing::error!(
                            hosts = %name,
                            error = %why,
                            retry_in = ?wait,
                            "ACME {} failed; {}",
                            if kind == "renew" { "renewal" } else { "order" },
                            if e.cert.is_some() { "the current certificate keeps serving" } else { "its hosts get the default certificate, if any" }
                        );
                        e.last_error = Some(why);
                        e.next = Some(Instant::now() + wait);
                    }
                }
                // For `interlock check`, which reads the state directory.
                let status = AcmeStatus {
                    not_after: e.cert.as_ref().map(|c| c.not_after),
                    last_error: e.last_error.clone(),
                };
                if let Err(err) = shared.store.save_status(&name, &status) {
                    tracing::warn!(hosts = %name, error = %err, "cannot save the ACME status in --acme-state");
                }
            }
            _ = shared.answers_changed.notified() => {}
            _ = sleep => {}
        }
    }
}

/// A certificate a host set got.
struct Ordered {
    cert: SavedCert,
    /// False: another process sharing the state directory ordered it meanwhile.
    by_us: bool,
}

/// Orders one host set's certificate and saves it, under the host set's lock in the state
/// directory; `current`: when the certificate in use was issued. If another process
/// sharing the directory saved a newer one meanwhile that is not due yet, that one is taken
/// instead of ordering.
async fn order_one(
    shared: &Shared,
    name: &str,
    hosts: &[String],
    current: Option<i64>,
) -> Result<Ordered, String> {
    let (store, lock_name) = (shared.store.clone(), name.to_string());
    let lock = tokio::task::spawn_blocking(move || store.lock(&lock_name))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("locking the host set in --acme-state: {e}"))?;
    if let Some(saved) = shared.store.cert(name).filter(|c| {
        c.directory == shared.cfg.directory
            && c.hosts == hosts
            && current.is_none_or(|t| c.issued_at > t)
            && renew_at(c, 0) > Instant::now()
    }) {
        return Ok(Ordered {
            cert: saved,
            by_us: false,
        });
    }
    let account = account(shared).await?;
    let renew = current.is_some();
    tracing::info!(hosts = %name, renew, challenge = ?shared.cfg.challenge, "ordering an ACME certificate");
    let issued_at = unix_now();
    let pair = order::issue(
        &account,
        hosts,
        shared.cfg.challenge,
        shared.cfg.propagation,
        |answers| {
            shared
                .answers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), answers);
            shared.answers_changed.notify_one();
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let not_after = crate::tls::certs::load_pair_pem(
        std::path::Path::new(name),
        pair.cert.as_bytes(),
        std::path::Path::new(name),
        pair.key.as_bytes(),
    )
    .ok()
    .map(crate::tls::certs::Loaded::new)
    .and_then(|l| l.not_after)
    .ok_or("the CA's certificate does not load or has no readable expiry")?;
    let cert = SavedCert {
        hosts: hosts.to_vec(),
        directory: shared.cfg.directory.clone(),
        pair,
        issued_at,
        not_after,
    };
    if let Err(e) = shared.store.save_cert(name, &cert) {
        // Served anyway; only a restart would order it again.
        tracing::error!(hosts = %name, error = %e, "cannot save the ACME certificate in --acme-state");
    }
    drop(lock);
    Ok(Ordered { cert, by_us: true })
}

/// The account: loaded once, registered if the state has none for this directory.
async fn account(shared: &Shared) -> Result<Account, String> {
    let mut slot = shared.account.lock().await;
    if let Some(a) = slot.as_ref() {
        return Ok(a.clone());
    }
    let builder = || Account::builder_with_http(Box::new(shared.client.clone()));
    let saved = shared.store.account(&shared.cfg.directory).and_then(|s| {
        serde_json::from_value::<AccountCredentials>(s.credentials)
            .map_err(|e| tracing::error!(error = %e, "the saved ACME account is not valid; registering again"))
            .ok()
    });
    let account = match saved {
        Some(creds) => builder()
            .from_credentials(creds)
            .await
            .map_err(|e| format!("restoring the ACME account: {e}"))?,
        None => {
            let contact = shared.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
            let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
            let (account, creds) = builder()
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    shared.cfg.directory.clone(),
                    None,
                )
                .await
                .map_err(|e| {
                    format!(
                        "registering the ACME account at {}: {e}",
                        shared.cfg.directory
                    )
                })?;
            let saved = SavedAccount {
                directory: shared.cfg.directory.clone(),
                credentials: serde_json::to_value(&creds).map_err(|e| e.to_string())?,
            };
            if let Err(e) = shared.store.save_account(&saved) {
                tracing::error!(error = %e, "cannot save the ACME account in --acme-state");
            }
            tracing::info!(directory = %shared.cfg.directory, id = account.id(), "ACME account registered");
            account
        }
    };
    *slot = Some(account.clone());
    Ok(account)
}

/// Publishes every current certificate, the pending answers and the last problems.
fn publish(out: &watch::Sender<TlsMaterial>, entries: &BTreeMap<String, Entry>, shared: &Shared) {
    let mut m = TlsMaterial::default();
    for (name, e) in entries {
        if let Some(c) = &e.cert {
            m.acme.insert(name.clone(), c.pair.clone());
            shared
                .metrics
                .acme_expiry
                .with_label_values(&[name])
                .set(c.not_after);
        }
        m.acme_status.insert(
            name.clone(),
            AcmeStatus {
                not_after: e.cert.as_ref().map(|c| c.not_after),
                last_error: e.last_error.clone(),
            },
        );
    }
    for answers in shared
        .answers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        m.http01.extend(answers.http01.iter().cloned());
        m.tls_alpn01.extend(answers.tls_alpn01.iter().cloned());
    }
    out.send_if_modified(|cur| {
        let changed = *cur != m;
        *cur = m;
        changed
    });
}

/// When to renew `cert`: at 2/3 of its lifetime, earlier by up to 1/30 of it (`seed`
/// picks how much, so many certificates issued together do not renew together).
fn renew_at(cert: &SavedCert, seed: u64) -> Instant {
    let lifetime = (cert.not_after - cert.issued_at).max(0) as u64;
    let jitter = if lifetime >= 30 {
        seed % (lifetime / 30)
    } else {
        0
    };
    let at = cert.issued_at as u64 + lifetime * 2 / 3 - jitter.min(lifetime * 2 / 3);
    let now = unix_now() as u64;
    Instant::now() + Duration::from_secs(at.saturating_sub(now))
}

/// The wait after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    let factor = 3u32.saturating_pow(failures.saturating_sub(1).min(12));
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::PemPair;

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime_with_a_bounded_jitter() {
        let now = unix_now();
        let cert = SavedCert {
            hosts: vec![],
            directory: String::new(),
            pair: PemPair {
                cert: String::new(),
                key: String::new(),
            },
            issued_at: now,
            not_after: now + 90 * 86_400,
        };
        let at = renew_at(&cert, 0) - Instant::now();
        let two_thirds = Duration::from_secs(60 * 86_400);
        assert!(at <= two_thirds && at > two_thirds - Duration::from_secs(5));
        let early = renew_at(&cert, u64::MAX) - Instant::now();
        assert!(early >= two_thirds - Duration::from_secs(3 * 86_400));
        // An expired certificate: at once.
        let old = SavedCert {
            issued_at: now - 100,
            not_after: now - 10,
            ..cert
        };
        assert!(renew_at(&old, 7) <= Instant::now());
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 3);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
