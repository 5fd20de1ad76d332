//! Accepting connections (the proxy's listeners, the admin listener, the controller's
//! snapshot API): one at a time, with `TCP_NODELAY`, until shutdown, and then the ones
//! already queued (so closing the listener resets none that the kernel accepted); a
//! failing `accept` (out of file descriptors and the like) is retried with backoff, so
//! the listener neither spins nor dies.

use std::time::Duration;

use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// The next accepted connection (with `TCP_NODELAY`); once `shutdown` fired, the next one
/// already queued, or `None` when none is. Accept errors (out of file descriptors and the like) are retried with backoff: the
/// listener neither spins nor dies.
pub(crate) async fn next(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            // Stopping: the connections whose handshake the kernel already completed are
            // taken and served; closing the listener would reset them unanswered.
            _ = shutdown.wait() => return queued(listener),
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

/// A connection already in `listener`'s queue, without waiting for one.
fn queued(listener: &TcpListener) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match listener.poll_accept(&mut cx) {
        std::task::Poll::Ready(Ok((stream, peer))) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        _ => None,
    }
}
