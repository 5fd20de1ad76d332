//! The request body sent upstream: the client's streaming body (optionally capped at
//! `--max-body-bytes`), or nothing (a replayed idempotent request).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use thiserror::Error;

/// Body of a request forwarded upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body; `left` more bytes may pass, of `limit` (`u64::MAX`: no limit).
    Client {
        body: Incoming,
        left: u64,
        limit: u64,
    },
    Empty,
}

/// Why the client's body stopped: both are the client's doing, never the upstream's.
#[derive(Debug, Error)]
pub enum ClientBodyError {
    #[error("the request body was malformed or cut short: {0}")]
    Broken(#[source] hyper::Error),
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(u64),
}

impl UpstreamBody {
    /// The client's body, capped at `limit` bytes (`None`: no limit).
    pub fn client(body: Incoming, limit: Option<u64>) -> Self {
        let limit = limit.unwrap_or(u64::MAX);
        UpstreamBody::Client {
            body,
            left: limit,
            limit,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Client { body, left, limit } => {
                match std::task::ready!(Pin::new(body).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let n = data.len() as u64;
                            if n > *left {
                                return Poll::Ready(Some(Err(ClientBodyError::TooLarge(*limit))));
                            }
                            if *left != u64::MAX {
                                *left -= n;
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(ClientBodyError::Broken(e)))),
                    None => Poll::Ready(None),
                }
            }
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client { body, .. } => body.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client { body, .. } => body.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}
