//! Upgraded connections (websockets and any other `Upgrade`): once the upstream answers
//! 101, the client's upgraded stream and the upstream socket are joined by a tunnel task.
//! The task holds no reference to the routing table, so table swaps never touch it;
//! draining waits for it. It holds no buffer while the tunnel is idle (`splice.rs`).

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::ProxyBody;
use super::Proxy;
use crate::balance::Backend;

/// Spawns the tunnel and returns the 101 for the client. `early`: bytes the upstream sent
/// right after its 101 head, owed to the client first.
pub(super) fn tunnel(
    proxy: &Proxy,
    client: OnUpgrade,
    parts: http::response::Parts,
    mut upstream: TcpStream,
    early: Bytes,
    backend: &Backend,
) -> Response<ProxyBody> {
    let guard = proxy.tracker.track();
    let gauge = proxy.metrics.open_tunnels.clone();
    let label = backend.upstream.label().to_string();
    tokio::spawn(async move {
        let _guard = guard;
        let client = match client.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(upstream = label, error = %e, "upgrade did not complete");
                return;
            }
        };
        gauge.inc();
        let mut client = TokioIo::new(client);
        let copied = async {
            client.write_all(&early).await?;
            // Cut from the upstream connection's read buffer: let go of it.
            drop(early);
            super::splice::splice(&mut client, &mut upstream).await
        };
        match copied.await {
            Ok((up, down)) => tracing::debug!(upstream = label, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(upstream = label, error = %e, "tunnel closed with an error"),
        }
        gauge.dec();
    });
    Response::from_parts(parts, ProxyBody::empty())
}
