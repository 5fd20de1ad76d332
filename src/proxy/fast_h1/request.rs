//! A client's request head as the fast path reads it: parsed in place by httparse, kept as
//! offsets into the connection's read buffer (nothing copied, no field map), and sorted
//! into "plain" (ours) or anything else (hyper's).

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::upstream::h1::parse_length;

/// Most fields a head may have on the fast path (more go to hyper, which applies the
/// configured limit).
pub(crate) const MAX_FIELDS: usize = 128;

/// A plain request head: HTTP/1.1, origin-form target, one Host field, no body or one of
/// a single `Content-Length`, no upgrade, no `Expect`. Everything else (chunked bodies,
/// HTTP/1.0, upgrades, malformed or oversized heads, HTTP/2) is hyper's.
#[derive(Default)]
pub(crate) struct Head {
    /// Length of the head in the buffer.
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub host: Range<usize>,
    /// Name and value of each field, in order (released between requests).
    pub fields: Vec<(Range<usize>, Range<usize>)>,
    /// Bytes the fields take (for sizing what is written from them).
    pub fields_len: usize,
    /// The client asked to close after this request (`Connection: close`).
    pub close: bool,
    /// The client takes trailers (`TE: trailers`).
    pub trailers: bool,
    /// The body's length (`Content-Length`; 0 without one).
    pub body_len: u64,
}

/// What the buffer holds.
pub(crate) enum Parsed {
    /// A plain head, read whole.
    Plain,
    /// Not all of a head yet.
    Partial,
    /// A head (or bytes) for hyper.
    Other,
}

impl Head {
    /// Parses the head at the start of `buf` into `self` (its field list reused).
    pub(crate) fn parse(&mut self, buf: &[u8], max_fields: usize) -> Parsed {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut slots[..max_fields.min(MAX_FIELDS)])
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Other;
        };
        if !plain_method(method) || !origin_form(target.as_bytes()) {
            return Parsed::Other;
        }
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - buf.as_ptr() as usize;
            start..start + s.len()
        };
        self.len = len;
        self.method = at(method.as_bytes());
        self.target = at(target.as_bytes());
        self.fields.clear();
        // One allocation (the list is released while the connection waits).
        self.fields.reserve(req.headers.len());
        self.fields_len = 0;
        self.close = false;
        self.trailers = false;
        self.body_len = 0;
        let mut hosts = 0;
        let mut lengths = 0;
        for field in req.headers.iter() {
            let (name, value) = (field.name.as_bytes(), field.value);
            match name.len() {
                2 if name.eq_ignore_ascii_case(b"te") => {
                    self.trailers = value.eq_ignore_ascii_case(b"trailers");
                }
                4 if name.eq_ignore_ascii_case(b"host") => {
                    hosts += 1;
                    self.host = at(value);
                }
                6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::Other,
                7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::Other,
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            self.close = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            return Parsed::Other;
                        }
                    }
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    // One field of digits only: lists, signs and repeats are hyper's.
                    match parse_length(value) {
                        Some(n) if lengths == 0 => self.body_len = n,
                        _ => return Parsed::Other,
                    }
                    lengths += 1;
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::Other,
                _ => {}
            }
            self.fields_len += name.len() + value.len() + 4;
            self.fields.push((at(name), at(value)));
        }
        if hosts != 1 {
            return Parsed::Other;
        }
        Parsed::Plain
    }
}

pub(crate) use crate::upstream::h1::may_end_head;

/// Longest request target hyper takes (it answers 414 past it): the same limit here.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Methods answered on the fast path: CONNECT and TRACE are refused, by hyper's path.
fn plain_method(method: &str) -> bool {
    !matches!(method, "CONNECT" | "TRACE")
}

/// An origin-form target (`/path?query`) of bytes any URI parser takes (those the `http`
/// crate accepts in a path, without `#`; `"` only before the query, as `http` takes it):
/// anything else is hyper's to judge.
fn origin_form(target: &[u8]) -> bool {
    let query = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    target.first() == Some(&b'/')
        && target.len() <= MAX_TARGET
        && target.iter().enumerate().all(|(i, &b)| {
            matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x5F | 0x61..=0x7A | 0x7C | 0x7E)
                || (b == b'"' && i < query)
                || b == b'{'
                || b == b'}'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> (Parsed, Head) {
        let mut head = Head::default();
        let parsed = head.parse(raw.as_bytes(), 100);
        (parsed, head)
    }

    #[test]
    fn a_plain_get_is_read_in_place() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\nTE: trailers\r\nx-a: 1\r\n\r\nNEXT";
        let (parsed, head) = parse(raw);
        assert!(matches!(parsed, Parsed::Plain));
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(&raw[head.method.clone()], "GET");
        assert_eq!(&raw[head.target.clone()], "/a?b=1");
        assert_eq!(&raw[head.host.clone()], "app.local");
        assert!(head.close && head.trailers && head.body_len == 0);
        assert_eq!(head.fields.len(), 4);
        let (n, v) = head.fields[3].clone();
        assert_eq!((&raw[n], &raw[v]), ("x-a", "1"));
    }

    #[test]
    fn only_an_empty_line_may_end_a_head() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n";
        assert!(!may_end_head(head, 0));
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // The end straddles what was scanned and what came after.
        for from in 0..whole.len() {
            assert!(may_end_head(whole, from), "{from}");
        }
        assert!(may_end_head(b"GET / HTTP/1.1\nHost: a\n\n", 20));
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: a\r\nX: \r", 0));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n").0,
            Parsed::Partial
        ));
        assert!(matches!(parse("PRI * HTT").0, Parsed::Partial));
    }

    #[test]
    fn everything_else_is_hyper_s() {
        for raw in [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /<x> HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /#f HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nx-a: 1\r\n  folded\r\n\r\n",
            // hyper refuses a `"` in the query (400): found by fuzz/request_differential.
            "GET /a?b\"c HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(parse(raw).0, Parsed::Other), "{raw:?}");
        }
    }

    #[test]
    fn quotes_and_braces_in_the_path_stay_plain() {
        let (parsed, head) = parse("GET /a\"{b}?c={d} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(parsed, Parsed::Plain));
        assert_eq!(head.target, 4..16);
    }

    #[test]
    fn a_body_of_one_length_stays_plain() {
        let (parsed, head) = parse("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(parsed, Parsed::Plain));
        assert_eq!(head.body_len, 0);
        let (parsed, head) = parse("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 05\r\n\r\nhe");
        assert!(matches!(parsed, Parsed::Plain));
        assert_eq!(head.body_len, 5);
    }

    #[test]
    fn too_many_fields_are_hyper_s() {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..10 {
            raw.push_str(&format!("x-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        let mut head = Head::default();
        assert!(matches!(head.parse(raw.as_bytes(), 5), Parsed::Other));
        assert!(matches!(head.parse(raw.as_bytes(), 11), Parsed::Plain));
    }
}
