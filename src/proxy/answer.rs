//! Every response interlock makes itself, in one place: errors (400, 405, 408, 413, 501,
//! 502, 503, 504), redirects, the answers to ACME HTTP-01 challenges. Every front-end (the
//! HTTP/1.1 fast path, hyper's HTTP/1.1, our HTTP/2 server) sends these; each is a short
//! `text/plain` body saying what happened, never a backend's page.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::error::ProxyError;

fn simple(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The answer to a request that failed with `e`: its status, a one-line text body, and
/// `Connection: close` where the rest of the request must not be read.
pub(super) fn error(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = simple(e.status(), e.body());
    if e.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A redirect to `location` (status 301, 302, 307 or 308 from the route's labels).
pub(super) fn redirect(status: u16, location: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    match HeaderValue::from_str(location) {
        Ok(loc) => {
            let mut resp = simple(status, format!("{} {}\n", status.as_u16(), location));
            resp.headers_mut().insert(header::LOCATION, loc);
            resp
        }
        Err(_) => error(&ProxyError::BadHost),
    }
}

/// The answer to a pending ACME HTTP-01 challenge: its key authorization (RFC 8555 §8.3).
pub(super) fn acme_challenge(key_authorization: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(key_authorization.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}
