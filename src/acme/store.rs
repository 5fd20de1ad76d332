//! The ACME state directory (`--acme-state`): the account (its key and URL, for one
//! directory) and each certificate with its key. Every file is written whole (a sibling
//! renamed over) and readable by its owner only (0600). A file that does not parse is
//! reported and left aside: the account is registered again, the certificate ordered again;
//! nothing else is affected.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::tls::{AcmeStatus, PemPair};

/// The account of one directory.
#[derive(Serialize, Deserialize)]
pub struct SavedAccount {
    pub directory: String,
    /// instant-acme's credentials (the account key among them).
    pub credentials: serde_json::Value,
}

/// One certificate as kept on disk.
#[derive(Clone, Serialize, Deserialize)]
pub struct SavedCert {
    pub hosts: Vec<String>,
    pub directory: String,
    pub pair: PemPair,
    /// When it was issued and when it expires, Unix seconds.
    pub issued_at: i64,
    pub not_after: i64,
}

/// The state directory.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the directory (0700) if needed.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir.join("certs"))
            .map_err(|e| anyhow::anyhow!("--acme-state {}: {e}", dir.display()))?;
        for d in [dir.to_path_buf(), dir.join("certs")] {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory as it is, created by nothing (for `interlock check`).
    pub fn existing(dir: &Path) -> Option<Store> {
        dir.join("certs").is_dir().then(|| Store {
            dir: dir.to_path_buf(),
        })
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The certificate file of host set `name` (an [`crate::config::tls::acme_name`]):
    /// its names, made safe for a file name.
    fn cert_path(&self, name: &str) -> PathBuf {
        let safe: String = name
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' | '.' => c,
                ',' => '+',
                _ => '_',
            })
            .take(200)
            .collect();
        self.dir.join("certs").join(format!("{safe}.json"))
    }

    /// The saved account of `directory`, if any and readable.
    pub fn account(&self, directory: &str) -> Option<SavedAccount> {
        let saved: SavedAccount = read_json(&self.account_path())?;
        (saved.directory == directory).then_some(saved)
    }

    pub fn save_account(&self, account: &SavedAccount) -> std::io::Result<()> {
        write_private(&self.account_path(), &serde_json::to_vec_pretty(account)?)
    }

    /// The saved certificate of host set `name`, if any and readable.
    pub fn cert(&self, name: &str) -> Option<SavedCert> {
        read_json(&self.cert_path(name))
    }

    /// Takes the lock of host set `name` (a file lock, held until the returned file is
    /// dropped): controllers sharing this directory order each host set one at a time, and
    /// the second one finds the first one's certificate instead of ordering again. Blocks.
    pub fn lock(&self, name: &str) -> std::io::Result<std::fs::File> {
        let path = self.cert_path(name).with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        file.lock()?;
        Ok(file)
    }

    /// The last outcome of host set `name`'s orders, as saved for `interlock check`.
    pub fn status(&self, name: &str) -> Option<AcmeStatus> {
        read_json(&self.cert_path(name).with_extension("status"))
    }

    pub fn save_status(&self, name: &str, status: &AcmeStatus) -> std::io::Result<()> {
        write_private(
            &self.cert_path(name).with_extension("status"),
            &serde_json::to_vec_pretty(status)?,
        )
    }

    pub fn save_cert(&self, name: &str, cert: &SavedCert) -> std::io::Result<()> {
        write_private(&self.cert_path(name), &serde_json::to_vec_pretty(cert)?)
    }
}

/// Reads `path` as JSON; a missing file is `None`, a bad one is reported and `None`.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "ACME state file unreadable; ignored");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "ACME state file corrupt; ignored (it is ordered or registered again)");
            None
        }
    }
}

/// Writes `bytes` to `path` whole and private: a 0600 sibling, synced, renamed over.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_and_a_corrupt_one_is_ignored() {
        let dir = std::env::temp_dir().join(format!("interlock-acme-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let cert = SavedCert {
            hosts: vec!["a.test".into(), "b.test".into()],
            directory: "https://ca/dir".into(),
            pair: PemPair {
                cert: "C".into(),
                key: "K".into(),
            },
            issued_at: 1,
            not_after: 2,
        };
        store.save_cert("a.test,b.test", &cert).unwrap();
        let path = store.cert_path("a.test,b.test");
        assert!(path.ends_with("certs/a.test+b.test.json"), "{path:?}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.cert("a.test,b.test").unwrap().pair.key, "K");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(store.cert("a.test,b.test").is_none());
        assert!(store.account("https://ca/dir").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
