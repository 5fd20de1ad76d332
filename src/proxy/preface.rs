//! After TLS negotiated ALPN `h2`, the client has promised HTTP/2: the first bytes must be
//! its connection preface (RFC 9113 §3.4). Anything else (an HTTP/1.1 request, say) is
//! answered with our SETTINGS and a GOAWAY(PROTOCOL_ERROR), and the connection closes;
//! it is never served as HTTP/1.1, whose fast path and routing the client did not ask for.
//! On a cleartext connection, the same preface tells HTTP/2 with prior knowledge from
//! HTTP/1.1 ([`detect`]).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// What an HTTP/2 client sends first.
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame (the server preface), then GOAWAY: last stream 0,
/// PROTOCOL_ERROR, and why.
const REFUSAL: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\
\x00\x00\x2e\x07\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x01\
expected the HTTP/2 connection preface";

/// Reads the client's first bytes: `Some` with what was read (the preface at least, for
/// the HTTP/2 server to read again) when they start with the preface; `None` when the
/// connection closed, or was refused because they do not, or `closing` was set
/// (shutdown, idle too long).
pub(super) async fn expect<S: AsyncRead + AsyncWrite + Unpin>(
    closing: &AtomicBool,
    io: &mut S,
) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(PREFACE.len() * 2);
    if detect(closing, io, &mut buf).await? {
        return Some(buf);
    }
    let _ = io.write_all(REFUSAL).await;
    let _ = io.shutdown().await;
    None
}

/// Whether the connection's first bytes, `buf` and what comes next, are HTTP/2's preface
/// (a cleartext client's prior knowledge): reads only as far as needed to tell, into `buf`.
/// `None` when the connection closed first, or `closing` was set.
pub(super) async fn detect<S: AsyncRead + Unpin>(
    closing: &AtomicBool,
    io: &mut S,
    buf: &mut BytesMut,
) -> Option<bool> {
    loop {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        let read = poll_fn(|cx| {
            // Shutting down or idle for too long: nothing more is read.
            if closing.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(0));
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)
        })
        .await;
        if !matches!(read, Ok(n) if n > 0) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_settings_then_a_well_formed_goaway() {
        assert_eq!(&REFUSAL[..9], b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let goaway = &REFUSAL[9..];
        let len = usize::from(goaway[2]);
        assert_eq!(goaway[3], 0x7, "GOAWAY");
        assert_eq!(goaway.len(), 9 + len, "length field matches the payload");
        assert_eq!(&goaway[9..13], [0, 0, 0, 0], "last stream 0");
        assert_eq!(&goaway[13..17], [0, 0, 0, 1], "PROTOCOL_ERROR");
    }
}
