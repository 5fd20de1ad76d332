//! Entry points for the cargo-fuzz targets in `fuzz/`: thin wrappers around parsers that
//! are private to their modules, so the targets reach the code that runs, not a copy of it.
//! Not an API: hidden from the docs, and free to change with the targets.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};
use tokio::io::AsyncWrite;

use crate::proxy::fast_h1::{Head, Parsed};
use crate::upstream::h1::{Chunk, Decoded, Framing};

/// Most fields a request head may have on the fast path.
pub const MAX_REQUEST_FIELDS: usize = crate::proxy::fast_h1::MAX_FIELDS;

/// The fast path's reading of the bytes at the start of a connection's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHead {
    /// A plain head, read whole: the fast path serves it.
    Plain(PlainHead),
    /// Not all of a head yet.
    Partial,
    /// hyper's (handed off).
    Other,
}

/// A plain head as offsets into the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainHead {
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub host: Range<usize>,
    pub fields: Vec<(Range<usize>, Range<usize>)>,
    pub fields_len: usize,
    pub close: bool,
    pub trailers: bool,
    pub body_len: u64,
}

/// `request::Head::parse` of the fast path (`src/proxy/fast_h1/request.rs`).
pub fn request_head(buf: &[u8], max_fields: usize) -> RequestHead {
    let mut head = Head::default();
    match head.parse(buf, max_fields) {
        Parsed::Partial => RequestHead::Partial,
        Parsed::Other => RequestHead::Other,
        Parsed::Plain => RequestHead::Plain(PlainHead {
            len: head.len,
            method: head.method,
            target: head.target,
            host: head.host,
            fields: head.fields,
            fields_len: head.fields_len,
            close: head.close,
            trailers: head.trailers,
            body_len: head.body_len,
        }),
    }
}

/// `request::may_end_head`: whether a head's end may have come since `from`.
pub fn may_end_head(buf: &[u8], from: usize) -> bool {
    crate::proxy::fast_h1::may_end_head(buf, from)
}

/// How a response body is framed (RFC 9112 §6.3), as the upstream client decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
    Close,
}

/// A response head as the upstream client parsed it.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    /// The fields the fast path writes on to the client.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// The same head as `http` parts (what hyper's side gets).
    pub parts: http::response::Parts,
}

/// `response::parse_head` of the upstream client (`src/upstream/h1/response.rs`): takes a
/// complete head off the front of `buf` (`Ok(None)`: not complete yet).
pub fn response_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, String> {
    let Some(head) =
        crate::upstream::h1::parse_head(buf, head_request).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let framing = match head.framing {
        Framing::Length(n) => BodyFraming::Length(n),
        Framing::Chunked(_) => BodyFraming::Chunked,
        Framing::Close => BodyFraming::Close,
    };
    let fields = head
        .head
        .fields()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    Ok(Some(ResponseHead {
        status: head.head.status.as_u16(),
        framing,
        keep_alive: head.keep_alive,
        fields,
        parts: head.head.into_parts(),
    }))
}

/// What a body decoder gave.
#[derive(Debug)]
pub enum BodyPiece {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// The upstream client's body decoder (`src/upstream/h1/body.rs`) for one framing, fed
/// from a buffer as bytes arrive.
pub struct BodyDecoder {
    framing: Framing,
}

impl BodyDecoder {
    pub fn new(framing: BodyFraming) -> Self {
        let framing = match framing {
            BodyFraming::Length(n) => Framing::Length(n),
            BodyFraming::Chunked => Framing::chunked(),
            BodyFraming::Close => Framing::Close,
        };
        BodyDecoder { framing }
    }

    /// The next piece of the body from `buf` (`Ok(None)`: more bytes are needed; for a
    /// close-delimited body, the end is the connection's).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BodyPiece>, String> {
        match &mut self.framing {
            Framing::Length(0) => Ok(Some(BodyPiece::End)),
            Framing::Length(left) => {
                Ok(crate::upstream::h1::length_data(buf, left).map(BodyPiece::Data))
            }
            Framing::Chunked(state) => match state.decode(buf).map_err(|e| e.to_string())? {
                Some(Decoded::Data(d)) => Ok(Some(BodyPiece::Data(d))),
                Some(Decoded::Trailers(t)) => Ok(Some(BodyPiece::Trailers(t))),
                Some(Decoded::End) => Ok(Some(BodyPiece::End)),
                None => Ok(None),
            },
            Framing::Close => Ok((!buf.is_empty()).then(|| BodyPiece::Data(buf.split().freeze()))),
        }
    }

    /// True once a chunked body's decoder is past its last chunk and trailers.
    pub fn chunked_done(&self) -> bool {
        self.framing == Framing::Chunked(Chunk::Done)
    }
}

/// A body of the given frames, as the writer takes them.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
}

/// A socket that takes at most the next of `sizes` bytes per write (then everything).
struct Trickle {
    out: Vec<u8>,
    sizes: VecDeque<usize>,
}

impl AsyncWrite for Trickle {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = this
            .sizes
            .pop_front()
            .unwrap_or(usize::MAX)
            .max(1)
            .min(buf.len());
        this.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut room = this.sizes.pop_front().unwrap_or(usize::MAX).max(1);
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room);
            this.out.extend_from_slice(&b[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What `wire::Sender` (`src/wire.rs`) writes for `head` and a body of `frames`, chunked
/// or not, trailers kept or dropped, to a socket that takes `write_sizes` bytes per write
/// (then all it is given).
pub fn send(
    head: Bytes,
    frames: Vec<Frame<Bytes>>,
    chunked: bool,
    trailers: bool,
    write_sizes: Vec<usize>,
) -> Vec<u8> {
    let body = Frames(frames.into());
    let mut sender = crate::wire::Sender::new(head, Some(body), chunked);
    if !trailers {
        sender = sender.without_trailers();
    }
    let mut io = Trickle {
        out: Vec::new(),
        sizes: write_sizes.into(),
    };
    let mut cx = Context::from_waker(Waker::noop());
    match sender.poll_send(&mut io, &mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(_)) => panic!("the writer failed on a body that cannot fail"),
        Poll::Pending => panic!("the writer waited on a body that is always ready"),
    }
    assert_eq!(sender.written(), io.out.len());
    io.out
}

/// What a proxy does with the bytes of a snapshot, from the controller
/// (`providers::controller::poll`) or its saved state file (`load_saved`): decoded, for
/// its own cluster only, last good labels filled in, and compiled. Returns the snapshot as
/// the proxy saves it (last good labels filled in) and the number of routes compiled,
/// `None` when the bytes are refused.
pub fn proxy_takes_snapshot(
    bytes: &[u8],
    cluster: &str,
) -> Option<(crate::snapshot::Snapshot, usize)> {
    let snap: crate::snapshot::Snapshot = serde_json::from_slice(bytes).ok()?;
    if snap.cluster != cluster {
        return None;
    }
    let mut services = snap.services.clone();
    let decoded = snap;
    crate::last_good::LastGood::default().apply_to(&mut services);
    // The certificates and challenge answers that came with it, as the proxy loads them.
    crate::tls::memory::Memory::default().update(
        &decoded.tls,
        &std::collections::hash_map::RandomState::new(),
    );
    let state = crate::config::DesiredState {
        services,
        tls: decoded.tls.clone(),
        observed_at: decoded.observed_at,
    };
    let routes = compile(&state, cluster);
    let saved = crate::snapshot::Snapshot {
        services: state.services,
        ..decoded
    };
    Some((saved, routes))
}

/// Compiles `state` for `cluster` into a fresh table (`compile::compile`); the number of
/// routes.
pub fn compile(state: &crate::config::DesiredState, cluster: &str) -> usize {
    static METRICS: OnceLock<Arc<crate::metrics::Metrics>> = OnceLock::new();
    let metrics = METRICS.get_or_init(crate::metrics::Metrics::new);
    let opts = crate::compile::CompileOptions {
        cluster: cluster.to_string(),
        ..Default::default()
    };
    let table = crate::compile::compile(
        state,
        &crate::routing::RoutingTable::default(),
        &opts,
        metrics,
    );
    table.route_count()
}

/// The last good labels in the bytes of a state file (`last_good::LastGood::load`):
/// how many services they name, `None` when the file is refused.
pub fn last_good_state(bytes: &[u8]) -> Option<usize> {
    crate::last_good::parse_state(bytes).ok().map(|m| m.len())
}

/// Every label name interlock knows: read, and known but ignored.
pub fn label_names() -> Vec<&'static str> {
    let labels = crate::config::labels::KNOWN.iter();
    labels
        .chain(crate::config::labels::UNSUPPORTED)
        .copied()
        .collect()
}

/// A CA's `Retry-After` (`acme::http`), as the ACME client reads it; `None` when it is not
/// a number of seconds or an HTTP date.
pub fn acme_retry_after(value: &str) -> Option<std::time::SystemTime> {
    crate::acme::http::parse_retry_after(value)
}

/// The TLS-ALPN-01 challenge certificate a proxy makes for `host` from the digest the
/// controller sent (`tls::memory`).
pub fn acme_challenge_certificate(host: &str, digest_hex: &str) -> bool {
    crate::tls::memory::challenge_certificate(host, digest_hex).is_ok()
}

/// A snapshot body as a proxy reads it: gunzipped when it is gzip (the controller sends it
/// so to proxies that accept it), at most 1 MiB here; the bytes as they are otherwise.
pub fn snapshot_body(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        crate::snapshot::gunzip(bytes, 1 << 20).ok()
    } else {
        Some(bytes.to_vec())
    }
}
