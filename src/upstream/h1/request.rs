//! The request side: the head as bytes (kept, so that a replay sends the same bytes), the
//! body's framing, and the sender that writes head and body frames with vectored writes.

use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::upstream::{ClientBodyError, UpstreamBody};

/// How the request body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes, sent as they come.
    Length(u64),
    /// `Transfer-Encoding: chunked` (the length is not known up front).
    Chunked,
}

impl RequestFraming {
    /// The framing of a body known to be empty (`end_stream`), or of this exact length,
    /// or of a length not known up front.
    pub fn of(end_stream: bool, exact: Option<u64>) -> Self {
        match (end_stream, exact) {
            (true, _) => RequestFraming::Empty,
            (false, Some(n)) => RequestFraming::Length(n),
            (false, None) => RequestFraming::Chunked,
        }
    }
}

/// Writes a request head as sent: `METHOD target HTTP/1.1`, the fields, then the framing
/// field. Names and values come from `http` types (validated: no CR or LF), so nothing in
/// a request can add a line. The caller decides which fields go (see
/// `proxy::headers::upstream_head`); the framing fields are this writer's alone, so a
/// chunked body never travels with a `Content-Length` (the classic smuggling confusion).
pub struct HeadWriter {
    buf: BytesMut,
}

impl HeadWriter {
    /// Starts a head; `fields` is about how many bytes the fields will take.
    pub fn new(method: &Method, target: &str, fields: usize) -> Self {
        let mut buf = BytesMut::with_capacity(method.as_str().len() + target.len() + fields + 64);
        buf.extend_from_slice(method.as_str().as_bytes());
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter { buf }
    }

    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Ends the head with the body's framing field. `declared_empty`: say `Content-Length:
    /// 0` for an empty body (the client did, or the method usually carries a body).
    pub fn finish(mut self, framing: RequestFraming, declared_empty: bool) -> Bytes {
        match framing {
            RequestFraming::Empty if declared_empty => self.field(b"content-length", b"0"),
            RequestFraming::Empty => {}
            RequestFraming::Length(n) => {
                // BytesMut's fmt::Write cannot fail.
                let _ = write!(self.buf, "content-length: {n}\r\n");
            }
            RequestFraming::Chunked => self.field(b"transfer-encoding", b"chunked"),
        }
        self.buf.extend_from_slice(b"\r\n");
        self.buf.freeze()
    }
}

pub(super) enum SendError {
    Io(io::Error),
    Client(ClientBodyError),
}

/// Bytes queued for one vectored write: at most a head, a chunk line, data and CRLF.
struct Queue {
    bufs: [Bytes; 4],
    len: usize,
}

impl Queue {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bufs[self.len] = b;
            self.len += 1;
        }
    }

    fn room(&self) -> usize {
        self.bufs.len() - self.len
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.len > 0 {
            let first = &mut self.bufs[0];
            let take = n.min(first.len());
            first.advance(take);
            n -= take;
            if first.is_empty() {
                self.bufs[..self.len].rotate_left(1);
                self.len -= 1;
                self.bufs[self.len] = Bytes::new();
            }
        }
    }
}

/// Writes the head, then the body's frames as they come.
pub(super) struct Sender {
    queue: Queue,
    body: Option<UpstreamBody>,
    chunked: bool,
    written: usize,
    /// A frame was taken from the body: it can no longer be sent elsewhere whole.
    took_frame: bool,
}

impl Sender {
    pub(super) fn new(head: Bytes, body: Option<UpstreamBody>, framing: RequestFraming) -> Self {
        let mut queue = Queue {
            bufs: Default::default(),
            len: 0,
        };
        queue.push(head);
        Sender {
            queue,
            body: body.filter(|_| framing != RequestFraming::Empty),
            chunked: framing == RequestFraming::Chunked,
            written: 0,
            took_frame: false,
        }
    }

    /// Bytes written so far.
    pub(super) fn written(&self) -> usize {
        self.written
    }

    /// True until a frame is taken from the body (or the body ended).
    pub(super) fn body_untouched(&self) -> bool {
        !self.took_frame
    }

    /// The body, if no frame of it was taken yet.
    pub(super) fn take_body(&mut self) -> Option<UpstreamBody> {
        self.body.take().filter(|_| !self.took_frame)
    }

    /// Ready when everything was written.
    pub(super) fn poll_send(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            // Take what the body has ready (the first frame rides with the head).
            let mut body_pending = false;
            if let Some(body) = &mut self.body {
                if self.queue.room() >= 3 {
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Pending => body_pending = true,
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(SendError::Client(e))),
                        Poll::Ready(Some(Ok(frame))) => {
                            self.took_frame = true;
                            self.queue_frame(frame);
                            continue;
                        }
                        Poll::Ready(None) => {
                            self.took_frame = true;
                            self.body = None;
                            if self.chunked {
                                self.queue.push(Bytes::from_static(b"0\r\n\r\n"));
                            }
                            continue;
                        }
                    }
                }
            }
            if self.queue.len == 0 {
                return if body_pending || self.body.is_some() {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(()))
                };
            }
            let slices: [IoSlice<'_>; 4] =
                std::array::from_fn(|i| IoSlice::new(&self.queue.bufs[i]));
            let n =
                match ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..self.queue.len]))
                {
                    Ok(0) => {
                        return Poll::Ready(Err(SendError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(SendError::Io(e))),
                };
            self.written += n;
            self.queue.advance(n);
        }
    }

    fn queue_frame(&mut self, frame: http_body::Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if self.chunked => {
                self.queue
                    .push(Bytes::from(format!("{:x}\r\n", data.len())));
                self.queue.push(data);
                self.queue.push(Bytes::from_static(b"\r\n"));
            }
            Ok(data) => self.queue.push(data),
            Err(frame) => {
                // Trailers: only a chunked body can carry them; they end it.
                if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                    let mut end = BytesMut::from(&b"0\r\n"[..]);
                    for (name, value) in &trailers {
                        end.extend_from_slice(name.as_str().as_bytes());
                        end.extend_from_slice(b": ");
                        end.extend_from_slice(value.as_bytes());
                        end.extend_from_slice(b"\r\n");
                    }
                    end.extend_from_slice(b"\r\n");
                    self.queue.push(end.freeze());
                    self.chunked = false; // the terminator is queued: none at the end
                }
            }
        }
    }
}
