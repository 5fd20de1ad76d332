//! The response body sent to clients: an upstream body streamed through (its connection
//! returns to the pool once the body ended), or a small body made by the proxy itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::{ActiveGuard, PooledConn, Upstream};

/// Body of a response to a client.
pub enum ProxyBody {
    Upstream(UpstreamResponse),
    Full(Option<Bytes>),
}

/// A streamed upstream response and what must happen when it ends.
pub struct UpstreamResponse {
    inner: Incoming,
    conn: Option<PooledConn>,
    upstream: Arc<Upstream>,
    ended: bool,
    _active: ActiveGuard,
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn upstream(
        inner: Incoming,
        conn: Option<PooledConn>,
        upstream: Arc<Upstream>,
        active: ActiveGuard,
    ) -> Self {
        ProxyBody::Upstream(UpstreamResponse {
            ended: inner.is_end_stream(),
            inner,
            conn,
            upstream,
            _active: active,
        })
    }
}

impl Drop for UpstreamResponse {
    fn drop(&mut self) {
        // Only a connection whose response was read to the end can carry another request.
        if self.ended || self.inner.is_end_stream() {
            if let Some(conn) = self.conn.take() {
                conn.release(&self.upstream);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(u) => {
                let res = Pin::new(&mut u.inner).poll_frame(cx);
                if let Poll::Ready(None) = res {
                    u.ended = true;
                }
                res
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(u) => u.ended || u.inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(u) => u.inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
