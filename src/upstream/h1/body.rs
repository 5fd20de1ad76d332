//! The response body as it streams to the client, read from the connection in the
//! client's task. Data leaves the read buffer without a copy. When the last byte is read
//! the connection goes back to its upstream's pool (if it may carry another request); a
//! body dropped before its end closes the connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::{H1Conn, H1Error, MAX_HEADERS};
use crate::upstream::Upstream;
use crate::upstream::UpstreamBody;
use crate::wire::{SendError, Sender};

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// How the body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes are left (0: none, or all read).
    Length(u64),
    Chunked(Chunk),
    /// Everything until the upstream closes.
    Close,
}

impl Framing {
    pub(crate) fn chunked() -> Self {
        Framing::Chunked(Chunk::Size)
    }
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    Done,
}

pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

impl Chunk {
    /// Decodes what the buffer holds; `None`: more bytes are needed.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, H1Error> {
        loop {
            match *self {
                Chunk::Size => {
                    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(H1Error::Chunk("chunk-size line too long"))
                        } else {
                            Ok(None)
                        };
                    };
                    let size = chunk_size(&buf[..lf])?;
                    buf.advance(lf + 1);
                    *self = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                    return Ok(Some(Decoded::Data(data)));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunk("no CRLF after chunk data"));
                    }
                    buf.advance(2);
                    *self = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Chunk::Done;
                        return Ok(Some(Decoded::End));
                    }
                    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut raw) {
                        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                            return Err(H1Error::Chunk("trailer section too large"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Ok(httparse::Status::Complete((n, fields))) => {
                            let map = trailers(fields)?;
                            buf.advance(n);
                            *self = Chunk::Done;
                            return Ok(Some(Decoded::Trailers(map)));
                        }
                        Err(_) => return Err(H1Error::Chunk("malformed trailer section")),
                    }
                }
                Chunk::Done => return Ok(Some(Decoded::End)),
            }
        }
    }
}

/// `chunk-size [ chunk-ext ] CRLF` without its LF: hex digits, then nothing, or optional
/// whitespace and `;` extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(H1Error::Chunk("chunk-size line without CRLF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(H1Error::Chunk("bad chunk size"));
    }
    let rest = &line[digits..];
    let ext = rest.iter().position(|b| !matches!(b, b' ' | b'\t'));
    if let Some(i) = ext {
        if rest[i] != b';' {
            return Err(H1Error::Chunk("bad chunk size"));
        }
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = (d as char).to_digit(16).unwrap_or(0);
        size = (size << 4) | u64::from(v);
    }
    Ok(size)
}

/// The next bytes of a body framed by length, `left` bytes to go: at most that many of
/// what `buf` holds (`None`: `buf` is empty).
pub(crate) fn length_data(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// An upstream response body.
pub struct ResponseBody {
    /// `None` once the body ended (the connection went back to the pool or was closed).
    conn: Option<Box<H1Conn>>,
    framing: Framing,
    reusable: bool,
    /// The rest of the request body, when the answer came before it was all sent (boxed:
    /// rare, and large).
    sending: Option<Box<Sender<UpstreamBody>>>,
    upstream: Arc<Upstream>,
}

impl ResponseBody {
    pub(super) fn new(
        conn: Box<H1Conn>,
        framing: Framing,
        reusable: bool,
        sending: Option<Box<Sender<UpstreamBody>>>,
        upstream: Arc<Upstream>,
    ) -> Self {
        let mut body = ResponseBody {
            conn: Some(conn),
            framing,
            reusable,
            sending,
            upstream,
        };
        if body.framing == Framing::Length(0) {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection returns to the pool if nothing is left over
    /// and the request was sent whole.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && self.sending.is_none() && conn.rbuf.is_empty() {
                self.upstream.release(conn);
            }
        }
    }

    /// Fails the body: the connection closes.
    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        if let (Some(sender), Some(conn)) = (&mut this.sending, &mut this.conn) {
            match sender.poll_send(&mut conn.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => this.sending = None,
                Poll::Ready(Err(e)) => {
                    // The answer is under way: it is read to its end all the same, and the
                    // connection is not reused.
                    let e: &dyn std::fmt::Debug = match &e {
                        SendError::Io(e) => e,
                        SendError::Body(e) => e,
                    };
                    tracing::debug!(error = ?e, "the rest of the request body could not be sent");
                    this.sending = None;
                    this.reusable = false;
                }
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if let Some(data) = length_data(&mut conn.rbuf, left) {
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match state.decode(&mut conn.rbuf) {
                    Ok(Some(Decoded::Data(data))) => {
                        return Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(Some(Decoded::Trailers(map))) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Ok(Some(Decoded::End)) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e),
                },
                Framing::Close => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.framing == Framing::Close => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(H1Error::Truncated),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Response trailers (chunked body), as a field map.
fn trailers(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, H1Error> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| H1Error::Chunk("trailer field name"))?;
        let value = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(f.value))
            .map_err(|_| H1Error::Chunk("trailer field value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, bool), H1Error> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::from(input);
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match state.decode(&mut buf)? {
                Some(Decoded::Data(d)) => data.extend_from_slice(&d),
                Some(Decoded::Trailers(t)) => trailers = Some(t),
                Some(Decoded::End) => return Ok((data, trailers, true)),
                None => return Ok((data, trailers, false)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode() {
        let (data, _, done) = decode_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert!(done);
        let (data, trailers, done) =
            decode_all(b"A \t;x\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n").unwrap();
        assert_eq!(data, b"0123456789");
        assert!(done);
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[test]
    fn partial_input_waits() {
        let (data, _, done) = decode_all(b"5\r\nhel").unwrap();
        assert_eq!(data, b"hel");
        assert!(!done);
        assert!(!decode_all(b"5").unwrap().2);
        assert!(!decode_all(b"0\r\n").unwrap().2);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\nhello\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5 x\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"-5\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(decode_all(bad).is_err(), "{bad:?}");
        }
        assert!(decode_all(&[b'1'; MAX_CHUNK_LINE + 1]).is_err());
    }

    #[test]
    fn sizes_are_hex() {
        assert_eq!(chunk_size(b"ff\r").unwrap(), 255);
        assert_eq!(chunk_size(b"FFFFFFFFFFFFFFFF\r").unwrap(), u64::MAX);
        assert_eq!(chunk_size(b"0 ; name=value\r").unwrap(), 0);
    }
}
