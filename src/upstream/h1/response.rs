//! The response head: parsed with httparse, its field values sliced out of the read buffer
//! without copying, and the body's framing decided by RFC 9112 §6.3.

use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::body::Framing;
use super::{H1Conn, H1Error, MAX_HEADERS, MAX_HEAD_BYTES};

/// A parsed response head.
pub(crate) struct Head {
    pub(crate) head: ResponseHead,
    pub(crate) framing: Framing,
    /// The connection may carry another request once this body is read.
    pub(crate) keep_alive: bool,
}

/// A response head as it came from the upstream: status, and the fields as slices of the
/// head's bytes (validated by httparse as `http`'s types would be). The HTTP/1.1 fast path
/// writes them on as they are; [`ResponseHead::into_parts`] builds a field map for the
/// rest.
pub struct ResponseHead {
    pub status: StatusCode,
    raw: Bytes,
    fields: Vec<FieldAt>,
    /// Transfer-Encoding and Content-Length both came: the length must not travel on
    /// (RFC 9112 §6.3), the client would wait for bytes that never come.
    drop_length: bool,
}

impl ResponseHead {
    /// The fields, in order, as (name, value) bytes; a Content-Length that must not
    /// travel on is left out.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields.iter().filter_map(|&[ns, ne, vs, ve]| {
            let name = &self.raw[ns as usize..ne as usize];
            let drop = self.drop_length && name.eq_ignore_ascii_case(b"content-length");
            (!drop).then(|| (name, &self.raw[vs as usize..ve as usize]))
        })
    }

    /// The head as `http`'s parts: names lowercased, values sharing the head's bytes.
    pub fn into_parts(self) -> http::response::Parts {
        // Room for two more: the HTTP/2 server adds a Date where the upstream sent none, and
        // a full map would grow (reallocate) just to look for it.
        let mut headers = HeaderMap::with_capacity(self.fields.len() + 2);
        for &[ns, ne, vs, ve] in &self.fields {
            let name = HeaderName::from_bytes(&self.raw[ns as usize..ne as usize]);
            let value = HeaderValue::from_maybe_shared(self.raw.slice(vs as usize..ve as usize));
            // Both were validated by httparse with the same rules.
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        if self.drop_length {
            headers.remove(header::CONTENT_LENGTH);
        }
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = self.status;
        parts.version = Version::HTTP_11;
        parts.headers = headers;
        parts
    }
}

/// Reads until a whole head is in the buffer, then parses it.
pub(super) fn poll_head(
    conn: &mut H1Conn,
    cx: &mut Context<'_>,
    head_request: bool,
) -> Poll<Result<Head, H1Error>> {
    loop {
        // A buffer parsed before without a whole head is parsed again only once a line has
        // ended since: an upstream dripping a large head byte by byte costs one parse per
        // line, not one per byte, and a malformed line is still refused as soon as it ends.
        let scanned = conn.head_scanned;
        let may_be_whole = scanned == 0
            || conn
                .rbuf
                .get(scanned..)
                .is_some_and(|new| new.contains(&b'\n'));
        if !conn.rbuf.is_empty() && may_be_whole {
            if let Some(head) = parse(conn, head_request)? {
                conn.head_scanned = 0;
                return Poll::Ready(Ok(head));
            }
            conn.head_scanned = conn.rbuf.len();
        }
        if conn.rbuf.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(H1Error::HeadTooLarge));
        }
        let had = conn.rbuf.len();
        match ready!(conn.poll_fill(cx)) {
            Ok(0) if had == 0 => return Poll::Ready(Err(H1Error::Closed)),
            Ok(0) => {
                return Poll::Ready(Err(H1Error::Invalid(
                    "the upstream closed the connection in the middle of the response head",
                )))
            }
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(H1Error::Io(e))),
        }
    }
}

/// True when `buf`, scanned before up to `from`, may now hold the end of a head: an empty
/// line (`\n\n` or `\n\r\n`, as httparse accepts) in the bytes that came since.
pub fn may_end_head(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    let tail = buf.get(start..).unwrap_or_default();
    tail.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && match tail.get(i + 1) {
                Some(b'\n') => true,
                Some(b'\r') => tail.get(i + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

/// Where one field's name and value lie in the head: `[name start, name end, value start,
/// value end]` (a head is at most [`MAX_HEAD_BYTES`], so `u32` is plenty).
type FieldAt = [u32; 4];

/// Parses a complete head off the front of the buffer (`None`: not complete yet).
fn parse(conn: &mut H1Conn, head_request: bool) -> Result<Option<Head>, H1Error> {
    parse_head(&mut conn.rbuf, head_request)
}

/// [`parse`] on a buffer (fuzzed through `crate::fuzzing`).
pub(crate) fn parse_head(rbuf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, H1Error> {
    let mut framing = Fields::default();
    let (len, code, minor, fields) = {
        // Uninitialised: httparse writes the slots it fills (no 3 KiB memset per answer).
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let base = rbuf.as_ptr() as usize;
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, rbuf, &mut raw);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(H1Error::Parse(e)),
        };
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize - base) as u32;
            (start, start + s.len() as u32)
        };
        let mut fields = Vec::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            framing.note(h.name.as_bytes(), h.value)?;
            let (name, value) = (at(h.name.as_bytes()), at(h.value));
            fields.push([name.0, name.1, value.0, value.1]);
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            fields,
        )
    };
    let raw = rbuf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("status code"))?;
    let head = ResponseHead {
        status,
        raw,
        fields,
        drop_length: framing.transfer_encoding.is_some() && framing.content_length.is_some(),
    };
    let (framing, keep_alive) = framing.decide(status, minor, head_request);
    Ok(Some(Head {
        head,
        framing,
        keep_alive,
    }))
}

/// What the fields say about framing and the connection.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    /// `Transfer-Encoding` present; whether its last coding is `chunked`.
    transfer_encoding: Option<bool>,
    close: bool,
    keep_alive: bool,
}

impl Fields {
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), H1Error> {
        if name.eq_ignore_ascii_case(b"content-length") {
            // A list of equal values is one length (RFC 9110 §8.6); anything else is an
            // invalid message, never a guess.
            for part in value.split(|&b| b == b',') {
                let n = parse_length(trim(part)).ok_or(H1Error::Invalid("Content-Length"))?;
                if self.content_length.is_some_and(|m| m != n) {
                    return Err(H1Error::Invalid("differing Content-Length values"));
                }
                self.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            self.transfer_encoding = Some(trim(last).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim(token);
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// The body's framing (RFC 9112 §6.3) and whether the connection stays open after it.
    fn decide(self, status: StatusCode, minor: u8, head_request: bool) -> (Framing, bool) {
        let mut keep_alive = if minor == 0 {
            self.keep_alive && !self.close
        } else {
            !self.close
        };
        let code = status.as_u16();
        if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
            return (Framing::Length(0), keep_alive);
        }
        let framing = match (self.transfer_encoding, self.content_length) {
            (Some(chunked), length) => {
                // Both fields: Transfer-Encoding wins, and the connection must close after
                // (RFC 9112 §6.3, item 3).
                if length.is_some() || !chunked {
                    keep_alive = false;
                }
                if chunked {
                    Framing::chunked()
                } else {
                    Framing::Close
                }
            }
            (None, Some(n)) => Framing::Length(n),
            (None, None) => {
                keep_alive = false;
                Framing::Close
            }
        };
        (framing, keep_alive)
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// A `Content-Length` value: digits only, at most 19 of them (no sign, no overflow).
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 2",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn trim_strips_optional_whitespace() {
        assert_eq!(trim(b" \tchunked \t"), b"chunked");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim(b""), b"");
    }

    fn decide(fields: &[(&str, &str)], status: u16, minor: u8, head: bool) -> (Framing, bool) {
        let mut f = Fields::default();
        for (n, v) in fields {
            f.note(n.as_bytes(), v.as_bytes()).unwrap();
        }
        f.decide(StatusCode::from_u16(status).unwrap(), minor, head)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            decide(&[("content-length", "5")], 200, 1, false),
            (Framing::Length(5), true)
        );
        assert_eq!(
            decide(&[("content-length", "5, 5")], 200, 1, false),
            (Framing::Length(5), true)
        );
        assert_eq!(
            decide(&[("content-length", "5")], 200, 1, true),
            (Framing::Length(0), true)
        );
        assert_eq!(decide(&[], 204, 1, false), (Framing::Length(0), true));
        assert_eq!(decide(&[], 304, 1, false), (Framing::Length(0), true));
        assert_eq!(decide(&[], 200, 1, false), (Framing::Close, false));
        assert_eq!(
            decide(&[("transfer-encoding", "gzip, chunked")], 200, 1, false),
            (Framing::chunked(), true)
        );
        assert_eq!(
            decide(
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                200,
                1,
                false
            ),
            (Framing::chunked(), false)
        );
        assert_eq!(
            decide(&[("transfer-encoding", "gzip")], 200, 1, false),
            (Framing::Close, false)
        );
        assert_eq!(
            decide(
                &[("content-length", "5"), ("connection", "close")],
                200,
                1,
                false
            ),
            (Framing::Length(5), false)
        );
        assert_eq!(
            decide(&[("content-length", "5")], 200, 0, false),
            (Framing::Length(5), false)
        );
        assert_eq!(
            decide(
                &[("content-length", "5"), ("connection", "Keep-Alive")],
                200,
                0,
                false
            ),
            (Framing::Length(5), true)
        );
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let mut f = Fields::default();
        let name = b"Content-Length";
        assert!(f.note(name, b"5, 6").is_err());
        let mut f = Fields::default();
        f.note(name, b"5").unwrap();
        assert!(f.note(name, b"6").is_err());
        assert!(Fields::default().note(name, b"-1").is_err());
    }
}
