//! Accepting connections (the proxy's listeners, the admin listener, the controller's
//! snapshot API): one at a time, with `TCP_NODELAY`, until shutdown; a
//! failing `accept` (out of file descriptors and the like) is retried with backoff, so
//! the listener neither spins nor dies.

use std::time::Duration;

use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// The next accepted connection (with `TCP_NODELAY`), or `None` once `shutdown` fires.
/// Accept errors (out of file descriptors and the like) are retried with backoff: the
/// listener neither spins nor dies.
pub(crate) async fn next(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait() => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
