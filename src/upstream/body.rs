//! The request body sent upstream: the client's streaming body (capped at
//! `--max-body-bytes`, cut when it stalls for `--body-read-timeout`), or a small body the
//! HTTP/1.1 fast path read whole.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use thiserror::Error;
use tokio::time::{Instant, Sleep};

use super::client_body::{BoxError, ClientBody};

/// Body of a request forwarded upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body; `left` more bytes may pass, of `limit` (`u64::MAX`: no limit).
    Client {
        body: ClientBody,
        left: u64,
        limit: u64,
        stall: Stall,
    },
    /// A body read whole before forwarding (`None` once taken).
    Buffered(Option<Bytes>),
}

/// Why the client's body stopped: both are the client's doing, never the upstream's.
#[derive(Debug, Error)]
pub enum ClientBodyError {
    #[error("the request body was malformed or cut short: {0}")]
    Broken(#[source] BoxError),
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the request body stalled: no byte for {0:?}")]
    Stalled(Duration),
}

/// The stalled-body guard: a timer armed the first time the client's body makes the
/// upstream wait, pushed back by every frame (a body that streams steadily never waits on
/// it; one that never waits never allocates it).
#[derive(Debug)]
pub struct Stall {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl UpstreamBody {
    /// The client's body, capped at `limit` bytes (`None`: no limit), cut when no byte
    /// arrives for `stall`.
    pub fn client(body: ClientBody, limit: Option<u64>, stall: Duration) -> Self {
        let limit = limit.unwrap_or(u64::MAX);
        UpstreamBody::Client {
            body,
            left: limit,
            limit,
            stall: Stall {
                timeout: stall,
                timer: None,
            },
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
            UpstreamBody::Client {
                body,
                left,
                limit,
                stall,
            } => {
                let polled = Pin::new(body).poll_frame(cx);
                if polled.is_pending() {
                    let timeout = stall.timeout;
                    let timer = stall
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(ClientBodyError::Stalled(timeout))));
                    }
                    return Poll::Pending;
                }
                if let Some(timer) = &mut stall.timer {
                    timer.as_mut().reset(Instant::now() + stall.timeout);
                }
                match std::task::ready!(polled) {
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
                        Poll::Ready(Some(Ok(crate::trailers::frame(frame))))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(ClientBodyError::Broken(e)))),
                    None => Poll::Ready(None),
                }
            }
            UpstreamBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client { body, .. } => body.is_end_stream(),
            UpstreamBody::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client { body, .. } => body.size_hint(),
            UpstreamBody::Buffered(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
