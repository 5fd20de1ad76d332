//! Each service's last good labels, published beside its broken ones, so that "a bad
//! label keeps the last good routes" holds for a proxy that starts while the label is
//! broken, and across restarts of either side.
//!
//! Both sides keep them: the controller (saved in its `--state-file`) publishes them in each
//! snapshot, and a proxy keeps the ones it has received and fills them in where a snapshot
//! lacks them (a controller that moved and lost its file), so they are in the snapshot the
//! proxy saves. A label set is good when [`compile::service_errors`] finds nothing in it:
//! the same per-service validation every proxy runs. A service that disappears is
//! forgotten.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::compile;
use crate::config::{DesiredState, ServiceSpec};

type Labels = BTreeMap<String, String>;

/// The last good `com.docker.lb.*` labels of every known service.
#[derive(Debug, Default)]
pub struct LastGood {
    labels: BTreeMap<String, Labels>,
    file: Option<PathBuf>,
}

impl LastGood {
    /// Loads the saved labels from `file` if it exists (a missing or unreadable file is an
    /// empty start, logged).
    pub fn load(file: Option<PathBuf>) -> Self {
        let labels = file
            .as_deref()
            .and_then(|path| match std::fs::read(path) {
                Ok(bytes) => match parse_state(&bytes) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "the controller's state file is not valid; starting without last good labels");
                        None
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the controller's state file; starting without last good labels");
                    None
                }
            })
            .unwrap_or_default();
        LastGood { labels, file }
    }

    /// Records the good labels of `state` and attaches the last good labels to every
    /// service whose current ones have errors.
    pub fn apply(&mut self, state: &mut DesiredState) {
        self.apply_to(&mut state.services);
    }

    /// [`apply`](Self::apply) on a list of services.
    pub fn apply_to(&mut self, services: &mut [ServiceSpec]) {
        let before = self.labels.clone();
        let present: HashSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
        self.labels
            .retain(|name, _| present.contains(name.as_str()));
        for spec in services.iter_mut() {
            let ours: Labels = spec
                .labels
                .iter()
                .filter(|(k, _)| k.starts_with(crate::snapshot::LABEL_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if compile::service_errors(spec).is_empty() {
                spec.last_good = None;
                self.labels.insert(spec.name.clone(), ours);
            } else {
                // What the source knows first (a proxy learns the controller's), else ours.
                let known = spec
                    .last_good
                    .take()
                    .or_else(|| self.labels.get(&spec.name).cloned());
                if let Some(k) = &known {
                    self.labels.insert(spec.name.clone(), k.clone());
                }
                spec.last_good = known;
            }
        }
        if self.labels != before {
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.file else { return };
        // Plain maps of strings always serialize.
        let body = serde_json::to_vec_pretty(&self.labels).unwrap_or_default();
        if let Err(e) = write_atomically(path, &body) {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the controller's state file; last good labels will not survive a restart");
        }
    }
}

/// The saved labels in a state file's bytes.
pub(crate) fn parse_state(bytes: &[u8]) -> serde_json::Result<BTreeMap<String, Labels>> {
    serde_json::from_slice(bytes)
}

/// Writes `body` to a temporary file beside `path` and renames it into place.
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointSpec;

    fn svc(name: &str, port: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            labels: [
                ("com.docker.lb.hosts".to_string(), format!("{name}.test")),
                ("com.docker.lb.port".to_string(), port.to_string()),
                ("other.label".to_string(), "x".to_string()),
            ]
            .into(),
            endpoints: vec![EndpointSpec {
                ip: "10.0.0.1".parse().unwrap(),
                port: None,
            }],
            errors: vec![],
            last_good: None,
        }
    }

    #[test]
    fn broken_labels_carry_the_last_good_ones_across_a_restart() {
        let dir = std::env::temp_dir().join(format!("il-lastgood-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("controller.json");
        let _ = std::fs::remove_file(&file);

        let mut store = LastGood::load(Some(file.clone()));
        let mut state = DesiredState {
            services: vec![svc("a", "80"), svc("b", "81")],
            ..DesiredState::default()
        };
        store.apply(&mut state);
        assert!(state.services.iter().all(|s| s.last_good.is_none()));

        // A restarted controller sees `a` broken: it still knows a's good labels.
        let mut store = LastGood::load(Some(file.clone()));
        let mut state = DesiredState {
            services: vec![svc("a", "not-a-port"), svc("b", "81")],
            ..DesiredState::default()
        };
        store.apply(&mut state);
        let good = state.services[0].last_good.as_ref().unwrap();
        assert_eq!(good["com.docker.lb.port"], "80");
        assert!(!good.contains_key("other.label"), "only interlock's labels");
        assert!(state.services[1].last_good.is_none());

        // A service that is gone is forgotten: recreated broken, it has no last good.
        let mut state = DesiredState {
            services: vec![svc("b", "81")],
            ..DesiredState::default()
        };
        store.apply(&mut state);
        let mut state = DesiredState {
            services: vec![svc("a", "bad")],
            ..DesiredState::default()
        };
        LastGood::load(Some(file.clone())).apply(&mut state);
        assert!(state.services[0].last_good.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
