//! The upstream client's response reading (`src/upstream/h1/response.rs` and `body.rs`): the
//! head parser with its framing decision (RFC 9112 §6.3, `parse_length`), then the body
//! decoder of that framing (length, chunked, close-delimited), the bytes arriving whole or
//! in pieces (sizes from the first byte; its top bit makes it the answer to a HEAD request).
//!
//! Asserts: never a panic; pieces and the whole agree on the head (or its refusal) and on
//! the body (data, trailers, end, error, the bytes left after it); a length body gives
//! exactly its declared length, never a byte past it; a chunked body ends exactly where a
//! strict reference decoder (written here from RFC 9112 §7.1) says the message ends, with
//! the same data, and a declared `Content-Length` never travels beside `Transfer-Encoding`.
#![no_main]

use bytes::BytesMut;
use interlock::fuzzing::{response_head, BodyDecoder, BodyFraming, BodyPiece};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Body {
    data: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    end: bool,
    error: Option<String>,
    left: Vec<u8>,
}

/// Decodes `input` arriving in pieces of `step(i)` bytes.
fn decode(framing: BodyFraming, input: &[u8], step: &dyn Fn(usize) -> usize) -> Body {
    let mut dec = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let mut out = Body {
        data: Vec::new(),
        trailers: None,
        end: false,
        error: None,
        left: Vec::new(),
    };
    let mut fed = 0;
    let mut i = 0;
    'outer: loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(BodyPiece::Data(d))) => {
                    assert!(!d.is_empty());
                    out.data.extend_from_slice(&d)
                }
                Ok(Some(BodyPiece::Trailers(t))) => {
                    let t = t
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect();
                    out.trailers = Some(t);
                }
                Ok(Some(BodyPiece::End)) => {
                    out.end = true;
                    break 'outer;
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    break 'outer;
                }
            }
        }
        if fed == input.len() {
            break;
        }
        let n = step(i).min(input.len() - fed);
        i += 1;
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
    if out.end {
        out.left = buf.to_vec();
        out.left.extend_from_slice(&input[fed..]);
    }
    out
}

/// A strict chunked decoder from RFC 9112 §7.1: (data, bytes the message takes), `None`
/// when malformed or incomplete.
fn reference_chunked(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut data = Vec::new();
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let lf = b[at..].iter().position(|&c| c == b'\n')? + at;
        Some((&b[at..lf], lf + 1))
    };
    loop {
        let (l, next) = line(at)?;
        let l = l.strip_suffix(b"\r")?;
        let digits = l.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return None;
        }
        let rest = &l[digits..];
        let rest = &rest[rest
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t'))
            .count()..];
        if !rest.is_empty() && rest[0] != b';' {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&l[..digits]).ok()?, 16).ok()?;
        at = next;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).ok()?;
        let end = at.checked_add(size)?;
        if end.checked_add(2)? > b.len() || &b[end..end + 2] != b"\r\n" {
            return None;
        }
        data.extend_from_slice(&b[at..end]);
        at = end + 2;
    }
    // Trailer section: field lines up to an empty line.
    loop {
        let (l, next) = line(at)?;
        at = next;
        if l.is_empty() || l == b"\r" {
            return Some((data, at));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let head_request = seed & 0x80 != 0;
    let step = |i: usize| 1 + ((seed as usize & 0x7f).rotate_left(i as u32 % 7) % 23);

    // The head, whole.
    let mut whole = BytesMut::from(input);
    let parsed = response_head(&mut whole, head_request);
    let consumed = input.len() - whole.len();
    // The head, as bytes arrive: the first answer that is not "more" is the whole's.
    let mut end = 0;
    let mut i = 0;
    while end < input.len() {
        end = (end + step(i)).min(input.len());
        i += 1;
        let mut part = BytesMut::from(&input[..end]);
        match response_head(&mut part, head_request) {
            Ok(None) => continue,
            Ok(Some(h)) => {
                let Ok(Some(w)) = &parsed else {
                    panic!("a prefix parsed, the whole did not: {parsed:?}");
                };
                assert_eq!(end - part.len(), consumed);
                assert_eq!(
                    (h.status, h.framing, h.keep_alive),
                    (w.status, w.framing, w.keep_alive)
                );
                assert_eq!(h.fields, w.fields);
            }
            Err(e) => assert_eq!(parsed.as_ref().err(), Some(&e)),
        }
        break;
    }
    let Ok(Some(head)) = parsed else {
        return;
    };
    assert!((100..1000).contains(&head.status));
    let named = |n: &str| {
        head.fields
            .iter()
            .any(|(f, _)| f.eq_ignore_ascii_case(n.as_bytes()))
    };
    if named("transfer-encoding") {
        assert!(
            !named("content-length"),
            "Content-Length beside Transfer-Encoding"
        );
        assert!(!head.parts.headers.contains_key("content-length"));
    }
    if head_request || matches!(head.status, 100..=199 | 204 | 304) {
        assert_eq!(head.framing, BodyFraming::Length(0));
    }
    if head.framing == BodyFraming::Close {
        assert!(!head.keep_alive);
    }

    // The body, whole and in pieces.
    let body = &input[consumed..];
    let all = decode(head.framing, body, &|_| usize::MAX);
    let pieces = decode(head.framing, body, &step);
    assert_eq!(all, pieces);
    match head.framing {
        BodyFraming::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            assert_eq!(all.data, body[..n.min(body.len())]);
            assert_eq!(all.end, body.len() >= n);
            if all.end {
                assert_eq!(all.left, body[n..]);
            }
        }
        BodyFraming::Close => assert_eq!(all.data, body),
        BodyFraming::Chunked => {
            if all.end {
                let reference = reference_chunked(body);
                let Some((data, len)) = reference else {
                    panic!("ours ended a chunked body the reference refuses: {body:?}");
                };
                assert_eq!(all.data, data);
                assert_eq!(all.left, body[len..], "the message ends elsewhere");
            } else if let Some((data, len)) = reference_chunked(body) {
                // The reference is more lenient on trailers (any line): ours may refuse.
                assert!(
                    all.error.is_some(),
                    "ours waits past the end {len}: {body:?}"
                );
                assert!(data.starts_with(&all.data));
            }
        }
    }
});
