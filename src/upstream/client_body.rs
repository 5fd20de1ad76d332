//! The client's request body as a front-end received it: from hyper (HTTP/1.1 handed over
//! by the fast path) or from our HTTP/2 server's stream (`h2` directly). The HTTP/2 body
//! gives its bytes back to the client's flow-control window as they are taken, so a client
//! sends only as fast as the upstream reads.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Errors of a streamed body (hyper's, the `h2` crate's, ours): the crate's one alias.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's streaming request body.
#[derive(Debug)]
pub enum ClientBody {
    Hyper(Incoming),
    H2(H2Body),
}

/// An HTTP/2 request stream's body.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    /// Bytes still to come by the request's Content-Length (the `h2` crate holds the stream
    /// to it), `None` when it declared none.
    left: Option<u64>,
    data_done: bool,
}

impl ClientBody {
    /// The body of an HTTP/2 request whose fields are `fields`.
    pub fn h2(recv: h2::RecvStream, fields: &HeaderMap) -> Self {
        let left = if recv.is_end_stream() {
            Some(0)
        } else {
            fields
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        ClientBody::H2(H2Body {
            recv,
            left,
            data_done: false,
        })
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::H2(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::H2(b) => b.left.map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl H2Body {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: the client may send as much again.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM(NO_ERROR): the client needs no more of the answer's wait for
                // its body (RFC 9113 §8.1): the body ends here.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(None)
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }
}
