//! A response's head as the fast path writes it: status line, the fields (an upstream's as
//! they came, the proxy's own in lowercase), `Date` when the answer has none, the body's
//! framing and `Connection: close` when the connection ends after it.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use http::StatusCode;

/// How the body follows the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body may follow (HEAD, 1xx, 204, 304): the fields go as they are.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    /// The framing of an answer with `status` to a request (`head_request`: HEAD), whose
    /// body is `exact` bytes long if known.
    pub(super) fn of(status: StatusCode, head_request: bool, exact: Option<u64>) -> Self {
        let s = status.as_u16();
        if head_request || s < 200 || s == 204 || s == 304 {
            return Framing::None;
        }
        match exact {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    }
}

/// Writes the head into `w`: `fields` (end-to-end ones: the hop-by-hop fields were taken
/// out before) but those of framing and `Connection`, which are this writer's.
pub(super) fn encode<'f>(
    w: &mut BytesMut,
    status: StatusCode,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
    framing: Framing,
    close: bool,
) {
    // Most heads fit; a larger one grows the buffer as it is written.
    w.reserve(1024);
    if status == StatusCode::OK {
        w.put_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        w.put_slice(b"HTTP/1.1 ");
        w.put_slice(status.as_str().as_bytes());
        w.put_u8(b' ');
        w.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
        w.put_slice(b"\r\n");
    }
    let mut has_date = false;
    for (name, value) in fields {
        // The framing fields are this writer's (a 204 has neither); the rest of the
        // hop-by-hop fields were taken out before.
        // The few names this writer owns, told apart by length first.
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        let skip = match name.len() {
            4 => {
                has_date |= is("date");
                false
            }
            10 => is("connection"),
            14 | 17 => {
                (framing != Framing::None || status == StatusCode::NO_CONTENT)
                    && (is("content-length") || is("transfer-encoding"))
            }
            _ => false,
        };
        if skip {
            continue;
        }
        w.put_slice(name);
        w.put_slice(b": ");
        w.put_slice(value);
        w.put_slice(b"\r\n");
    }
    if !has_date {
        w.put_slice(b"date: ");
        with_date(|d| w.put_slice(d));
        w.put_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            w.put_slice(b"content-length: ");
            put_decimal(w, n);
            w.put_slice(b"\r\n");
        }
        Framing::Chunked => w.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        w.put_slice(b"connection: close\r\n");
    }
    w.put_slice(b"\r\n");
}

/// Writes `n` in decimal.
fn put_decimal(w: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    w.put_slice(&digits[at..]);
}

/// Calls `f` with the current time as an HTTP date (IMF-fixdate), formatted at most once
/// a second per thread.
pub(in crate::proxy) fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        f(c.1.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn head(status: u16, fields: &[(&str, &str)], framing: Framing, close: bool) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in fields {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut w = BytesMut::new();
        let fields = map
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        encode(
            &mut w,
            StatusCode::from_u16(status).unwrap(),
            fields,
            framing,
            close,
        );
        String::from_utf8(w.to_vec()).unwrap()
    }

    #[test]
    fn framing_follows_status_and_method() {
        let ok = StatusCode::OK;
        assert_eq!(Framing::of(ok, false, Some(5)), Framing::Length(5));
        assert_eq!(Framing::of(ok, false, None), Framing::Chunked);
        assert_eq!(Framing::of(ok, true, Some(5)), Framing::None);
        assert_eq!(
            Framing::of(StatusCode::NOT_MODIFIED, false, None),
            Framing::None
        );
        assert_eq!(
            Framing::of(StatusCode::NO_CONTENT, false, Some(0)),
            Framing::None
        );
    }

    #[test]
    fn the_writer_owns_framing_and_connection_fields() {
        let h = head(
            200,
            &[("content-length", "99"), ("date", "x"), ("x-a", "1")],
            Framing::Length(2),
            true,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ndate: x\r\nx-a: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
        let h = head(502, &[("x-a", "1")], Framing::Chunked, false);
        assert!(
            h.starts_with("HTTP/1.1 502 Bad Gateway\r\nx-a: 1\r\ndate: "),
            "{h}"
        );
        assert!(
            h.ends_with(" GMT\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{h}"
        );
    }

    #[test]
    fn heads_without_a_body_keep_their_declared_length() {
        let h = head(
            200,
            &[("content-length", "1000"), ("date", "x")],
            Framing::None,
            false,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ndate: x\r\n\r\n"
        );
        let h = head(
            204,
            &[("content-length", "0"), ("date", "x")],
            Framing::None,
            false,
        );
        assert_eq!(h, "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
    }
}
