//! Writing an HTTP/1.1 message to a socket: a head already encoded, then the body's frames
//! as they come, framed by length or chunked, with vectored writes (the first frame rides
//! with the head). Both directions use it: requests to upstreams
//! ([`crate::upstream::h1`]) and responses to clients ([`crate::proxy::fast_h1`]).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::io::AsyncWrite;

/// Why sending stopped.
#[derive(Debug)]
pub enum SendError<E> {
    /// The socket failed.
    Io(io::Error),
    /// The body being sent failed.
    Body(E),
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

/// Writes a head, then a body's frames as they come.
pub struct Sender<B> {
    queue: Queue,
    body: Option<B>,
    chunked: bool,
    /// Trailers are written (chunked bodies only); else they are dropped.
    trailers: bool,
    written: usize,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// A frame was taken from the body: it can no longer be sent elsewhere whole.
    took_frame: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Sender<B> {
    /// `head` is sent as is; `body` (if any) follows, chunked or as it comes (the head
    /// declared its length, or the connection closes after it).
    pub fn new(head: Bytes, body: Option<B>, chunked: bool) -> Self {
        let mut queue = Queue {
            bufs: Default::default(),
            len: 0,
        };
        queue.push(head);
        Sender {
            queue,
            body,
            chunked,
            trailers: true,
            written: 0,
            unflushed: false,
            took_frame: false,
        }
    }

    /// Drops the body's trailers instead of writing them.
    pub fn without_trailers(mut self) -> Self {
        self.trailers = false;
        self
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// True until a frame is taken from the body (or the body ended).
    pub fn body_untouched(&self) -> bool {
        !self.took_frame
    }

    /// The body, if no frame of it was taken yet.
    pub fn take_body(&mut self) -> Option<B> {
        self.body.take().filter(|_| !self.took_frame)
    }

    /// Ready when everything was written.
    pub fn poll_send<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError<B::Error>>> {
        loop {
            // Take what the body has ready (the first frame rides with the head).
            let mut body_pending = false;
            if let Some(body) = &mut self.body {
                if self.queue.room() >= 3 {
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Pending => body_pending = true,
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(SendError::Body(e))),
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
                // What was written leaves a buffering stream (TLS) before the body is
                // waited for, and at the end.
                if self.unflushed {
                    match Pin::new(&mut *io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Io(e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
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
            self.unflushed = true;
            self.queue.advance(n);
        }
    }

    fn queue_frame(&mut self, frame: Frame<Bytes>) {
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
                let Ok(trailers) = frame.into_trailers() else {
                    return;
                };
                if !self.chunked {
                    return;
                }
                let mut end = BytesMut::from(&b"0\r\n"[..]);
                if self.trailers {
                    for (name, value) in &trailers {
                        end.extend_from_slice(name.as_str().as_bytes());
                        end.extend_from_slice(b": ");
                        end.extend_from_slice(value.as_bytes());
                        end.extend_from_slice(b"\r\n");
                    }
                }
                end.extend_from_slice(b"\r\n");
                self.queue.push(end.freeze());
                self.chunked = false; // the terminator is queued: none at the end
            }
        }
    }
}
