//! Header rules of a forwarding proxy: hop-by-hop fields are removed in both directions
//! (RFC 9110 §7.6.1), and the request gains `X-Forwarded-For/-Host/-Proto` and `X-Real-IP`
//! ([`upstream_fields`], for both upstream protocols).

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
/// Settings of an `Upgrade: h2c` (RFC 7540 §3.2.1): connection-specific by definition.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// True when the request asks for a protocol upgrade (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade`) that is forwarded. An `Upgrade` that offers `h2c` is declined whole (a
/// server may always ignore `Upgrade`, RFC 9110 §7.8): forwarded, a backend's 101 would
/// turn the connection into a raw tunnel past routing and the `X-Forwarded-*` fields. The
/// request then goes on as plain HTTP/1.1, without its `Upgrade` and `HTTP2-Settings`.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_has(headers, "upgrade")
        && !offers_h2c(headers)
}

/// Checks a request's `Transfer-Encoding` (RFC 9112 §6.1): `chunked` is the one coding a
/// proxy must know, and it may be applied once. Any other coding (`identity`, `gzip`, a
/// coding with parameters) is answered 501, `chunked` twice 400; both close the
/// connection, as the body's end cannot be trusted. (A list not ending in `chunked` is
/// hyper's 400 before it gets here.)
pub fn check_transfer_coding(headers: &HeaderMap) -> Result<(), super::error::ProxyError> {
    use super::error::ProxyError;
    let mut chunked = 0;
    let mut unknown = None;
    let codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    for coding in codings {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else if unknown.is_none() {
            unknown = Some(String::from_utf8_lossy(coding).into_owned());
        }
    }
    match (chunked, unknown) {
        (2.., _) => Err(ProxyError::ChunkedTwice),
        (_, Some(coding)) => Err(ProxyError::UnknownCoding(coding)),
        _ => Ok(()),
    }
}

/// True when an `Upgrade` field lists `h2c` (RFC 7540 §3.2, HTTP/2 over cleartext by
/// upgrade, which a proxy in front of other servers must not pass on).
fn offers_h2c(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
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
    is_hop_by_hop_name(name.as_str().as_bytes())
}

/// The same, for a name as bytes (any case): one list of names, in [`kind`].
fn is_hop_by_hop_name(name: &[u8]) -> bool {
    matches!(
        kind(name),
        Kind::Connection | Kind::HopByHop | Kind::Te | Kind::Upgrade
    )
}

/// Removes a response's hop-by-hop fields, including those its `Connection` field names.
/// (A request's fields go through [`upstream_fields`], which applies the same rules.)
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The usual message has none of them: one pass over its few names instead of a hash
    // lookup per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
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
            headers.remove(&name);
        }
    }
    for name in HOP_BY_HOP
        .iter()
        .chain([&KEEP_ALIVE, &PROXY_CONNECTION, &HTTP2_SETTINGS])
    {
        headers.remove(name);
    }
}

/// A response's fields without the hop-by-hop ones, including those its `Connection`
/// field names: [`strip_hop_by_hop`] for fields as bytes (the HTTP/1.1 fast path relays an
/// upstream's fields without building a field map).
pub fn end_to_end<'f>(
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
) -> impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone {
    let connection = fields.clone().filter(|(n, _)| kind(n) == Kind::Connection);
    let has_connection = connection.clone().next().is_some();
    fields.filter(move |&(name, _)| {
        let hop = is_hop_by_hop_name(name);
        let listed = || {
            connection.clone().any(|(_, v)| {
                v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
            })
        };
        !(hop || has_connection && listed())
    })
}

/// What the proxy knows about the client, rendered once per connection.
#[derive(Clone)]
pub struct ClientInfo {
    /// The peer's IP as a header value.
    pub ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
}

/// The peer's IP as a field value, as `Display` writes it. An IPv4 address is written here
/// digit by digit: through `Display` and a `String` it cost a new connection over a
/// thousand instructions (about 6% of a request on a connection of its own).
pub fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or(HeaderValue::from_static("unknown"))
}

/// What [`upstream_fields`] hands its fields to.
pub trait FieldSink<N, V> {
    /// One of the client's fields, passed on as it came.
    fn pass(&mut self, name: N, value: V);
    /// The routed host, under `Host` first and `X-Forwarded-Host` last.
    fn host(&mut self, name: &'static HeaderName, value: V);
    /// A field the proxy made (`X-Forwarded-For`, `X-Real-IP`, ...).
    fn add(&mut self, name: &'static HeaderName, value: &HeaderValue);
}

/// The request fields the forwarding rules care about, told apart by name (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    /// Hop-by-hop fields other than `Connection`, `TE` and `Upgrade`.
    HopByHop,
    Te,
    Upgrade,
    Host,
    ContentLength,
    ForwardedFor,
    ForwardedHost,
    /// `X-Real-IP` and `X-Forwarded-Proto`: the proxy's to set.
    Replaced,
    Other,
}

/// The kind of a field name: its length picks the few names it could be.
fn kind(name: &[u8]) -> Kind {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if is("te") => Kind::Te,
        4 if is("host") => Kind::Host,
        7 if is("upgrade") => Kind::Upgrade,
        9 if is("x-real-ip") => Kind::Replaced,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        14 if is("content-length") => Kind::ContentLength,
        14 if is("http2-settings") => Kind::HopByHop,
        15 if is("x-forwarded-for") => Kind::ForwardedFor,
        16 if is("proxy-connection") => Kind::HopByHop,
        16 if is("x-forwarded-host") => Kind::ForwardedHost,
        17 if is("transfer-encoding") => Kind::HopByHop,
        17 if is("x-forwarded-proto") => Kind::Replaced,
        18 if is("proxy-authenticate") => Kind::HopByHop,
        _ => Kind::Other,
    }
}

/// The fields a request carries upstream, in order, handed to `sink`: Host (the one the
/// request was routed by), the client's fields without the hop-by-hop ones (RFC 9110
/// §7.6.1: also those the Connection field names; `TE: trailers` stays for gRPC, the
/// `Upgrade` pair with `upgrade`) and without Content-Length (framing is the sender's),
/// then `X-Forwarded-For` (the client's chain plus its address), `X-Real-IP`,
/// `X-Forwarded-Proto` and `X-Forwarded-Host`. One pass, no field map built: the same
/// rules serve a parsed field map (hyper's requests, the h2c path) and raw fields (the
/// HTTP/1.1 fast path, [`super::server`]). Returns whether the client sent a
/// Content-Length.
pub fn upstream_fields<N, V, I>(
    fields: impl Fn() -> I,
    host: Option<V>,
    client: &ClientInfo,
    upgrade: bool,
    sink: &mut impl FieldSink<N, V>,
) -> bool
where
    N: AsRef<[u8]> + Copy,
    V: AsRef<[u8]> + Copy,
    I: Iterator<Item = (N, V)>,
{
    if let Some(h) = host {
        sink.host(&header::HOST, h);
    }
    let connection = || fields().filter(|(n, _)| kind(n.as_ref()) == Kind::Connection);
    let has_connection = connection().next().is_some();
    let listed = |name: &[u8]| {
        connection().any(|(_, v)| {
            v.as_ref()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
        })
    };
    let mut prior_xff: Option<V> = None;
    let mut had_length = false;
    for (name, value) in fields() {
        let keep = match kind(name.as_ref()) {
            Kind::Connection | Kind::HopByHop => false,
            Kind::Te => value.as_ref().eq_ignore_ascii_case(b"trailers"),
            Kind::Upgrade => upgrade,
            Kind::Host => false,
            Kind::ContentLength => {
                had_length = true;
                false
            }
            Kind::ForwardedFor => {
                if !(has_connection && listed(name.as_ref())) {
                    prior_xff.get_or_insert(value);
                }
                false
            }
            Kind::ForwardedHost => host.is_none() && !(has_connection && listed(name.as_ref())),
            Kind::Replaced => false,
            Kind::Other => !(has_connection && listed(name.as_ref())),
        };
        if keep {
            sink.pass(name, value);
        }
    }
    let chain = prior_xff.and_then(|prev| {
        let prev = prev.as_ref();
        let mut v = Vec::with_capacity(prev.len() + 2 + client.ip.len());
        v.extend_from_slice(prev);
        v.extend_from_slice(b", ");
        v.extend_from_slice(client.ip.as_bytes());
        HeaderValue::from_bytes(&v).ok()
    });
    sink.add(&X_FORWARDED_FOR, chain.as_ref().unwrap_or(&client.ip));
    sink.add(&X_REAL_IP, &client.ip);
    sink.add(&X_FORWARDED_PROTO, &client.proto);
    if let Some(h) = host {
        sink.host(&X_FORWARDED_HOST, h);
    }
    if upgrade {
        sink.add(&header::CONNECTION, &HeaderValue::from_static("upgrade"));
    }
    had_length
}

impl<N: AsRef<[u8]>, V: AsRef<[u8]>> FieldSink<N, V> for HeadWriter {
    fn pass(&mut self, name: N, value: V) {
        self.field(name.as_ref(), value.as_ref());
    }

    fn host(&mut self, name: &'static HeaderName, value: V) {
        self.field(name.as_str().as_bytes(), value.as_ref());
    }

    fn add(&mut self, name: &'static HeaderName, value: &HeaderValue) {
        self.field(name.as_str().as_bytes(), value.as_bytes());
    }
}

impl<'a> FieldSink<&'a HeaderName, &'a HeaderValue> for HeaderMap {
    fn pass(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        self.append(name.clone(), value.clone());
    }

    fn host(&mut self, name: &'static HeaderName, value: &'a HeaderValue) {
        self.append(name.clone(), value.clone());
    }

    fn add(&mut self, name: &'static HeaderName, value: &HeaderValue) {
        self.append(name.clone(), value.clone());
    }
}

/// The head of a request to an HTTP/1.1 endpoint: [`upstream_fields`] written straight
/// into the head, then the body's framing. `fields_len` is about how many bytes the
/// client's fields take.
#[allow(clippy::too_many_arguments)]
pub fn upstream_head<N, V, I>(
    method: &str,
    target: &str,
    fields: impl Fn() -> I,
    fields_len: usize,
    host: Option<V>,
    client: &ClientInfo,
    upgrade: bool,
    framing: RequestFraming,
) -> bytes::Bytes
where
    N: AsRef<[u8]> + Copy,
    V: AsRef<[u8]> + Copy,
    I: Iterator<Item = (N, V)>,
{
    let mut w = HeadWriter::new(method, target, fields_len + 160);
    let had_length = upstream_fields(fields, host, client, upgrade, &mut w);
    // An empty body is declared as such where the client did, or where the method
    // usually carries one (as hyper and curl do).
    let declared_empty = had_length || matches!(method, "POST" | "PUT" | "PATCH");
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
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn fast_path_knows_every_hop_by_hop_name() {
        for name in HOP_BY_HOP
            .iter()
            .chain([&KEEP_ALIVE, &PROXY_CONNECTION, &HTTP2_SETTINGS])
        {
            assert!(is_hop_by_hop(name), "{name}");
            let mut h = map(&[(name.as_str(), "x"), ("x-kept", "yes")]);
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{h:?}");
        }
        let mut h = map(&[("host", "a"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn raw_response_fields_lose_the_same_hop_by_hop_fields() {
        let fields: [(&[u8], &[u8]); 7] = [
            (b"Connection", b"keep-alive, X-Secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"x-secret", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Content-Type", b"text/plain"),
            (b"X-Kept", b"yes"),
        ];
        let kept: Vec<_> = end_to_end(fields.into_iter()).map(|(n, _)| n).collect();
        assert_eq!(kept, [&b"Content-Type"[..], b"X-Kept"]);
        let plain: [(&[u8], &[u8]); 1] = [(b"x-secret", b"1")];
        assert_eq!(end_to_end(plain.into_iter()).count(), 1);
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ])));
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
    }

    #[test]
    fn forwarded_fields_append_to_existing_chain() {
        let client = ClientInfo {
            ip: HeaderValue::from_static("10.0.0.9"),
            proto: HeaderValue::from_static("http"),
        };
        let (parts, ()) = http::Request::get("/")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-host", "spoofed")
            .body(())
            .unwrap()
            .into_parts();
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("app.local");
        upstream_fields(|| parts.headers.iter(), Some(&host), &client, false, &mut h);
        assert_eq!(h["host"], "app.local");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h.get_all("x-forwarded-host").iter().collect::<Vec<_>>(),
            ["app.local"]
        );
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
        let len = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        let head = upstream_head(
            parts.method.as_str(),
            &target,
            || parts.headers.iter(),
            len,
            host.as_ref(),
            &client,
            upgrade,
            framing,
        );
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

    #[test]
    fn ip_values_read_as_display_writes_them() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let edges = [0u8, 1, 9, 10, 11, 99, 100, 101, 199, 200, 254, 255];
        for &a in &edges {
            for &b in &edges {
                let v4 = IpAddr::V4(Ipv4Addr::new(a, b, b, a));
                assert_eq!(ip_value(v4).to_str().unwrap(), v4.to_string());
            }
        }
        for ip in [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            "2001:db8::1".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
        ] {
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }
}
