//! Accepting connections (the proxy's listeners, the admin listener, the controller's
//! snapshot API): one at a time, with `TCP_NODELAY` (set on the listening socket, whose
//! accepted sockets inherit it on Linux), until shutdown, and then the ones
//! already queued (so closing the listener resets none that the kernel accepted); a
//! failing `accept` (out of file descriptors and the like) is retried with backoff, so
//! the listener neither spins nor dies. The proxy's plain listener accepts
//! connections that join the runtime's poller only when they first wait (`lazy.rs`).
//! The proxy's listeners hand over a connection only once its first bytes are in
//! ([`defer_until_data`]).

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
    /// `TCP_NODELAY` on the listening socket: Linux gives the option to every socket the
    /// listener accepts, which then needs no system call of its own.
    fn set_listener_nodelay(&self) -> io::Result<()>;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::poll_accept(self, cx)
    }
    fn set_nodelay(stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
    }
    fn set_listener_nodelay(&self) -> io::Result<()> {
        socket2::SockRef::from(self).set_tcp_nodelay(true)
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
    fn set_listener_nodelay(&self) -> io::Result<()> {
        LazyListener::set_listener_nodelay(self)
    }
}

/// Asks the kernel to hand over `listener`'s connections only once the client's first bytes
/// arrived (Linux's `TCP_DEFER_ACCEPT`, nginx's `listen ... deferred`), for listeners whose
/// clients speak first (HTTP, h2c's preface, TLS's ClientHello, a PROXY header): the
/// first read of an accepted connection then finds its request instead of failing, and
/// the connection never waits in the poller for it (a registration, a readiness event and
/// a wake-up less). A client that connects and stays silent is handed over all the same
/// once a retransmitted handshake reply of the kernel's (about a second) is acknowledged,
/// and a client that closes first is handed over with its FIN; until then it costs the
/// proxy no descriptor. Not Linux: nothing to do.
pub fn defer_until_data(listener: &impl std::os::fd::AsFd) -> io::Result<()> {
    // The kernel counts in handshake retransmissions: one, after about a second.
    interlock_sockopt::set_tcp_defer_accept(listener.as_fd(), 1)
}

/// The connections of one listener, each with `TCP_NODELAY`.
pub(crate) struct Incoming<'a, L> {
    listener: &'a L,
    shutdown: &'a Shutdown,
    /// Each accepted socket needs its own `setsockopt` (the listener's option is not
    /// inherited: not Linux, or setting it failed).
    nodelay_each: bool,
}

impl<'a, L: Listener> Incoming<'a, L> {
    pub(crate) fn new(listener: &'a L, shutdown: &'a Shutdown) -> Self {
        let inherited = cfg!(target_os = "linux") && listener.set_listener_nodelay().is_ok();
        Incoming {
            listener,
            shutdown,
            nodelay_each: !inherited,
        }
    }

    /// The next accepted connection; once `shutdown` fired, the next one already queued, or
    /// `None` when none is. Accept errors (out of file descriptors and the like) are retried
    /// with backoff: the listener neither spins nor dies.
    pub(crate) async fn next(&mut self) -> Option<(L::Stream, SocketAddr)> {
        let accepted = next(self.listener, self.shutdown).await;
        if self.nodelay_each {
            if let Some((stream, _)) = &accepted {
                L::set_nodelay(stream);
            }
        }
        accepted
    }
}

async fn next<L: Listener>(listener: &L, shutdown: &Shutdown) -> Option<(L::Stream, SocketAddr)> {
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
            Ok(accepted) => return Some(accepted),
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
        Poll::Ready(Ok(accepted)) => Some(accepted),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted sockets have `TCP_NODELAY` (inherited from the listener on Linux) on both
    /// kinds of listener, also the one taken from the queue after shutdown.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lazy = LazyListener::new(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let mut plain_incoming = Incoming::new(&plain, &shutdown);
        let mut lazy_incoming = Incoming::new(&lazy, &shutdown);
        let _c1 = TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let _c2 = TcpStream::connect(lazy.local_addr().unwrap())
            .await
            .unwrap();
        let (s1, _) = plain_incoming.next().await.unwrap();
        let (s2, _) = lazy_incoming.next().await.unwrap();
        assert!(s1.nodelay().unwrap());
        assert!(s2.nodelay().unwrap());
        // Queued when shutdown fires: still taken, still with the option.
        let _c3 = TcpStream::connect(lazy.local_addr().unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.trigger();
        let (s3, _) = lazy_incoming.next().await.unwrap();
        assert!(s3.nodelay().unwrap());
        assert!(lazy_incoming.next().await.is_none());
    }
}
