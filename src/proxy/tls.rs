//! The TLS listener. Lifecycle of a connection: read the ClientHello (bounded in size and
//! time) without answering it -> its SNI names a passthrough route? connect to an endpoint,
//! replay the ClientHello and splice bytes both ways (TLS is the backend's) -> otherwise
//! terminate TLS with rustls (certificate by SNI, ALPN h2/http/1.1) on the replayed bytes
//! and serve HTTP over it exactly like the plain listener, with `X-Forwarded-Proto: https`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::rewind::Rewind;
use super::Proxy;
use crate::balance;
use crate::routing::Route;
use crate::shutdown::{Shutdown, TrackGuard};
use crate::tls::sni::{self, Hello};
use crate::tls::TlsState;

impl Proxy {
    /// Accepts TLS connections until `shutdown` fires. `self` must be the HTTPS instance
    /// (its settings' scheme is `https`).
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<TlsState>,
        shutdown: Shutdown,
    ) {
        let acceptor = TlsAcceptor::from(tls.config.clone());
        let mut incoming = crate::accept::Incoming::new(&listener, &shutdown);
        while let Some((stream, peer)) = incoming.next().await {
            let guard = self.tracker.track();
            let proxy = self.clone();
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = proxy
                    .handle_tls(stream, peer, acceptor, shutdown, guard)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "TLS connection refused");
                }
            });
        }
    }

    async fn handle_tls(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        acceptor: TlsAcceptor,
        shutdown: Shutdown,
        guard: TrackGuard,
    ) -> io::Result<()> {
        let timeout = self.settings.header_read_timeout;
        let (hello, sni) = tokio::time::timeout(timeout, read_client_hello(&mut stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello in time"))??;
        let route = sni
            .as_deref()
            .and_then(|name| self.table.load().passthrough(name).cloned());
        if let Some(route) = route {
            return self.passthrough(stream, peer, hello, &route, guard).await;
        }
        let tls = tokio::time::timeout(timeout, acceptor.accept(Rewind::new(hello, stream)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let alpn = tls.get_ref().1.alpn_protocol();
        if alpn == Some(crate::tls::certs::ACME_TLS_ALPN) {
            // A TLS-ALPN-01 validation: the handshake was the answer (RFC 8737 §3).
            let mut tls = tls;
            let _ = tls.shutdown().await;
            return Ok(());
        }
        let h2 = alpn == Some(b"h2");
        super::connection::serve(self, tls, peer, shutdown, guard, h2).await;
        Ok(())
    }

    /// Splices the client to an endpoint of a passthrough route.
    async fn passthrough(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        hello: Vec<u8>,
        route: &Route,
        guard: TrackGuard,
    ) -> io::Result<()> {
        let key = balance::affinity_key(&route.backends.sticky, [], peer.ip());
        let mut avoid = None;
        for _ in 0..2 {
            let Some(backend) = route.backends.pick(key, avoid.as_deref()).cloned() else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "passthrough route has no endpoint",
                ));
            };
            let connect = tokio::time::timeout(
                self.settings.connect_timeout,
                TcpStream::connect(backend.upstream.addr()),
            )
            .await;
            let mut upstream = match connect {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    backend.metrics.upstream_error();
                    backend.upstream.record_failure(&route.backends.health);
                    tracing::warn!(route = %route.id, upstream = backend.upstream.label(), error = %e, "passthrough connect failed");
                    avoid = Some(backend.upstream.clone());
                    continue;
                }
                Err(_) => {
                    backend.metrics.upstream_error();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "passthrough connect timed out",
                    ));
                }
            };
            let _ = upstream.set_nodelay(true);
            backend.upstream.record_success();
            upstream.write_all(&hello).await?;
            let _active = backend.upstream.track();
            self.metrics.open_tunnels.inc();
            let res = super::splice::splice(&mut client, &mut upstream).await;
            self.metrics.open_tunnels.dec();
            drop(guard);
            return res.map(|_| ());
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "no passthrough endpoint accepted",
        ))
    }
}

/// Reads until a complete ClientHello is buffered; returns the bytes and the SNI.
async fn read_client_hello(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the ClientHello",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match sni::parse(&buf) {
            Hello::Complete(name) => return Ok((buf, name)),
            Hello::Invalid => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a TLS ClientHello",
                ))
            }
            Hello::Incomplete if buf.len() > sni::MAX_HELLO + 4096 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ClientHello too large",
                ))
            }
            Hello::Incomplete => {}
        }
    }
}
