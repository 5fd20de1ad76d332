//! One macro: `AsyncWrite` for a stream wrapper, every call passed to its `inner` stream
//! (the wrappers of `rewind.rs` and `activity.rs` change reads, not writes).

/// Implements `AsyncWrite` for `$ty<S>` by passing each call to `self.inner`; `$wrote`
/// (a `fn(&Self)`) runs after each write that finished.
macro_rules! delegate_async_write {
    ($ty:ident, $wrote:expr) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let res = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
                if res.is_ready() {
                    $wrote(&*self);
                }
                res
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let res = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
                if res.is_ready() {
                    $wrote(&*self);
                }
                res
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}
