//! The Swarm task list, read straight from the Engine API: bollard's `Task` model drops each
//! task's `NetworksAttachments`, the one place where Swarm itself records a task's address
//! on each of its networks, for tasks on every node.
//!
//! A manager's `network inspect --verbose` (the alternative) lists a network's tasks only
//! while that manager has a task on the network, and makes the engine log errors on every
//! call; the task list is authoritative cluster-wide and cheap.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::DockerError;

/// The largest task list accepted (tens of thousands of tasks are a few tens of MiB).
const MAX_BODY: usize = 512 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A task Swarm wants running, with its state and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    pub id: String,
    pub service_id: String,
    /// Whether the task's container is running now (not just desired to).
    pub running: bool,
    /// `(network id, address)` for each network attachment.
    pub addresses: Vec<(String, IpAddr)>,
}

#[derive(Deserialize)]
struct RawTask {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "ServiceID", default)]
    service_id: String,
    #[serde(rename = "Status", default)]
    status: Option<RawStatus>,
    #[serde(rename = "DesiredState", default)]
    desired_state: Option<String>,
    #[serde(rename = "NetworksAttachments", default)]
    networks_attachments: Option<Vec<RawAttachment>>,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(rename = "State", default)]
    state: Option<String>,
}

#[derive(Deserialize)]
struct RawAttachment {
    #[serde(rename = "Network", default)]
    network: Option<RawNetwork>,
    #[serde(rename = "Addresses", default)]
    addresses: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawNetwork {
    #[serde(rename = "ID", default)]
    id: String,
}

/// Decodes a `GET /tasks` answer, keeping the tasks whose desired state is `running`.
pub fn parse(body: &[u8]) -> Result<Vec<RunningTask>, serde_json::Error> {
    let raw: Vec<RawTask> = serde_json::from_slice(body)?;
    Ok(raw
        .into_iter()
        .filter(|t| t.desired_state.as_deref() == Some("running"))
        .map(|t| RunningTask {
            running: t.status.and_then(|s| s.state).as_deref() == Some("running"),
            addresses: t
                .networks_attachments
                .unwrap_or_default()
                .into_iter()
                .filter_map(|a| Some((a.network?.id, a.addresses.unwrap_or_default())))
                .flat_map(|(net, addrs)| {
                    addrs
                        .into_iter()
                        .filter_map(|a| a.split('/').next()?.parse().ok())
                        .map(move |ip| (net.clone(), ip))
                        .collect::<Vec<_>>()
                })
                .collect(),
            id: t.id,
            service_id: t.service_id,
        })
        .collect())
}

/// Where the engine listens, as bollard reads it (`DOCKER_HOST`, else the local socket).
enum Endpoint {
    Unix(String),
    Tcp(String),
}

fn endpoint() -> Result<Endpoint, DockerError> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    if let Some(path) = host.strip_prefix("unix://") {
        Ok(Endpoint::Unix(path.to_string()))
    } else if let Some(rest) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    {
        Ok(Endpoint::Tcp(rest.trim_end_matches('/').to_string()))
    } else {
        Err(io_error(
            "task list",
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("DOCKER_HOST={host}: expected unix://PATH or tcp://HOST:PORT"),
            ),
        ))
    }
}

fn io_error(call: &'static str, err: std::io::Error) -> DockerError {
    DockerError::Api {
        call,
        source: bollard::errors::Error::IOError { err },
    }
}

/// Every task Swarm wants running, at API version `version` (e.g. `1.41`).
pub async fn list(version: &str) -> Result<Vec<RunningTask>, DockerError> {
    let body = match tokio::time::timeout(TIMEOUT, fetch(version)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io_error(
                "task list",
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 s"),
            ))
        }
    };
    parse(&body).map_err(|e| {
        io_error(
            "task list",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

async fn fetch(version: &str) -> Result<Bytes, DockerError> {
    // {"desired-state":["running"]}, URL-encoded.
    let path = format!("/v{version}/tasks?filters=%7B%22desired-state%22%3A%5B%22running%22%5D%7D");
    match endpoint()? {
        Endpoint::Unix(p) => {
            let s = tokio::net::UnixStream::connect(&p)
                .await
                .map_err(|e| io_error("task list", e))?;
            get(s, "localhost", &path).await
        }
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| io_error("task list", e))?;
            get(s, &addr, &path).await
        }
    }
}

async fn get<S>(stream: S, host: &str, path: &str) -> Result<Bytes, DockerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let err = |e: hyper::Error| io_error("task list", std::io::Error::other(e));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(err)?;
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| io_error("task list", std::io::Error::other(e)))?;
    let resp = send.send_request(req).await.map_err(err)?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| io_error("task list", std::io::Error::other(e)))?
        .to_bytes();
    driver.abort();
    if status != StatusCode::OK {
        return Err(io_error(
            "task list",
            std::io::Error::other(format!(
                "the engine answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
            )),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_desired_running_tasks_with_their_addresses_per_network() {
        let body = br#"[
          {"ID":"t1","ServiceID":"s1","DesiredState":"running","Status":{"State":"running"},
           "NetworksAttachments":[
             {"Network":{"ID":"ingress"},"Addresses":["10.255.0.5/16"]},
             {"Network":{"ID":"apps"},"Addresses":["10.0.1.7/24","fd00::7/64"]}]},
          {"ID":"t2","ServiceID":"s1","DesiredState":"running","Status":{"State":"starting"}},
          {"ID":"t3","ServiceID":"s1","DesiredState":"shutdown","Status":{"State":"running"},
           "NetworksAttachments":[{"Network":{"ID":"apps"},"Addresses":["10.0.1.8/24"]}]},
          {"ID":"t4","ServiceID":"s2","DesiredState":"running","Status":{"State":"running"},
           "NetworksAttachments":[{"Network":{"ID":"apps"},"Addresses":["not an ip"]},{"Addresses":["10.0.1.9/24"]}],
           "Spec":{"anything":["is", "ignored"]}}
        ]"#;
        let tasks = parse(body).unwrap();
        assert_eq!(tasks.len(), 3, "t3 is being shut down");
        assert_eq!(tasks[0].id, "t1");
        assert!(tasks[0].running);
        assert_eq!(
            tasks[0].addresses,
            vec![
                ("ingress".to_string(), "10.255.0.5".parse().unwrap()),
                ("apps".to_string(), "10.0.1.7".parse().unwrap()),
                ("apps".to_string(), "fd00::7".parse().unwrap()),
            ]
        );
        assert!(!tasks[1].running);
        assert!(tasks[1].addresses.is_empty());
        assert!(
            tasks[2].addresses.is_empty(),
            "bad address and no network skipped"
        );
    }

    #[test]
    fn rejects_what_is_not_a_task_list() {
        assert!(parse(b"{\"message\":\"This node is not a swarm manager\"}").is_err());
        assert!(parse(b"[{\"ID\":").is_err());
    }
}
