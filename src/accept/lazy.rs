//! Connections that join the runtime's poller only when they first have to wait.
//!
//! A plain HTTP client usually sends its request right behind the TCP handshake, and a
//! small answer fits the socket's send buffer: a connection that carries one request and
//! closes (`Connection: close`, health checkers, scripts) never has to wait for its socket.
//! tokio registers every accepted socket with epoll (`epoll_ctl` ADD) and deregisters it
//! when it is dropped (DEL): two system calls, a registration slot and an extra readiness
//! event per connection, for nothing when it never waits. [`LazyListener`] accepts sockets
//! without registering them (non-blocking, as mio's `accept4` makes them), and
//! [`LazyTcp`] reads and writes them directly until a call would block; only then is the
//! socket registered with the runtime (epoll reports readiness that already exists when a
//! socket is added, so no byte that came in between is missed), and from then on it is an
//! ordinary `tokio::net::TcpStream`. HAProxy's speculative I/O works the same way.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes one read takes before the socket is registered: a request head almost
/// always fits, and the room the caller offers (8 KiB and more, uninitialized) has to be
/// zeroed first.
const DIRECT_READ: usize = 4096;

/// A listening socket whose accepted connections are [`LazyTcp`]s.
pub struct LazyListener {
    fd: AsyncFd<mio::net::TcpListener>,
}

impl LazyListener {
    /// Takes over a bound tokio listener (it leaves tokio's poller and joins it again here).
    pub fn new(listener: tokio::net::TcpListener) -> io::Result<Self> {
        let std = listener.into_std()?;
        // Deprecated since tokio 1.54 for being unsound with a `T` whose descriptor can be
        // closed or replaced while registered (the replacement, `register_with_interest`,
        // is `unsafe`). Sound here: the `AsyncFd` owns the listener, and nothing closes or
        // replaces its descriptor before the `AsyncFd` deregisters it on drop.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(mio::net::TcpListener::from_std(std), Interest::READABLE)?;
        Ok(LazyListener { fd })
    }

    /// `TCP_NODELAY` on the listening socket (accepted sockets inherit it on Linux).
    pub(super) fn set_listener_nodelay(&self) -> io::Result<()> {
        socket2::SockRef::from(self.fd.get_ref()).set_tcp_nodelay(true)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// The next connection in the accept queue, or `Pending` until there is one.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(LazyTcp, SocketAddr)>> {
        loop {
            let mut ready = std::task::ready!(self.fd.poll_read_ready(cx))?;
            // `try_io` clears the readiness when accept would block, so the next poll waits.
            if let Ok(accepted) = ready.try_io(|fd| fd.get_ref().accept()) {
                return Poll::Ready(accepted.map(|(stream, peer)| (LazyTcp::new(stream), peer)));
            }
        }
    }
}

/// An accepted connection: read and written directly until a call would block, then
/// registered with the runtime (see the module's documentation).
pub struct LazyTcp {
    state: State,
}

enum State {
    /// Not known to the runtime's poller: every call goes straight to the socket.
    Direct(mio::net::TcpStream),
    Registered(TcpStream),
    /// Registration failed (the error was returned once); the socket is closed.
    Failed,
}

impl LazyTcp {
    fn new(stream: mio::net::TcpStream) -> Self {
        LazyTcp {
            state: State::Direct(stream),
        }
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match &self.state {
            State::Direct(s) => s.set_nodelay(nodelay),
            State::Registered(s) => s.set_nodelay(nodelay),
            State::Failed => Err(failed()),
        }
    }

    /// Whether `TCP_NODELAY` is set (for tests).
    #[cfg(test)]
    pub(crate) fn nodelay(&self) -> io::Result<bool> {
        match &self.state {
            State::Direct(s) => s.nodelay(),
            State::Registered(s) => s.nodelay(),
            State::Failed => Err(failed()),
        }
    }

    /// Whether the socket has joined the runtime's poller (for tests).
    pub fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered(_))
    }

    /// A call would block: from now on the runtime polls the socket.
    fn register(&mut self) -> io::Result<()> {
        if let State::Direct(s) = std::mem::replace(&mut self.state, State::Failed) {
            self.state = State::Registered(TcpStream::from_std(s.into())?);
        }
        Ok(())
    }

    /// Runs `op` on the unregistered socket; `None` when the socket is (now) registered and
    /// the caller should poll it through tokio instead.
    fn direct<T>(
        &mut self,
        mut op: impl FnMut(&mio::net::TcpStream) -> io::Result<T>,
    ) -> Option<Poll<io::Result<T>>> {
        let State::Direct(s) = &self.state else {
            return None;
        };
        loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.register().err().map(|e| Poll::Ready(Err(e)));
                }
                done => return Some(Poll::Ready(done)),
            }
        }
    }

    fn registered(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.state {
            State::Registered(s) => Ok(Pin::new(s)),
            _ => Err(failed()),
        }
    }
}

fn failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection could not be registered with the runtime's poller",
    )
}

impl AsyncRead for LazyTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let direct = this.direct(|mut s| {
            // Safe code reads only into initialized memory: zero at most DIRECT_READ bytes
            // of the caller's (usually uninitialized) room, not all of it.
            let room = buf.remaining().min(DIRECT_READ);
            let n = s.read(buf.initialize_unfilled_to(room))?;
            buf.advance(n);
            Ok(())
        });
        match direct {
            Some(done) => done,
            None => this.registered()?.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LazyTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.direct(|mut s| s.write(buf)) {
            Some(done) => done,
            None => this.registered()?.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.direct(|mut s| s.write_vectored(bufs)) {
            Some(done) => done,
            None => this.registered()?.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Direct(_) => Poll::Ready(Ok(())),
            State::Registered(s) => Pin::new(s).poll_flush(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Direct(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            State::Registered(s) => Pin::new(s).poll_shutdown(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (LazyTcp, tokio::net::TcpStream) {
        let listener =
            LazyListener::new(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = std::future::poll_fn(|cx| listener.poll_accept(cx))
            .await
            .unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn bytes_already_there_are_read_without_registering() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"hello").await.unwrap();
        // Let the bytes reach the server's socket.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut buf = [0u8; 16];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        server.write_all(b"world").await.unwrap();
        assert!(!server.is_registered());
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"world");
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_and_wakes_when_bytes_come() {
        let (mut server, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = server.read(&mut buf).await.unwrap();
            (buf[..n].to_vec(), server.is_registered())
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client.write_all(b"late").await.unwrap();
        let (got, registered) = reader.await.unwrap();
        assert_eq!(got, b"late");
        assert!(registered);
    }

    #[tokio::test]
    async fn a_write_that_would_block_registers_and_finishes_when_the_peer_reads() {
        let (mut server, mut client) = pair().await;
        let big = vec![7u8; 8 << 20];
        let writer = tokio::spawn(async move {
            server.write_all(&big).await.unwrap();
            server.shutdown().await.unwrap();
            server.is_registered()
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 8 << 20);
        assert!(got.iter().all(|&b| b == 7));
        assert!(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_closed_peer_reads_as_end_of_stream() {
        let (mut server, client) = pair().await;
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }
}
