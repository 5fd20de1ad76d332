//! The file provider: services described in a TOML file with the same labels as Docker,
//! watched and hot reloaded. An unreadable or invalid file is reported and the last good
//! state stays.
//!
//! ```toml
//! [[service]]
//! name = "web"
//! endpoints = ["127.0.0.1:9001", "127.0.0.1"]   # ip:port, or ip + com.docker.lb.port
//! [service.labels]
//! "com.docker.lb.hosts" = "web.localhost"
//! "com.docker.lb.port" = "9002"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use tokio::sync::watch;

use crate::config::{DesiredState, EndpointSpec, ServiceSpec};

/// Why a file could not be used.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: service {service:?}: endpoint {value:?}: expected an IP address, optionally with :port")]
    Endpoint {
        path: PathBuf,
        service: String,
        value: String,
    },
    #[error("{path}: service name {service:?} appears twice")]
    Duplicate { path: PathBuf, service: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    #[serde(default, rename = "service")]
    services: Vec<ServiceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    name: String,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Parses the text of a services file.
pub fn parse(path: &Path, text: &str) -> Result<DesiredState, FileError> {
    let model: FileModel = toml::from_str(text).map_err(|e| FileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let mut seen = HashSet::new();
    let mut services = Vec::with_capacity(model.services.len());
    for entry in model.services {
        if !seen.insert(entry.name.clone()) {
            return Err(FileError::Duplicate {
                path: path.to_path_buf(),
                service: entry.name,
            });
        }
        let endpoints = entry
            .endpoints
            .iter()
            .map(|e| {
                parse_endpoint(e).ok_or_else(|| FileError::Endpoint {
                    path: path.to_path_buf(),
                    service: entry.name.clone(),
                    value: e.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        services.push(ServiceSpec {
            name: entry.name,
            labels: entry.labels,
            endpoints,
            errors: Vec::new(),
            last_good: None,
        });
    }
    Ok(DesiredState {
        services,
        ..Default::default()
    })
}

fn parse_endpoint(s: &str) -> Option<EndpointSpec> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(EndpointSpec {
            ip: addr.ip(),
            port: Some(addr.port()),
        });
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| EndpointSpec { ip, port: None })
}

/// Reads and parses the file once.
pub async fn load(path: &Path) -> Result<DesiredState, FileError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    parse(path, &text)
}

/// Watches the file and publishes every new valid state on `tx`. Polls its content every
/// `interval` (robust for bind mounts, Docker configs and editors that replace the file,
/// where inotify events are unreliable). `on_error` is told of every invalid version.
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    tx: watch::Sender<DesiredState>,
    on_error: impl Fn(&FileError) + Send + 'static,
) {
    let mut last_text: Option<String> = None;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(source) => {
                let e = FileError::Read {
                    path: path.clone(),
                    source,
                };
                report(&e, &mut last_error, &on_error);
                continue;
            }
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        match parse(&path, &text) {
            Ok(mut state) => {
                last_error = None;
                // The change happened when the file was written (the poll finds it later).
                state.observed_at = tokio::fs::metadata(&path)
                    .await
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64().min(crate::config::unix_now()))
                    .or(Some(crate::config::unix_now()));
                tx.send_if_modified(|cur| {
                    let changed = *cur != state;
                    *cur = state;
                    changed
                });
            }
            Err(e) => report(&e, &mut last_error, &on_error),
        }
        last_text = Some(text);
        if tx.is_closed() {
            return;
        }
    }
}

/// Reports an error once per distinct message (not on every poll).
fn report(e: &FileError, last: &mut Option<String>, on_error: &impl Fn(&FileError)) {
    let msg = e.to_string();
    if last.as_deref() != Some(msg.as_str()) {
        on_error(e);
        *last = Some(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services_labels_and_endpoints() {
        let text = r#"
            [[service]]
            name = "web"
            endpoints = ["127.0.0.1:9001", "10.0.0.2", "[::1]:8080"]
            [service.labels]
            "com.docker.lb.hosts" = "web.localhost"
        "#;
        let s = parse(Path::new("t.toml"), text).unwrap();
        assert_eq!(s.services.len(), 1);
        let eps = &s.services[0].endpoints;
        assert_eq!(eps[0].port, Some(9001));
        assert_eq!(eps[1].port, None);
        assert_eq!(eps[2].ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.services[0].labels["com.docker.lb.hosts"], "web.localhost");
    }

    #[test]
    fn rejects_bad_files_with_a_useful_message() {
        let e = parse(Path::new("t.toml"), "[[service]]\nname = 1").unwrap_err();
        assert!(e.to_string().contains("t.toml is not valid"), "{e}");
        let e = parse(
            Path::new("t.toml"),
            "[[service]]\nname = \"a\"\nendpoints = [\"host:80\"]",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("service \"a\": endpoint \"host:80\""),
            "{e}"
        );
        let e = parse(
            Path::new("t.toml"),
            "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"",
        )
        .unwrap_err();
        assert!(matches!(e, FileError::Duplicate { .. }));
    }
}
