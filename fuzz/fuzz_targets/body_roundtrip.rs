//! Body framing both ways: a body of data frames and trailers (from the input) written by
//! `wire::Sender` (`src/wire.rs`, how requests go upstream and answers go to clients),
//! chunked or by length, to a socket that takes a few bytes per write (sizes from the
//! input), then read back by the upstream client's decoder (`src/upstream/h1/body.rs`).
//!
//! Asserts: never a panic; what is written is exactly the body (by length) or a chunked
//! encoding of it that decodes to the same bytes and trailers (kept or dropped as asked;
//! fields a trailer section must not carry may be dropped), ends exactly at its end, and
//! decodes the same whatever pieces it arrives in.
#![no_main]

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use interlock::fuzzing::{send, BodyDecoder, BodyFraming, BodyPiece};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "grpc-status",
    "grpc-message",
    "x-checksum",
    "content-length",
    "host",
    "transfer-encoding",
    "trailer",
    "server-timing",
];

/// Fields a sender may drop from trailers (RFC 9110 §6.5.1).
fn forbidden(name: &str) -> bool {
    matches!(
        name,
        "content-length" | "host" | "transfer-encoding" | "trailer"
    )
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (flags, sizes_seed, mut rest) = (data[0], data[1], &data[2..]);
    let chunked = flags & 1 != 0;
    let keep_trailers = flags & 2 != 0;
    let with_trailers = flags & 4 != 0;
    // Frames: a length byte, then that many bytes (0: an empty frame).
    let mut frames = Vec::new();
    let mut body = Vec::new();
    while let Some((&n, tail)) = rest.split_first() {
        if n == 0xff {
            rest = tail;
            break;
        }
        let n = (n as usize).min(tail.len());
        frames.push(Frame::data(Bytes::copy_from_slice(&tail[..n])));
        body.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
    }
    // Trailers: the rest, two bytes a field (name, value byte).
    let mut trailers = HeaderMap::new();
    if with_trailers {
        // At most 16 fields: the decoder takes 100 (as in a head), a limit, not a fault;
        // and it parses a trailer section again as each piece of it comes.
        for pair in rest.chunks_exact(2).take(16) {
            let name = HeaderName::from_static(NAMES[pair[0] as usize % NAMES.len()]);
            let value = format!("v{}", pair[1]);
            trailers.append(name, HeaderValue::from_str(&value).unwrap());
        }
        frames.push(Frame::trailers(trailers.clone()));
    }
    let sizes: Vec<usize> = (0..64)
        .map(|i| 1 + (sizes_seed as usize).rotate_left(i % 8) % 13)
        .collect();
    let head = Bytes::from_static(b"HEAD\r\n");
    let out = send(head.clone(), frames, chunked, keep_trailers, sizes.clone());
    let wire = out.strip_prefix(&head[..]).expect("the head goes first");
    if !chunked {
        assert_eq!(
            wire, body,
            "a body by length is its bytes, trailers dropped"
        );
        let mut dec = BodyDecoder::new(BodyFraming::Length(body.len() as u64));
        let mut buf = BytesMut::from(wire);
        let mut got = Vec::new();
        while let Ok(Some(BodyPiece::Data(d))) = dec.decode(&mut buf) {
            got.extend_from_slice(&d);
        }
        assert_eq!(got, body);
        return;
    }
    for pieces in [false, true] {
        let mut dec = BodyDecoder::new(BodyFraming::Chunked);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut got = Vec::new();
        let mut got_trailers = None;
        let mut i = 0;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(BodyPiece::Data(d))) => got.extend_from_slice(&d),
                Ok(Some(BodyPiece::Trailers(t))) => got_trailers = Some(t),
                Ok(Some(BodyPiece::End)) => break,
                Ok(None) => {
                    assert!(fed < wire.len(), "the chunked body never ends: {wire:?}");
                    let n = if pieces {
                        sizes[i % sizes.len()]
                    } else {
                        wire.len()
                    };
                    i += 1;
                    let n = n.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
                Err(e) => panic!("our own chunked encoding is refused: {e}: {wire:?}"),
            }
        }
        assert!(buf.is_empty() && fed == wire.len(), "bytes after the end");
        assert!(dec.chunked_done());
        assert_eq!(got, body);
        let got_trailers = got_trailers.unwrap_or_default();
        let sent = if keep_trailers {
            trailers.clone()
        } else {
            HeaderMap::new()
        };
        for (name, value) in &got_trailers {
            assert!(
                sent.get_all(name).iter().any(|v| v == value),
                "a trailer nobody sent: {name}"
            );
        }
        for (name, value) in &sent {
            if !forbidden(name.as_str()) {
                assert!(
                    got_trailers.get_all(name).iter().any(|v| v == value),
                    "trailer {name} lost"
                );
            }
        }
    }
});
