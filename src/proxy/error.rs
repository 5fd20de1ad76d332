//! Why a request could not be proxied, and the short, readable answer the client gets.

use http::StatusCode;
use thiserror::Error;

use crate::upstream::{ClientBodyError, ConnectError};

/// A failed request, with the status it maps to.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("the request has no valid Host")]
    BadHost,
    #[error("{0} is not allowed through this proxy")]
    MethodNotAllowed(http::Method),
    #[error("the route has no running endpoint")]
    NoEndpoint,
    #[error("upstream refused the connection")]
    Refused(#[source] ConnectError),
    #[error("upstream connection failed")]
    Connect(#[source] ConnectError),
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream connection failed mid-request")]
    Upstream(#[source] super::body::BoxError),
    #[error("upstream refused the protocol upgrade")]
    UpgradeRefused,
    #[error("the request body was malformed or cut short")]
    ClientBody(#[source] super::body::BoxError),
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("the request body sent nothing for {0:?}")]
    BodyStalled(std::time::Duration),
    #[error("transfer coding {0:?} is not supported; only chunked is")]
    UnknownCoding(String),
    #[error("the request body is chunked more than once")]
    ChunkedTwice,
    /// A defect of the proxy's own (a broken internal contract), answered instead of a
    /// panic that would take the connection's other requests down with it.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect(ConnectError::Timeout(_)) | ProxyError::Timeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::NoRoute | ProxyError::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadHost | ProxyError::ClientBody(_) | ProxyError::ChunkedTwice => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::UnknownCoding(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Refused(_)
            | ProxyError::Connect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpgradeRefused => StatusCode::BAD_GATEWAY,
        }
    }

    /// True when the client connection must close after this answer: the rest of the
    /// request (an unread or half-read body, tunnel bytes) must not be parsed as a next
    /// request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::MethodNotAllowed(_)
                | ProxyError::ClientBody(_)
                | ProxyError::BodyTooLarge(_)
                | ProxyError::UnknownCoding(_)
                | ProxyError::ChunkedTwice
        )
    }

    /// True when the upstream (not the client or the table) failed.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            ProxyError::Refused(_)
                | ProxyError::Connect(_)
                | ProxyError::Timeout
                | ProxyError::Upstream(_)
        )
    }

    /// The body sent to the client: status line text plus the reason, one line.
    pub fn body(&self) -> String {
        let status = self.status();
        format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self
        )
    }
}

impl From<ConnectError> for ProxyError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Refused(_) => ProxyError::Refused(e),
            _ => ProxyError::Connect(e),
        }
    }
}

impl From<ClientBodyError> for ProxyError {
    /// The client's body failed while it was sent upstream: 400, 408 or 413, never a 502.
    fn from(e: ClientBodyError) -> Self {
        match e {
            ClientBodyError::TooLarge(limit) => ProxyError::BodyTooLarge(limit),
            ClientBodyError::Stalled(after) => ProxyError::BodyStalled(after),
            ClientBodyError::Broken(e) => ProxyError::ClientBody(e),
        }
    }
}

impl ProxyError {
    /// hyper's error for a request sent to an h2c endpoint. hyper reports a failure of the
    /// request body (ours: [`crate::upstream::UpstreamBody`]) as a user error caused by that
    /// body's error: the client's fault (see the `From<ClientBodyError>` above). Anything
    /// else is the upstream's, handed back.
    pub fn from_send_error(e: hyper::Error) -> Result<ProxyError, hyper::Error> {
        let cause = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<ClientBodyError>());
        let body = match cause.filter(|_| e.is_user()) {
            None => return Err(e),
            Some(ClientBodyError::Broken(_)) => return Ok(ProxyError::ClientBody(e.into())),
            Some(ClientBodyError::TooLarge(limit)) => ClientBodyError::TooLarge(*limit),
            Some(ClientBodyError::Stalled(after)) => ClientBodyError::Stalled(*after),
        };
        Ok(body.into())
    }
}
