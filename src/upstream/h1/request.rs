//! The request side: the head as bytes (kept, so that a replay sends the same bytes), the
//! body's framing, and the sender that writes head and body frames with vectored writes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::request::Parts;
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
    Length,
    /// `Transfer-Encoding: chunked` (the length is not known up front).
    Chunked,
}

/// Decides the framing of a body (`end_stream`: known to be empty; `exact`: its length
/// when known) and makes the fields say so. `Transfer-Encoding` was removed as a hop-by-hop
/// field already; a chunked body never keeps a `Content-Length` beside it (that pair is the
/// classic request-smuggling confusion).
pub fn frame_request(parts: &mut Parts, end_stream: bool, exact: Option<u64>) -> RequestFraming {
    if end_stream {
        // A method that usually carries a body says it has none (as hyper and curl do).
        let expects_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
        if expects_body && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        return RequestFraming::Empty;
    }
    match exact {
        Some(n) => {
            if parts.headers.get(header::CONTENT_LENGTH).is_none() {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            RequestFraming::Length
        }
        None => {
            parts.headers.remove(header::CONTENT_LENGTH);
            RequestFraming::Chunked
        }
    }
}

/// The request line and fields, as sent: `METHOD target HTTP/1.1`, the fields in order,
/// `Transfer-Encoding: chunked` when the body is chunked. Values were validated by `http`
/// (no CR or LF), so nothing in a request can add a line.
pub fn encode_head(parts: &Parts, framing: RequestFraming) -> Bytes {
    const CHUNKED: &[u8] = b"transfer-encoding: chunked\r\n";
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut buf = BytesMut::with_capacity(
        parts.method.as_str().len() + target.len() + 12 + fields + CHUNKED.len() + 2,
    );
    buf.extend_from_slice(parts.method.as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if framing == RequestFraming::Chunked {
        buf.extend_from_slice(CHUNKED);
    }
    buf.extend_from_slice(b"\r\n");
    buf.freeze()
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
