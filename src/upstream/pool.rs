//! Checkout and return of pooled HTTP/1.1 connections to one [`Upstream`].
//!
//! Idle connections sit in a lock-free bounded queue. A connection goes back to the queue
//! only after its response body was read to the end (see [`PooledConn::release`]); a
//! connection dropped mid-response is closed. Checkout skips connections that are closed or
//! idle longer than the pool's idle timeout.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

use super::{Upstream, UpstreamBody};

/// Idle connections of one endpoint: a lock-free queue that allocates as it fills (an
/// endpoint that never pools costs nothing), bounded by `max`.
pub(super) struct IdleQueue {
    queue: SegQueue<Idle>,
    len: AtomicUsize,
    max: usize,
}

impl IdleQueue {
    pub(super) fn new(max: usize) -> Self {
        IdleQueue {
            queue: SegQueue::new(),
            len: AtomicUsize::new(0),
            max: max.max(1),
        }
    }

    fn push(&self, idle: Idle) {
        if self.len.fetch_add(1, Ordering::AcqRel) < self.max {
            self.queue.push(idle);
        } else {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) fn pop(&self) -> Option<Idle> {
        let idle = self.queue.pop()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Some(idle)
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire).min(self.max)
    }

    /// Closes the connections idle for `timeout` or more (and those the upstream closed);
    /// returns how many. The queue is oldest-first, so this stops at the first fresh one.
    pub(super) fn reap(&self, timeout: Duration) -> usize {
        let mut closed = 0;
        for _ in 0..self.len() {
            let Some(idle) = self.pop() else { break };
            if idle.tx.is_closed() || idle.since.elapsed() >= timeout {
                closed += 1; // dropping the sender ends the connection task: it closes
                continue;
            }
            self.push(idle);
            break;
        }
        closed
    }
}

pub(super) struct Idle {
    tx: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// Why no connection to an upstream could be had.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("connection refused by {0}")]
    Refused(std::net::SocketAddr),
    #[error("connecting to {0} timed out")]
    Timeout(std::net::SocketAddr),
    #[error("connecting to {0}: {1}")]
    Io(std::net::SocketAddr, io::Error),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(std::net::SocketAddr, hyper::Error),
}

/// A connection checked out of an upstream's pool.
pub struct PooledConn {
    pub tx: http1::SendRequest<UpstreamBody>,
    /// True when the connection served an earlier request (a failure on it may be a stale
    /// keep-alive race, worth one retry of an idempotent request).
    pub reused: bool,
}

impl PooledConn {
    /// Returns the connection to its upstream's pool (the response was read completely).
    pub fn release(self, upstream: &Upstream) {
        if upstream.is_retired() || self.tx.is_closed() {
            return;
        }
        upstream.idle.push(Idle {
            tx: self.tx,
            since: Instant::now(),
        });
    }
}

impl Upstream {
    /// A ready connection: a pooled one if any is still good, else a new one.
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<PooledConn, ConnectError> {
        while let Some(mut idle) = self.idle.pop() {
            if idle.tx.is_closed() || idle.since.elapsed() >= idle_timeout {
                continue;
            }
            // The previous exchange has ended; the connection task is usually ready at once.
            if idle.tx.ready().await.is_ok() {
                return Ok(PooledConn {
                    tx: idle.tx,
                    reused: true,
                });
            }
        }
        // Boxed: the connect and handshake futures would otherwise make every request's
        // future larger, though a warm pool rarely connects.
        Box::pin(self.connect(connect_timeout)).await
    }

    /// Opens a new connection (never pooled before).
    pub async fn connect(&self, timeout: Duration) -> Result<PooledConn, ConnectError> {
        let addr = self.addr;
        let stream = connect_tcp(addr, timeout).await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(PooledConn { tx, reused: false })
    }
}

/// A TCP connection to an endpoint, with the connect timeout and `TCP_NODELAY`.
pub(super) async fn connect_tcp(
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(addr)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused(addr))
        }
        Ok(Err(e)) => return Err(ConnectError::Io(addr, e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
