//! The fast path's request-head reader (`src/proxy/fast_h1/request.rs`), used as
//! `read_head` (`src/proxy/fast_h1/mod.rs`) uses it: the bytes arrive in pieces, and a
//! piece is parsed only when `may_end_head` says a head's end may have come.
//!
//! Asserts: never a panic; `may_end_head` never hides a complete plain head (when it says
//! no, parsing would not have said `Plain`); what the pieces decide (plain or hand-off) is
//! what the whole buffer decides, and a plain head read from a prefix is the same head,
//! byte for byte, as read from the whole; a plain head is well formed (its length ends on
//! an empty line, every range lies inside it, the target is origin-form, the sizes add up).
#![no_main]

use interlock::fuzzing::{may_end_head, request_head, PlainHead, RequestHead};
use libfuzzer_sys::fuzz_target;

const MAX_FIELDS: usize = 100;

fn check_plain(buf: &[u8], h: &PlainHead) {
    let head = &buf[..h.len];
    assert!(
        head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
        "{head:?}"
    );
    for r in [&h.method, &h.target, &h.host] {
        assert!(r.start <= r.end && r.end <= h.len);
    }
    assert!(!h.method.is_empty());
    assert_eq!(buf[h.target.start], b'/');
    let mut len = 0;
    for (n, v) in &h.fields {
        assert!(n.end <= h.len && v.end <= h.len && !n.is_empty());
        len += n.len() + v.len() + 4;
    }
    assert_eq!(len, h.fields_len);
    assert!(h.fields.len() <= MAX_FIELDS);
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, buf)) = data.split_first() else {
        return;
    };
    let whole = request_head(buf, MAX_FIELDS);
    if let RequestHead::Plain(h) = &whole {
        check_plain(buf, h);
    }
    // The pieces: sizes 1..=32 from the seed's bits, cycling.
    let step = |i: usize| 1 + ((seed as usize).rotate_left(i as u32 % 8) % 32);
    let mut end = 0;
    let mut scanned: Option<usize> = None;
    let mut decided = None;
    let mut i = 0;
    // A complete head stays complete as bytes come, so the last piece of a run that
    // `may_end_head` skipped is the one to check.
    let mut skipped: Option<usize> = None;
    let hid = |at: usize| {
        let part = &buf[..at];
        assert!(
            !matches!(request_head(part, MAX_FIELDS), RequestHead::Plain(_)),
            "may_end_head hid a complete head: {part:?}"
        );
    };
    while end < buf.len() {
        end = (end + step(i)).min(buf.len());
        i += 1;
        let part = &buf[..end];
        let may = scanned.is_none_or(|from| may_end_head(part, from));
        if !may {
            skipped = Some(end);
            continue;
        }
        if let Some(at) = skipped.take() {
            hid(at);
        }
        match request_head(part, MAX_FIELDS) {
            RequestHead::Partial => scanned = Some(end),
            other => {
                decided = Some(other);
                break;
            }
        }
    }
    if let Some(at) = skipped {
        hid(at);
    }
    match decided {
        Some(RequestHead::Plain(h)) => {
            assert_eq!(RequestHead::Plain(h), whole, "a prefix read another head");
        }
        Some(RequestHead::Other) => {
            assert_eq!(
                whole,
                RequestHead::Other,
                "a prefix was handed off, the whole not"
            );
        }
        Some(RequestHead::Partial) => unreachable!(),
        None => assert!(!matches!(whole, RequestHead::Plain(_))),
    }
});
