//! Our own HTTP/1.1 client for upstream connections.
//!
//! A connection here is a plain socket plus its read buffer, owned by the request that
//! uses it: the request writes its head (and body) and reads the answer inside the client
//! connection's own task, and the response body returns the connection to the pool the
//! moment its last byte is read. There is no connection task, no channel and no wake-up
//! between tasks per request, which a general-purpose client (hyper's) needs, and which
//! costs a small request about as much CPU as everything else user space does for it.
//!
//! - [`request`]: the request head's wire form and the body's framing, then sending them
//!   while the answer is watched for (an upstream may answer before the body is sent).
//! - [`response`]: the response head, parsed without copying, and its framing (RFC 9112
//!   §6.3).
//! - [`body`]: the response body (length, chunked or close-delimited) as it streams to
//!   the client.
//! - [`spare`]: read buffers recycled per thread between exchanges.
//!
//! An exchange's deadline (the upstream timeout) is watched by one timer the connection
//! keeps for its life ([`H1Conn::poll_deadline`]), not one set and dropped per request.

mod body;
mod request;
mod response;
mod spare;

pub use body::ResponseBody;
pub use request::{HeadWriter, RequestFraming};
pub use response::{may_end_head, parse_length, ResponseHead};

#[doc(hidden)]
pub(crate) use body::{length_data, Chunk, Decoded, Framing};
#[doc(hidden)]
pub(crate) use response::parse_head;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::{ClientBodyError, Upstream, UpstreamBody};
use crate::wire::{SendError, Sender};

/// Most response header fields accepted (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// First read size; reads that fill the buffer double it, up to [`MAX_READ`].
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// What went wrong talking to the upstream.
#[derive(Debug, Error)]
pub enum H1Error {
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("the upstream closed the connection in the middle of the response body")]
    Truncated,
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("malformed chunked response body: {0}")]
    Chunk(&'static str),
}

/// One HTTP/1.1 connection to an endpoint, between requests or owned by one.
#[derive(Debug)]
pub struct H1Conn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    rbuf: BytesMut,
    /// How much room the next read asks for.
    read_size: usize,
    /// Bytes of `rbuf` parsed without finding a whole response head (0: none yet). The
    /// head is parsed again only once a line has ended since (see `poll_head`).
    head_scanned: usize,
    /// `rbuf` is a [`spare`] buffer of [`FIRST_READ`], never grown: it goes back to the
    /// spares when the connection idles.
    rbuf_spare: bool,
    /// Watches the deadline of the exchange in flight (see [`H1Conn::poll_deadline`]):
    /// one timer for the connection's life, not one per exchange.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The end of a successful exchange.
pub enum Outcome {
    /// An answer whose body streams from the connection.
    Response(ResponseHead, ResponseBody),
    /// `101 Switching Protocols` to an upgrade request: the socket now belongs to the
    /// tunnel, with the bytes the upstream sent after its head.
    Upgraded(http::response::Parts, TcpStream, Bytes),
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// Not a byte was written (the connection was found closed): the request, its body
    /// untouched, may be sent on another connection.
    Unsent(H1Error, Option<UpstreamBody>),
    /// The request was (maybe partly) sent and no usable answer came.
    Failed(H1Error),
    /// The client's body failed: the client's fault, not the upstream's.
    ClientBody(ClientBodyError),
    /// No answer's head came before the deadline.
    TimedOut,
}

/// What is sent: the encoded head, the body (if any) and how it is framed.
pub struct Outgoing {
    pub head: Bytes,
    pub body: Option<UpstreamBody>,
    pub framing: RequestFraming,
    /// A HEAD request: the answer has no body whatever its fields say.
    pub head_request: bool,
    /// The request asks for a protocol upgrade: a 101 hands the socket over.
    pub upgrade: bool,
}

impl H1Conn {
    /// Boxed: a connection moves between the pool, the exchange and the response body,
    /// each a move of a pointer instead of the whole connection.
    pub(super) fn new(io: TcpStream) -> Box<Self> {
        Box::new(H1Conn {
            io,
            rbuf: BytesMut::new(),
            read_size: FIRST_READ,
            head_scanned: 0,
            rbuf_spare: false,
            timer: None,
        })
    }

    /// True when the upstream closed this idle connection, reset it, or sent something
    /// unasked (none leaves it usable). Costs no system call unless the socket has become
    /// readable since the last read.
    pub(super) fn looks_closed(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Before the connection idles in a pool: its read buffer, empty (a connection with
    /// bytes left over after a response is never pooled: `ResponseBody::finish`), is let go
    /// (hundreds of idle connections would each keep [`FIRST_READ`], up to [`MAX_READ`]
    /// after large bodies): one of the first read size goes to this thread's [`spare`]
    /// buffers for the next exchange, a grown one is freed. The read size stays, so the next
    /// large body is read in large reads again.
    pub(super) fn shrink_idle_buffer(&mut self) {
        debug_assert!(
            self.rbuf.is_empty(),
            "a connection with unread bytes is pooled"
        );
        let buf = std::mem::take(&mut self.rbuf);
        if std::mem::take(&mut self.rbuf_spare) {
            spare::give(buf);
        }
    }

    /// Ready once `deadline` has passed. A timer set, polled and dropped per exchange
    /// costs a request about a tenth of its user-space work (the timer wheel's insert and
    /// removal, the clock read twice); this one stays armed between exchanges and is reset
    /// only when it fires before the deadline it now watches (a later exchange's: once per
    /// timeout's length on a busy connection) or is set later than it.
    fn poll_deadline(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Reads more into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 4 {
            if self.rbuf.capacity() == 0 && self.read_size == FIRST_READ {
                self.rbuf = spare::take(FIRST_READ);
                self.rbuf_spare = true;
            } else {
                self.rbuf.reserve(self.read_size);
                self.rbuf_spare = false;
            }
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// Sends one request on `conn` and reads the answer's head, unless `deadline` passes
/// first. The body, if any, is sent while the answer is watched for, and goes on being
/// sent while the answer's body is read if the answer came first. `out` is borrowed (its
/// head cloned, its body taken), not moved: an `async fn` stores what it takes twice, and
/// this future sits in every request's state.
pub async fn exchange(
    mut conn: Box<H1Conn>,
    out: &mut Outgoing,
    upstream: &Arc<Upstream>,
    deadline: Instant,
) -> Result<Outcome, ExchangeError> {
    let body = out
        .body
        .take()
        .filter(|_| out.framing != RequestFraming::Empty);
    let mut sender = Sender::new(
        out.head.clone(),
        body,
        out.framing == RequestFraming::Chunked,
    );
    let mut sent = false;
    let mut write_error: Option<io::Error> = None;
    let mut step = |conn: &mut H1Conn, cx: &mut Context<'_>| {
        if !sent {
            match sender.poll_send(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => sent = true,
                Poll::Ready(Err(SendError::Body(e))) => {
                    return Poll::Ready(Err(ExchangeError::ClientBody(e)))
                }
                Poll::Ready(Err(SendError::Io(e))) => {
                    if sender.written() == 0 && sender.body_untouched() {
                        return Poll::Ready(Err(ExchangeError::Unsent(
                            H1Error::Io(e),
                            sender.take_body(),
                        )));
                    }
                    // The upstream may have answered (an early 413, say) before closing:
                    // read on, and report the write's error only if no answer comes.
                    write_error = Some(e);
                    sent = true;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let head = match ready!(response::poll_head(conn, cx, out.head_request)) {
                Ok(head) => head,
                Err(e) => {
                    let e = match (write_error.take(), e) {
                        (Some(w), H1Error::Closed | H1Error::Io(_)) => H1Error::Io(w),
                        (_, e) => e,
                    };
                    return Poll::Ready(Err(ExchangeError::Failed(e)));
                }
            };
            let status = head.head.status.as_u16();
            if status == 101 {
                if !out.upgrade {
                    return Poll::Ready(Err(ExchangeError::Failed(H1Error::Invalid(
                        "101 Switching Protocols to a request that asked for no upgrade",
                    ))));
                }
                return Poll::Ready(Ok(head));
            }
            // 100 Continue, 103 Early Hints: interim answers, the final one follows.
            if (100..200).contains(&status) {
                continue;
            }
            return Poll::Ready(Ok(head));
        }
    };
    let head = poll_fn(|cx| {
        if let Poll::Ready(done) = step(&mut conn, cx) {
            return Poll::Ready(done);
        }
        conn.poll_deadline(deadline, cx)
            .map(|()| Err(ExchangeError::TimedOut))
    })
    .await?;
    if head.head.status.as_u16() == 101 {
        let leftover = conn.rbuf.split().freeze();
        return Ok(Outcome::Upgraded(head.head.into_parts(), conn.io, leftover));
    }
    // An answer may come before the whole body was sent (a backend that streams its
    // answer while it reads): the rest of the body is sent as the answer is read.
    let sending = (!sent).then(|| Box::new(sender));
    let reusable = head.keep_alive && write_error.is_none();
    let body = ResponseBody::new(conn, head.framing, reusable, sending, upstream.clone());
    Ok(Outcome::Response(head.head, body))
}
