//! Accepting connections (the proxy's listeners, the admin listener, the controller's
//! snapshot API): one at a time, with `TCP_NODELAY`, until shutdown, and then the ones
//! already queued (so closing the listener resets none that the kernel accepted); a
//! failing `accept` (out of file descriptors and the like) is retried with backoff, so
//! the listener neither spins nor dies. The proxy's plain listener accepts
//! connections that join the runtime's poller only when they first wait (`lazy.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

mod lazy;

pub use lazy::{LazyListener, LazyTcp};

/// A listening socket [`next`] takes connections from.
pub(crate) trait Listener {
    type Stream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, SocketAddr)>>;
    /// Requests and answers leave at once (`TCP_NODELAY`).
    fn set_nodelay(stream: &Self::Stream);
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::poll_accept(self, cx)
    }
    fn set_nodelay(stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
    }
}

impl Listener for LazyListener {
    type Stream = LazyTcp;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(LazyTcp, SocketAddr)>> {
        LazyListener::poll_accept(self, cx)
    }
    fn set_nodelay(stream: &LazyTcp) {
        let _ = stream.set_nodelay(true);
    }
}

/// The next accepted connection (with `TCP_NODELAY`); once `shutdown` fired, the next one
/// already queued, or `None` when none is. Accept errors (out of file descriptors and the like) are retried with backoff: the
/// listener neither spins nor dies.
pub(crate) async fn next<L: Listener>(
    listener: &L,
    shutdown: &Shutdown,
) -> Option<(L::Stream, SocketAddr)> {
    let mut backoff = Duration::from_millis(5);
    loop {
        // Stopping: the connections whose handshake the kernel already completed are
        // taken and served; closing the listener would reset them unanswered.
        if shutdown.is_triggered() {
            return queued(listener);
        }
        // The shutdown signal is watched only while no connection is waiting: under load
        // the accept is ready at once, and registering with the signal and leaving it again
        // cost two lock round trips per connection.
        let accepted = {
            let stop = shutdown.wait();
            let mut stop = std::pin::pin!(stop);
            std::future::poll_fn(|cx| match listener.poll_accept(cx) {
                Poll::Ready(accepted) => Poll::Ready(Some(accepted)),
                Poll::Pending => stop.as_mut().poll(cx).map(|()| None),
            })
            .await
        };
        let Some(accepted) = accepted else {
            return queued(listener);
        };
        match accepted {
            Ok((stream, peer)) => {
                L::set_nodelay(&stream);
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
fn queued<L: Listener>(listener: &L) -> Option<(L::Stream, SocketAddr)> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match listener.poll_accept(&mut cx) {
        Poll::Ready(Ok((stream, peer))) => {
            L::set_nodelay(&stream);
            Some((stream, peer))
        }
        _ => None,
    }
}
