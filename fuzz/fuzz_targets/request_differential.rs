//! Differential: the same bytes read by the fast path's request-head reader
//! (`src/proxy/fast_h1/request.rs`), by httparse directly, and by hyper's HTTP/1.1 server
//! (configured as interlock configures it, driven in memory).
//!
//! Asserts: whenever the fast path says `Plain` (it serves the request itself), httparse
//! reads a complete head of the same length, method, target and version 1.1; the fields
//! say one Host, no Transfer-Encoding, at most one Content-Length of digits equal to the
//! fast path's body length, no Upgrade or Expect; and hyper accepts the same bytes as one
//! request with the same method, target, Host and body (the `body_len` bytes after the
//! head). Otherwise the fast path hands off (`Other`), or waits (`Partial`) only while
//! httparse waits too.
#![no_main]

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::service::service_fn;
use hyper::{Request, Response};
use interlock::fuzzing::{request_head, RequestHead};
use libfuzzer_sys::fuzz_target;

/// interlock's defaults (`--max-headers`, `--max-header-bytes`).
const MAX_FIELDS: usize = 100;
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A connection whose client sent `input`, then half-closed.
struct Mem {
    input: Vec<u8>,
    at: usize,
}

impl Read for Mem {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at == self.input.len() {
            // The client keeps its connection open (an end of stream would make hyper
            // drop the request in flight).
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.input.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl Write for Mem {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug)]
struct Seen {
    method: String,
    target: String,
    host: Option<Vec<u8>>,
    version: http::Version,
    /// `None`: the body was not read whole (more bytes would be needed).
    body: Option<Bytes>,
}

/// The first request hyper's server reads from `input`.
fn hyper_reads(input: &[u8]) -> Option<Seen> {
    let seen: Rc<RefCell<Option<Seen>>> = Rc::default();
    let record = seen.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let first = record.borrow().is_none();
            if first {
                *record.borrow_mut() = Some(Seen {
                    method: parts.method.to_string(),
                    target: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    host: parts.headers.get("host").map(|v| v.as_bytes().to_vec()),
                    version: parts.version,
                    body: None,
                });
            }
            let body = body.collect().await.ok().map(|b| b.to_bytes());
            if let (true, Some(seen)) = (first, record.borrow_mut().as_mut()) {
                seen.body = body;
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_headers(MAX_FIELDS)
        .keep_alive(true);
    let conn = builder.serve_connection(
        Mem {
            input: input.to_vec(),
            at: 0,
        },
        service,
    );
    let mut conn = std::pin::pin!(conn);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..16 {
        if conn.as_mut().poll(&mut cx).is_ready() {
            break;
        }
        if seen.borrow().as_ref().is_some_and(|s| s.body.is_some()) {
            break;
        }
    }
    seen.take()
}

fuzz_target!(|buf: &[u8]| {
    let fast = request_head(buf, MAX_FIELDS);
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(buf);
    let h = match fast {
        RequestHead::Plain(h) => h,
        RequestHead::Partial => {
            assert!(
                matches!(parsed, Ok(httparse::Status::Partial)),
                "the fast path waits, httparse does not: {parsed:?}"
            );
            return;
        }
        RequestHead::Other => return,
    };
    // httparse, directly.
    let Ok(httparse::Status::Complete(len)) = parsed else {
        panic!("the fast path serves what httparse refuses: {parsed:?}");
    };
    assert_eq!(len, h.len);
    assert_eq!(req.method.map(str::as_bytes), Some(&buf[h.method.clone()]));
    assert_eq!(req.path.map(str::as_bytes), Some(&buf[h.target.clone()]));
    assert_eq!(req.version, Some(1));
    let headers: &[httparse::Header<'_>] = req.headers;
    let named = |n: &'static str| {
        headers
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(n))
    };
    assert_eq!(named("host").count(), 1);
    assert_eq!(
        named("host").next().map(|f| f.value),
        Some(&buf[h.host.clone()])
    );
    assert_eq!(named("transfer-encoding").count(), 0);
    assert_eq!(named("upgrade").count(), 0);
    assert_eq!(named("expect").count(), 0);
    let lengths: Vec<&[u8]> = named("content-length").map(|f| f.value).collect();
    match lengths[..] {
        [] => assert_eq!(h.body_len, 0),
        [v] => {
            let v = std::str::from_utf8(v).expect("digits");
            assert!(v.bytes().all(|b| b.is_ascii_digit()), "{v:?}");
            assert_eq!(v.parse::<u64>().ok(), Some(h.body_len));
        }
        _ => panic!(
            "the fast path serves {} Content-Length fields",
            lengths.len()
        ),
    }
    // hyper, on the same bytes.
    let Some(seen) = hyper_reads(buf) else {
        panic!(
            "hyper refuses a head the fast path serves: {:?}",
            String::from_utf8_lossy(&buf[..h.len])
        );
    };
    assert_eq!(seen.method.as_bytes(), &buf[h.method.clone()]);
    assert_eq!(seen.target.as_bytes(), &buf[h.target.clone()]);
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.host.as_deref(), Some(&buf[h.host.clone()]));
    let end = h.len as u64 + h.body_len;
    if end <= buf.len() as u64 {
        let body = seen.body.expect("hyper reads the whole body");
        assert_eq!(&body[..], &buf[h.len..end as usize]);
    }
});
