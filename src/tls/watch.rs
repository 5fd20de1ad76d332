//! Watching the certificate and key files in use, by content, so that a certificate renewed
//! in place is served without a restart and without touching any label.
//!
//! Every pair in use (each service's `ssl_cert`/`ssl_key` and the default
//! `--tls-cert/--tls-key`) is checked at the services file's polling interval. Polling, not
//! inotify, for the same reason as the services file: bind mounts, Docker secrets and
//! Kubernetes-style volumes do not reliably deliver events, and a renewal is usually not a
//! write to the watched name at all:
//!
//! - certbot re-points `live/<name>/*.pem` symlinks at new files in `archive/`;
//! - Kubernetes and similar tools swap a `..data` symlink to a new directory;
//! - others write a temporary file and rename it over the old one, or rewrite in place.
//!
//! Each check `stat`s both files through any symlinks (device, inode, length, mtime and
//! ctime to the nanosecond): all four ways change that stamp, and checking it costs two
//! system calls per pair, whatever the number of services. Only when a stamp moved are the
//! files read (at most [`super::certs::MAX_FILE`] bytes) and their contents compared with
//! the last ones tried, by a 64-bit SipHash keyed at random for the process (no collision
//! can be crafted; keeping the key's bytes around is avoided); a `touch` or a re-mount with
//! the same bytes changes nothing. A filesystem with coarse timestamps could hide a second
//! write within the same tick of its clock, so a file whose stamp is less than
//! [`RACY`] old is read again on every check until it is older (git's "racily clean"
//! rule).
//!
//! New contents are loaded as a pair. A pair that does not load (a half-written file, a
//! certificate replaced before its key, a key that does not match) is reported once, by
//! the caller, and the last good certificate keeps serving; the pair is tried again
//! whenever a file changes, so it is picked up as soon as it is consistent.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::certs::{self, CertError, Loaded};
use super::TlsState;

/// How long after its last change a file is read again on every check.
pub const RACY: Duration = Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Changed less than [`RACY`] before `now` (or in the future): a later write could
    /// leave the same stamp on a filesystem with coarse timestamps.
    fn racy(&self, now: SystemTime) -> bool {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let changed = self.mtime.0.max(self.ctime.0);
        now.saturating_sub(changed) <= RACY.as_secs() as i64
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The same contents as last time (or the same error).
    Unchanged,
    /// New contents that form a good pair: now the pair's certificate.
    Loaded,
    /// The files cannot be read or do not form a good pair; the last good one (if any)
    /// stays. [`PairFiles::error`] says why.
    Failed,
}

/// One certificate/key pair's files and what was last made of them.
pub struct PairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Stamps of the contents last read.
    stamps: Option<[Stamp; 2]>,
    /// Whether those stamps were too recent to trust.
    racy: bool,
    /// Content hashes of the last contents tried, good or not.
    tried: Option<[u64; 2]>,
    /// The last good pair, served.
    pub good: Option<Loaded>,
    /// Its PEM text (the controller sends it on to proxies).
    pub good_pem: Option<crate::config::tls::PemPair>,
    /// Why the current contents are not used, while they are not.
    pub error: Option<String>,
    /// What was last reported about this pair (so each problem is logged once).
    pub(super) reported: Option<String>,
}

impl PairFiles {
    pub fn new(cert: PathBuf, key: PathBuf) -> Self {
        PairFiles {
            cert,
            key,
            stamps: None,
            racy: false,
            tried: None,
            good: None,
            good_pem: None,
            error: None,
            reported: None,
        }
    }

    /// Looks at the files again; loads them if their contents changed.
    pub fn check(&mut self, hasher: &RandomState) -> Outcome {
        let now = SystemTime::now();
        let stat = |p: &Path| std::fs::metadata(p).map(|m| Stamp::of(&m));
        let stamps = match (stat(&self.cert), stat(&self.key)) {
            (Ok(c), Ok(k)) => [c, k],
            (Err(e), _) => return self.unreadable(self.cert_error(e)),
            (_, Err(e)) => return self.unreadable(self.key_error(e)),
        };
        if self.stamps == Some(stamps) && !self.racy {
            return Outcome::Unchanged;
        }
        // Read after the stat: a write after it moves the stamp again for the next check.
        let cert_pem = match certs::read_limited(&self.cert) {
            Ok(b) => b,
            Err(e) => return self.unreadable(self.cert_error(e)),
        };
        let key_pem = match certs::read_limited(&self.key) {
            Ok(b) => b,
            Err(e) => return self.unreadable(self.key_error(e)),
        };
        self.stamps = Some(stamps);
        self.racy = stamps.iter().any(|s| s.racy(now));
        let hashes = [hasher.hash_one(&cert_pem), hasher.hash_one(&key_pem)];
        if self.tried == Some(hashes) {
            return Outcome::Unchanged;
        }
        self.tried = Some(hashes);
        match certs::load_pair_pem(&self.cert, &cert_pem, &self.key, &key_pem) {
            Ok(ck) => {
                self.good = Some(Loaded::new(ck));
                self.good_pem = Some(crate::config::tls::PemPair {
                    cert: String::from_utf8_lossy(&cert_pem).into_owned(),
                    key: String::from_utf8_lossy(&key_pem).into_owned(),
                });
                self.error = None;
                Outcome::Loaded
            }
            Err(e) => {
                self.error = Some(e.to_string());
                Outcome::Failed
            }
        }
    }

    fn cert_error(&self, e: std::io::Error) -> CertError {
        CertError::Cert {
            path: self.cert.clone(),
            message: e.to_string(),
        }
    }

    fn key_error(&self, e: std::io::Error) -> CertError {
        CertError::Key {
            path: self.key.clone(),
            message: e.to_string(),
        }
    }

    /// A file cannot be read: whatever comes next is new contents.
    fn unreadable(&mut self, e: CertError) -> Outcome {
        self.stamps = None;
        self.tried = None;
        self.error = Some(e.to_string());
        Outcome::Failed
    }
}

/// Checks the certificate files of `tls` every `interval`, forever.
pub async fn run(tls: Arc<TlsState>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let tls = tls.clone();
        // File system calls block: off the runtime's threads.
        if let Err(e) = tokio::task::spawn_blocking(move || tls.poll()).await {
            tracing::error!(error = %e, "checking the certificate files failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, stem: &str) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec![format!("{stem}.test")]).unwrap();
        let (c, k) = (ck.cert.pem(), ck.signing_key.serialize_pem());
        std::fs::write(dir.join(format!("{stem}.crt")), &c).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), &k).unwrap();
        (c, k)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("interlock-watch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn serial(p: &PairFiles) -> Vec<u8> {
        p.good.as_ref().unwrap().ck.cert[0].as_ref().to_vec()
    }

    #[test]
    fn content_changes_are_loaded_and_bad_ones_keep_the_last_good_pair() {
        let dir = temp_dir("content");
        let h = RandomState::new();
        pair(&dir, "a");
        let mut p = PairFiles::new(dir.join("a.crt"), dir.join("a.key"));
        assert_eq!(p.check(&h), Outcome::Loaded);
        let first = serial(&p);
        // Racy: read again, same bytes: nothing new.
        assert_eq!(p.check(&h), Outcome::Unchanged);
        // Rewritten with the same bytes: still nothing new.
        let same = std::fs::read(dir.join("a.crt")).unwrap();
        std::fs::write(dir.join("a.crt"), &same).unwrap();
        assert_eq!(p.check(&h), Outcome::Unchanged);

        // The certificate replaced before its key: refused, the old pair stays.
        let (c, k) = pair(&temp_dir("other"), "b");
        std::fs::write(dir.join("a.crt"), &c).unwrap();
        assert_eq!(p.check(&h), Outcome::Failed);
        assert!(p.error.as_ref().unwrap().contains("a.key"), "{:?}", p.error);
        assert_eq!(serial(&p), first);
        assert_eq!(p.check(&h), Outcome::Unchanged, "the same bad contents");
        // Then the key: the pair is consistent again.
        std::fs::write(dir.join("a.key"), &k).unwrap();
        assert_eq!(p.check(&h), Outcome::Loaded);
        assert!(p.error.is_none());
        assert_ne!(serial(&p), first);

        // A missing file, then back: loaded again.
        std::fs::rename(dir.join("a.key"), dir.join("a.key.bak")).unwrap();
        assert_eq!(p.check(&h), Outcome::Failed);
        assert!(p.good.is_some());
        std::fs::rename(dir.join("a.key.bak"), dir.join("a.key")).unwrap();
        assert_eq!(p.check(&h), Outcome::Loaded);
    }

    #[test]
    fn only_recent_stamps_are_racy() {
        let stamp = |secs| Stamp {
            dev: 1,
            ino: 2,
            len: 3,
            mtime: (secs, 0),
            ctime: (secs, 0),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(stamp(1_000).racy(now));
        assert!(stamp(998).racy(now));
        assert!(stamp(2_000).racy(now), "a stamp from the future");
        assert!(!stamp(997).racy(now));
        assert!(!stamp(0).racy(now));
    }

    #[test]
    fn a_symlink_re_pointed_is_a_new_version() {
        let dir = temp_dir("symlink");
        let h = RandomState::new();
        for v in ["v1", "v2"] {
            std::fs::create_dir_all(dir.join(v)).unwrap();
            pair(&dir.join(v), "a");
        }
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.crt", dir.join("a.crt")).unwrap();
        std::os::unix::fs::symlink("..data/a.key", dir.join("a.key")).unwrap();
        let mut p = PairFiles::new(dir.join("a.crt"), dir.join("a.key"));
        assert_eq!(p.check(&h), Outcome::Loaded);
        let first = serial(&p);
        std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(p.check(&h), Outcome::Loaded);
        assert_ne!(serial(&p), first);
    }
}
