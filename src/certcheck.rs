//! What `interlock check` says about the certificates services name with
//! `ssl_cert`/`ssl_key`: each pair is loaded from the secrets directory, and a missing or
//! unreadable file, or a key that does not match its certificate, becomes that service's
//! error. Where the files are not (check run away from the secrets), the engine's Docker
//! secrets stand in: a pair whose two names are Docker secrets is accepted.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::config::labels::{self, LabelError, SSL_CERT, SSL_KEY};
use crate::config::DesiredState;
use crate::tls::certs;

/// Adds an error to each service of `state` whose pair does not load from `secrets_dir`
/// (and, with `docker_secrets`, is not a pair of Docker secrets either).
pub fn check(
    state: &mut DesiredState,
    secrets_dir: &Path,
    docker_secrets: Option<&BTreeSet<String>>,
) {
    let mut verdicts: HashMap<(String, String), Option<LabelError>> = HashMap::new();
    for spec in &mut state.services {
        if !spec.labels.contains_key(SSL_CERT) {
            continue;
        }
        let parsed = labels::parse(&spec.labels);
        let (Some(cert), Some(key)) = (parsed.labels.ssl_cert, parsed.labels.ssl_key) else {
            continue;
        };
        let verdict = verdicts
            .entry((cert.clone(), key.clone()))
            .or_insert_with(|| judge(&cert, &key, secrets_dir, docker_secrets));
        if let Some(e) = verdict {
            spec.errors.push(e.clone());
        }
    }
}

/// Why the pair `cert`/`key` is not usable, if it is not.
fn judge(
    cert: &str,
    key: &str,
    secrets_dir: &Path,
    docker_secrets: Option<&BTreeSet<String>>,
) -> Option<LabelError> {
    let (cert_path, key_path) = (
        certs::resolve_name(cert, secrets_dir),
        certs::resolve_name(key, secrets_dir),
    );
    let read = |p: &Path| certs::read_limited(p).map_err(|e| format!("{}: {e}", p.display()));
    let missing = |label: &str, value: &str, why: String| {
        Some(LabelError {
            label: label.to_string(),
            value: value.to_string(),
            expected: format!("a readable PEM certificate and key: {why}"),
        })
    };
    let (cert_pem, key_pem) = match (read(&cert_path), read(&key_path)) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => {
            // Not here: Docker secrets of both names will do (their contents are the
            // controller's to read).
            let absolute = Path::new(cert).is_absolute() || Path::new(key).is_absolute();
            if let Some(known) = docker_secrets.filter(|_| !absolute) {
                return match (known.contains(cert), known.contains(key)) {
                    (true, true) => None,
                    (false, _) => missing(
                        SSL_CERT,
                        cert,
                        "no such file, and no Docker secret of that name".into(),
                    ),
                    (_, false) => missing(
                        SSL_KEY,
                        key,
                        "no such file, and no Docker secret of that name".into(),
                    ),
                };
            }
            return match c {
                Err(e) => missing(SSL_CERT, cert, e),
                Ok(_) => missing(SSL_KEY, key, k.err().unwrap_or_default()),
            };
        }
    };
    certs::load_pair_pem(&cert_path, &cert_pem, &key_path, &key_pem)
        .err()
        .and_then(|e| missing(SSL_CERT, cert, e.to_string()))
}

/// Adds an error to each `ssl_acme` service whose host set's last order failed, as the
/// ACME client saved it in `acme_state` (read where the client runs: the controller's or
/// the all-in-one process's volume). Nothing when that directory is not there.
pub fn check_acme(state: &mut DesiredState, acme_state: &Path) {
    let Some(store) = crate::acme::store::Store::existing(acme_state) else {
        return;
    };
    for spec in &mut state.services {
        let Some((name, _)) = crate::acme::host_set(spec) else {
            continue;
        };
        if let Some(why) = store.status(&name).and_then(|s| s.last_error) {
            spec.errors.push(LabelError {
                label: labels::SSL_ACME.to_string(),
                value: "true".to_string(),
                expected: format!(
                    "a certificate from the ACME CA for {name}; its last order failed: {why}"
                ),
            });
        }
    }
}

/// The names of the engine's Docker secrets.
pub async fn docker_secret_names(docker: &bollard::Docker) -> anyhow::Result<BTreeSet<String>> {
    let secrets = docker
        .list_secrets(None::<bollard::query_parameters::ListSecretsOptions>)
        .await?;
    Ok(secrets
        .into_iter()
        .filter_map(|s| s.spec.and_then(|spec| spec.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceSpec;

    #[test]
    fn a_missing_or_mismatched_pair_is_the_service_error() {
        let dir = std::env::temp_dir().join(format!("interlock-certcheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        std::fs::write(dir.join("a.crt"), a.cert.pem()).unwrap();
        std::fs::write(dir.join("a.key"), a.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("b.key"), b.signing_key.serialize_pem()).unwrap();
        let svc = |name: &str, cert: &str, key: &str| ServiceSpec {
            name: name.into(),
            labels: [
                ("com.docker.lb.hosts".to_string(), "a.test".to_string()),
                (SSL_CERT.to_string(), cert.to_string()),
                (SSL_KEY.to_string(), key.to_string()),
            ]
            .into(),
            endpoints: vec![],
            errors: vec![],
            last_good: None,
        };
        let mut state = DesiredState {
            services: vec![
                svc("good", "a.crt", "a.key"),
                svc("missing", "nope.crt", "a.key"),
                svc("mismatch", "a.crt", "b.key"),
                svc("secret", "s.crt", "s.key"),
            ],
            ..DesiredState::default()
        };
        let known: BTreeSet<String> = ["s.crt".to_string(), "s.key".to_string()].into();
        check(&mut state, &dir, None);
        fn errors(state: &DesiredState, i: usize) -> Vec<LabelError> {
            state.services[i].errors.clone()
        }
        assert!(errors(&state, 0).is_empty());
        assert!(
            errors(&state, 1)[0].to_string().contains("nope.crt"),
            "{:?}",
            errors(&state, 1)
        );
        assert!(
            errors(&state, 2)[0]
                .expected
                .contains("do not form a usable pair"),
            "{:?}",
            errors(&state, 2)
        );
        assert_eq!(errors(&state, 3)[0].label, SSL_CERT);
        for s in &mut state.services {
            s.errors.clear();
        }
        check(&mut state, &dir, Some(&known));
        assert!(errors(&state, 3).is_empty(), "Docker secrets of both names");
        assert!(
            errors(&state, 1)[0].expected.contains("no Docker secret"),
            "{:?}",
            errors(&state, 1)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
