//! Which fields a trailer section may carry on through the proxy (RFC 9110 §6.5.1): none
//! that frames the message (`Content-Length`, `Transfer-Encoding`, `Trailer`), routes it
//! (`Host`), modifies the request (conditionals, `Range`, `Expect`, `Cache-Control`, ...),
//! authenticates (`Authorization`, `Cookie`, `Set-Cookie`, ...), controls the response
//! (`Date`, `Location`, `Retry-After`, `Vary`, ...), tells how to process the content
//! (`Content-Type`, `Content-Encoding`, `Content-Range`), or belongs to one connection.
//! A recipient that merged such a trailer into the head would see a different message
//! than the one the proxy checked. They are dropped in both directions: the client's
//! trailers before they go upstream, an upstream's before they reach the client. gRPC's
//! `grpc-status` and `grpc-message`, and every other field, pass.

use http::header::{HeaderMap, HeaderName};

/// True when `name` may travel in a trailer section.
pub fn allowed(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        // Framing and routing.
        "content-length" | "transfer-encoding" | "trailer" | "host"
        // One connection's.
        | "connection" | "keep-alive" | "proxy-connection" | "te" | "upgrade"
        | "http2-settings"
        // Request modifiers: controls and conditionals.
        | "cache-control" | "expect" | "max-forwards" | "pragma" | "range"
        | "if-match" | "if-none-match" | "if-modified-since" | "if-unmodified-since"
        | "if-range"
        // Authentication and state.
        | "authorization" | "proxy-authorization" | "www-authenticate"
        | "proxy-authenticate" | "authentication-info" | "proxy-authentication-info"
        | "cookie" | "set-cookie"
        // Response control data.
        | "age" | "date" | "expires" | "location" | "retry-after" | "vary" | "warning"
        // How to process the content.
        | "content-encoding" | "content-type" | "content-range"
    )
}

/// `trailers` without the fields that may not travel in them; untouched (no copy) when
/// every field may.
pub fn filter(trailers: HeaderMap) -> HeaderMap {
    if trailers.keys().all(allowed) {
        return trailers;
    }
    let mut kept = HeaderMap::with_capacity(trailers.len());
    let mut name = None;
    for (n, value) in trailers {
        // A name comes once, before all of its values.
        if let Some(n) = n {
            name = Some(n);
        }
        if let Some(n) = name.as_ref().filter(|n| allowed(n)) {
            kept.append(n.clone(), value);
        }
    }
    kept
}

/// A body frame as it may be passed on: trailers filtered, data as is.
pub fn frame(frame: http_body::Frame<bytes::Bytes>) -> http_body::Frame<bytes::Bytes> {
    match frame.into_trailers() {
        Ok(trailers) => http_body::Frame::trailers(filter(trailers)),
        Err(frame) => frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_routing_and_auth_fields_are_dropped_others_pass() {
        let mut t = HeaderMap::new();
        for (n, v) in [
            ("grpc-status", "0"),
            ("content-length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("host", "evil.local"),
            ("x-checksum", "abc"),
            ("set-cookie", "a=1"),
            ("x-checksum", "def"),
            ("grpc-message", "ok"),
        ] {
            t.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let kept = filter(t);
        let names: Vec<_> = kept
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("grpc-status", "0"),
                ("x-checksum", "abc"),
                ("x-checksum", "def"),
                ("grpc-message", "ok")
            ]
        );
    }

    #[test]
    fn data_frames_pass_untouched() {
        let f = frame(http_body::Frame::data(bytes::Bytes::from_static(b"x")));
        assert_eq!(f.into_data().unwrap(), "x");
    }
}
