//! Checkout and return of pooled HTTP/1.1 connections to one [`Upstream`].
//!
//! Idle connections sit in a lock-free bounded queue. A connection goes back to the queue
//! only after its response body was read to the end (see [`Upstream::release`]); a
//! connection dropped mid-response is closed. Checkout skips connections that are closed or
//! idle longer than the pool's idle timeout.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use thiserror::Error;
use tokio::net::TcpStream;

use super::h1::H1Conn;
use super::Upstream;

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
            let Some(mut idle) = self.pop() else { break };
            if idle.since.elapsed() >= timeout || idle.conn.looks_closed() {
                closed += 1; // dropped: closed
                continue;
            }
            self.push(idle);
            break;
        }
        closed
    }
}

pub(super) struct Idle {
    conn: Box<H1Conn>,
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
    pub conn: Box<H1Conn>,
    /// True when the connection served an earlier request (a failure on it may be a stale
    /// keep-alive race, worth one retry of an idempotent request).
    pub reused: bool,
}

impl Upstream {
    /// Returns a connection to the pool (its last response was read completely).
    pub(super) fn release(&self, mut conn: Box<H1Conn>) {
        if !self.is_retired() {
            conn.shrink_idle_buffer();
            self.idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A ready connection: a pooled one if any is still good, else a new one.
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<PooledConn, ConnectError> {
        while let Some(mut idle) = self.idle.pop() {
            if idle.since.elapsed() < idle_timeout && !idle.conn.looks_closed() {
                return Ok(PooledConn {
                    conn: idle.conn,
                    reused: true,
                });
            }
        }
        // Boxed: the connect future would otherwise make every request's future larger,
        // though a warm pool rarely connects.
        Box::pin(self.connect(connect_timeout)).await
    }

    /// Opens a new connection (never pooled before).
    pub async fn connect(&self, timeout: Duration) -> Result<PooledConn, ConnectError> {
        let stream = connect_tcp(self.addr, timeout).await?;
        Ok(PooledConn {
            conn: H1Conn::new(stream),
            reused: false,
        })
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
