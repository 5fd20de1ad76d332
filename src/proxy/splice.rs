//! Bytes both ways between two streams (upgrade tunnels, TLS passthrough), as
//! `tokio::io::copy_bidirectional` does, but without a buffer per direction for the life of
//! the tunnel: each read goes through the stack and is written on at once; only bytes the
//! other side could not take yet are kept, on the heap, until written. An idle tunnel then
//! holds no buffer at all (tokio's copy holds two, 16 KiB each here before).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes one read moves.
const CHUNK: usize = 16 * 1024;

/// Copies `a` to `b` and `b` to `a` until both have ended (each end of stream is passed on
/// as a write shutdown); the bytes moved each way, `a` to `b` first. The first error ends
/// both.
pub(super) async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Half::default();
    let mut down = Half::default();
    poll_fn(|cx| {
        let a_to_b = up.poll(cx, &mut *a, &mut *b)?;
        let b_to_a = down.poll(cx, &mut *b, &mut *a)?;
        ready!(a_to_b);
        ready!(b_to_a);
        Poll::Ready(Ok((up.moved, down.moved)))
    })
    .await
}

/// One direction.
#[derive(Default)]
struct Half {
    /// Read but not yet written (the writer was not ready), from `at` on.
    pending: Vec<u8>,
    at: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader ended.
    eof: bool,
    /// The end was passed on: this direction is over.
    done: bool,
    moved: u64,
}

impl Half {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.at < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
                self.moved += n as u64;
                self.unflushed = true;
            }
            if !self.pending.is_empty() {
                // Written: hold no buffer again.
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut read = ReadBuf::uninit(&mut stack);
            if Pin::new(&mut *r).poll_read(cx, &mut read)?.is_pending() {
                if self.unflushed {
                    ready!(Pin::new(&mut *w).poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            let mut got = read.filled();
            if got.is_empty() {
                self.eof = true;
                continue;
            }
            while !got.is_empty() {
                match Pin::new(&mut *w).poll_write(cx, got) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        got = &got[n..];
                        self.moved += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = got.to_vec();
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both directions carry every byte in order, through pipes small enough that writes
    /// wait (the bytes kept on the heap), and each end of stream reaches the other side.
    #[tokio::test]
    async fn moves_both_ways_and_passes_ends_on() {
        let (client, mut a) = tokio::io::duplex(1000);
        let (mut b, server) = tokio::io::duplex(777);
        let tunnel = tokio::spawn(async move { splice(&mut a, &mut b).await });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        // One end: sends `out` then its end of stream, and reads everything to the end.
        async fn end(stream: tokio::io::DuplexStream, out: Vec<u8>) -> Vec<u8> {
            let (mut r, mut w) = tokio::io::split(stream);
            let writer = async {
                w.write_all(&out).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let reader = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(writer, reader);
            n.unwrap();
            got
        }
        let client_side = tokio::spawn(end(client, up.clone()));
        let server_side = tokio::spawn(end(server, down.clone()));
        let at_client = client_side.await.unwrap();
        let at_server = server_side.await.unwrap();
        assert_eq!(at_server, up);
        assert_eq!(at_client, down);
        let moved = tunnel.await.unwrap().unwrap();
        assert_eq!(moved, (up.len() as u64, down.len() as u64));
    }
}
