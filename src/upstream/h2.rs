//! HTTP/2 cleartext (h2c) to endpoints labelled `backend_protocol=h2c` (gRPC servers): one
//! multiplexed connection per endpoint, shared by every request, replaced when it closes.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{ConnectError, Upstream, UpstreamBody};

impl Upstream {
    /// A sender on the endpoint's shared HTTP/2 connection, connecting if there is none.
    pub async fn h2_sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<UpstreamBody>, ConnectError> {
        if let Some(tx) = self.h2_slot().load_full() {
            if !tx.is_closed() {
                return Ok((*tx).clone());
            }
        }
        // Boxed: the connect and handshake futures would otherwise make every request's
        // future larger, though they run once per connection.
        Box::pin(self.connect_h2(connect_timeout)).await
    }

    async fn connect_h2(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<UpstreamBody>, ConnectError> {
        let addr = self.addr;
        let stream = super::pool::connect_tcp(addr, connect_timeout).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "h2c upstream connection ended with an error");
            }
        });
        if !self.is_retired() {
            self.h2_slot().store(Some(Arc::new(tx.clone())));
        }
        Ok(tx)
    }

    /// The shared-connection slot, created on first use (only h2c endpoints need one).
    fn h2_slot(&self) -> &arc_swap::ArcSwapOption<http2::SendRequest<UpstreamBody>> {
        self.h2.get_or_init(arc_swap::ArcSwapOption::empty)
    }

    /// Drops the shared HTTP/2 connection (it closes once its streams end).
    pub fn drop_h2(&self) {
        if let Some(slot) = self.h2.get() {
            slot.store(None);
        }
    }
}
