//! Upgraded connections (websockets and any other `Upgrade`): once the upstream answers
//! 101, both sides' upgraded streams are joined by a tunnel task. The task holds no
//! reference to the routing table, so table swaps never touch it; draining waits for it.

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::Response;
use hyper_util::rt::TokioIo;

use super::body::ProxyBody;
use super::Proxy;
use crate::balance::Backend;

/// Spawns the tunnel and returns the 101 for the client.
pub(super) fn tunnel(
    proxy: &Proxy,
    client: OnUpgrade,
    mut upstream_resp: Response<Incoming>,
    backend: &Backend,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut upstream_resp);
    let guard = proxy.tracker.track();
    let gauge = proxy.metrics.open_tunnels.clone();
    let label = backend.upstream.label().to_string();
    tokio::spawn(async move {
        let _guard = guard;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = label, error = %e, "upgrade did not complete");
                return;
            }
        };
        gauge.inc();
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            16 * 1024,
            16 * 1024,
        )
        .await
        {
            Ok((up, down)) => tracing::debug!(upstream = label, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(upstream = label, error = %e, "tunnel closed with an error"),
        }
        gauge.dec();
    });
    let (parts, _) = upstream_resp.into_parts();
    Response::from_parts(parts, ProxyBody::empty())
}
