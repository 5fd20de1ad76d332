//! Header rules of a forwarding proxy: hop-by-hop fields are removed in both directions
//! (RFC 9110 §7.6.1), and the request gains `X-Forwarded-For/-Host/-Proto` and `X-Real-IP`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::upstream::h1::{HeadWriter, RequestFraming};

/// Fields that describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::PROXY_AUTHENTICATE,
];
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// True when the request asks for a protocol upgrade (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// True for the names [`strip_hop_by_hop`] removes on sight (not counting those a
/// `Connection` field lists: those need a `Connection` field, which is one of these).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::TE
        || *name == header::PROXY_AUTHENTICATE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Removes hop-by-hop fields, including those the `Connection` field names. With `upgrade`,
/// keeps `Upgrade` and sets `Connection: upgrade`. `TE: trailers` survives (gRPC).
/// Returns true when it removed or replaced a field (false: the fields are unchanged,
/// apart from the `Connection: upgrade` it adds with `upgrade`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) -> bool {
    // The usual message has none of them: one pass over its few names instead of a hash
    // lookup per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return false;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(upgrade && name == header::UPGRADE) && name != header::TE {
                headers.remove(&name);
            }
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        if upgrade && *name == header::UPGRADE {
            continue;
        }
        if te_trailers && *name == header::TE {
            continue;
        }
        headers.remove(name);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    true
}

/// What the proxy knows about the client, rendered once per connection.
#[derive(Clone)]
pub struct ClientInfo {
    /// The peer's IP as a header value.
    pub ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
}

/// Adds the forwarding fields. `host` is the Host the client asked for.
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientInfo, host: Option<HeaderValue>) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| client.ip.clone())
        }
        None => client.ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_REAL_IP.clone(), client.ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), client.proto.clone());
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
}

/// The head of a request to an HTTP/1.1 endpoint, written straight from the client's
/// fields in one pass (no field map is rebuilt): the same rules as [`strip_hop_by_hop`]
/// and [`add_forwarded`] on a map. `host`: the Host the request was routed by, sent first;
/// `upgrade`: keep the `Upgrade` pair.
pub fn upstream_head(
    parts: &http::request::Parts,
    target: &str,
    host: Option<&HeaderValue>,
    client: &ClientInfo,
    upgrade: bool,
    framing: RequestFraming,
) -> bytes::Bytes {
    let headers = &parts.headers;
    // One pass for the size, and whether a Connection field names more fields to drop
    // (no hash lookup).
    let mut fields = 0;
    let mut has_connection = false;
    for (name, value) in headers {
        fields += name.as_str().len() + value.len() + 4;
        has_connection |= *name == header::CONNECTION;
    }
    let mut w = HeadWriter::new(&parts.method, target, fields + 160);
    if let Some(h) = host {
        w.field(b"host", h.as_bytes());
    }
    let listed = |name: &HeaderName| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
    };
    let mut prior_xff: Option<&HeaderValue> = None;
    let mut had_length = false;
    for (name, value) in headers {
        if is_hop_by_hop(name) {
            let keep = (*name == header::TE && value.as_bytes().eq_ignore_ascii_case(b"trailers"))
                || (upgrade && *name == header::UPGRADE);
            if keep {
                w.field(name.as_str().as_bytes(), value.as_bytes());
            }
            continue;
        }
        if *name == header::HOST || *name == header::CONTENT_LENGTH {
            had_length |= *name == header::CONTENT_LENGTH;
            continue;
        }
        if has_connection && listed(name) {
            continue;
        }
        if *name == X_FORWARDED_FOR {
            prior_xff.get_or_insert(value);
            continue;
        }
        if *name == X_REAL_IP
            || *name == X_FORWARDED_PROTO
            || (*name == X_FORWARDED_HOST && host.is_some())
        {
            continue;
        }
        w.field(name.as_str().as_bytes(), value.as_bytes());
    }
    match prior_xff {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.ip.as_bytes());
            w.field(X_FORWARDED_FOR.as_str().as_bytes(), &v);
        }
        None => w.field(X_FORWARDED_FOR.as_str().as_bytes(), client.ip.as_bytes()),
    }
    w.field(X_REAL_IP.as_str().as_bytes(), client.ip.as_bytes());
    w.field(
        X_FORWARDED_PROTO.as_str().as_bytes(),
        client.proto.as_bytes(),
    );
    if let Some(h) = host {
        w.field(X_FORWARDED_HOST.as_str().as_bytes(), h.as_bytes());
    }
    if upgrade {
        w.field(b"connection", b"upgrade");
    }
    // An empty body is declared as such where the client did, or where the method
    // usually carries one (as hyper and curl do).
    let declared_empty = had_length
        || matches!(
            parts.method,
            http::Method::POST | http::Method::PUT | http::Method::PATCH
        );
    w.finish(framing, declared_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn strips_standard_and_connection_listed_fields() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn fast_path_knows_every_hop_by_hop_name() {
        for name in HOP_BY_HOP.iter().chain([&KEEP_ALIVE, &PROXY_CONNECTION]) {
            assert!(is_hop_by_hop(name), "{name}");
            let mut h = map(&[(name.as_str(), "x"), ("x-kept", "yes")]);
            assert!(strip_hop_by_hop(&mut h, false));
            assert_eq!(h.len(), 1, "{h:?}");
        }
        let mut h = map(&[("host", "a"), ("x-kept", "yes")]);
        assert!(!strip_hop_by_hop(&mut h, false));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn upgrade_keeps_upgrade_pair_and_te_trailers_survives() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn forwarded_fields_append_to_existing_chain() {
        let client = ClientInfo {
            ip: HeaderValue::from_static("10.0.0.9"),
            proto: HeaderValue::from_static("http"),
        };
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        add_forwarded(&mut h, &client, Some(HeaderValue::from_static("app.local")));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.local");
    }

    fn head_of(
        req: http::Request<()>,
        host: Option<&str>,
        upgrade: bool,
        framing: RequestFraming,
    ) -> String {
        let client = ClientInfo {
            ip: HeaderValue::from_static("10.0.0.9"),
            proto: HeaderValue::from_static("http"),
        };
        let (parts, ()) = req.into_parts();
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        let target = parts.uri.path_and_query().unwrap().as_str().to_string();
        let head = upstream_head(&parts, &target, host.as_ref(), &client, upgrade, framing);
        String::from_utf8(head.to_vec()).unwrap()
    }

    #[test]
    fn upstream_head_follows_the_map_rules() {
        let req = http::Request::get("/a?b=1")
            .header("host", "app.local")
            .header("connection", "keep-alive, x-secret")
            .header("keep-alive", "timeout=5")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8")
            .header("x-real-ip", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("content-length", "0")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let head = head_of(req, Some("app.local"), false, RequestFraming::Empty);
        assert_eq!(
            head,
            "GET /a?b=1 HTTP/1.1\r\nhost: app.local\r\nte: trailers\r\naccept: */*\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-real-ip: 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app.local\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn upstream_head_frames_bodies_and_upgrades() {
        let post = || {
            http::Request::post("/up")
                .header("transfer-encoding", "chunked")
                .body(())
                .unwrap()
        };
        let head = head_of(post(), None, false, RequestFraming::Chunked);
        assert!(
            head.ends_with("x-forwarded-proto: http\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        assert_eq!(head.matches("chunked").count(), 1, "{head}");
        let head = head_of(post(), None, false, RequestFraming::Length(42));
        assert!(
            head.ends_with("content-length: 42\r\n\r\n") && !head.contains("chunked"),
            "{head}"
        );
        let head = head_of(post(), None, false, RequestFraming::Empty);
        assert!(head.ends_with("content-length: 0\r\n\r\n"), "{head}");
        let ws = http::Request::get("/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "k")
            .body(())
            .unwrap();
        let head = head_of(ws, Some("a"), true, RequestFraming::Empty);
        assert!(
            head.contains("upgrade: websocket\r\n") && head.contains("connection: upgrade\r\n"),
            "{head}"
        );
        assert!(
            head.contains("sec-websocket-key: k\r\n") && !head.contains("content-length"),
            "{head}"
        );
    }
}
