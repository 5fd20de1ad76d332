//! The response body sent to clients: an upstream body streamed through (an HTTP/1.1
//! upstream's connection returns to its pool when the body ends, see
//! [`crate::upstream::h1::ResponseBody`]), or a small body made by the proxy itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::h1;
use crate::upstream::ActiveGuard;

/// Errors of a streamed body, whichever protocol it came from (one alias for the crate,
/// defined where the client's body is).
pub use crate::upstream::BoxError;

/// Body of a response to a client.
pub enum ProxyBody {
    /// From an HTTP/1.1 upstream; the guard counts the request in flight until the end.
    H1(h1::ResponseBody, ActiveGuard),
    /// From an h2c upstream's shared connection.
    H2(Incoming, ActiveGuard),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            // An upstream's trailers lose the fields no trailer may carry.
            ProxyBody::H1(b, _) => Pin::new(b)
                .poll_frame(cx)
                .map_ok(crate::trailers::frame)
                .map_err(Into::into),
            ProxyBody::H2(b, _) => Pin::new(b)
                .poll_frame(cx)
                .map_ok(crate::trailers::frame)
                .map_err(Into::into),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::H1(b, _) => b.is_end_stream(),
            ProxyBody::H2(b, _) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::H1(b, _) => b.size_hint(),
            ProxyBody::H2(b, _) => b.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
