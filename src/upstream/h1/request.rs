//! The request side: the head as bytes (kept, so that a replay sends the same bytes) and
//! the body's framing. [`crate::wire::Sender`] writes them.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

/// How the request body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes, sent as they come.
    Length(u64),
    /// `Transfer-Encoding: chunked` (the length is not known up front).
    Chunked,
}

impl RequestFraming {
    /// The framing of a body known to be empty (`end_stream`), or of this exact length,
    /// or of a length not known up front.
    pub fn of(end_stream: bool, exact: Option<u64>) -> Self {
        match (end_stream, exact) {
            (true, _) => RequestFraming::Empty,
            (false, Some(n)) => RequestFraming::Length(n),
            (false, None) => RequestFraming::Chunked,
        }
    }
}

/// Writes a request head as sent: `METHOD target HTTP/1.1`, the fields, then the framing
/// field. Names and values come from `http` types (validated: no CR or LF), so nothing in
/// a request can add a line. The caller decides which fields go (see
/// `proxy::headers::upstream_head`); the framing fields are this writer's alone, so a
/// chunked body never travels with a `Content-Length` (the classic smuggling confusion).
pub struct HeadWriter {
    buf: BytesMut,
}

impl HeadWriter {
    /// Starts a head; `fields` is about how many bytes the fields will take.
    pub fn new(method: &str, target: &str, fields: usize) -> Self {
        let mut buf = BytesMut::with_capacity(method.len() + target.len() + fields + 64);
        buf.extend_from_slice(method.as_bytes());
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter { buf }
    }

    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Ends the head with the body's framing field. `declared_empty`: say `Content-Length:
    /// 0` for an empty body (the client did, or the method usually carries a body).
    pub fn finish(mut self, framing: RequestFraming, declared_empty: bool) -> Bytes {
        match framing {
            RequestFraming::Empty if declared_empty => self.field(b"content-length", b"0"),
            RequestFraming::Empty => {}
            RequestFraming::Length(n) => {
                // BytesMut's fmt::Write cannot fail.
                let _ = write!(self.buf, "content-length: {n}\r\n");
            }
            RequestFraming::Chunked => self.field(b"transfer-encoding", b"chunked"),
        }
        self.buf.extend_from_slice(b"\r\n");
        self.buf.freeze()
    }
}
