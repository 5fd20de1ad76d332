//! The proxy's own settings (listeners aside): timeouts, limits and pool sizes, with every
//! default in one place.

use std::time::Duration;

/// Timeouts and limits of the data plane. Cloned into the proxy at start-up; a change
/// needs a restart (routes, by contrast, never do).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Time a client has to send a complete request head (slowloris guard). hyper runs this
    /// timer while an HTTP/1.1 connection waits for its next request too, so it also bounds
    /// how long an idle HTTP/1.1 keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (HTTP/2
    /// keep-alive pings do not count as activity). A request in flight whose bytes stop
    /// moving for this long gets a graceful close: it may finish, nothing new is accepted.
    pub idle_timeout: Duration,
    /// Time to establish a TCP connection to an upstream.
    pub connect_timeout: Duration,
    /// Time from sending a request upstream to receiving its response head.
    pub upstream_timeout: Duration,
    /// A request body that sends no byte for this long is cut with 408, blamed on the
    /// client (not the upstream). Shorter than `upstream_timeout`, so a stalled client is
    /// always told apart from a slow upstream.
    pub body_read_timeout: Duration,
    /// Pooled upstream connections idle longer than this are not reused. Kept below the
    /// keep-alive of common backends (Node.js: 5 s) so that the backend rarely closes a
    /// connection just as it is reused.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream endpoint.
    pub pool_max_idle_per_endpoint: usize,
    /// Largest request head accepted (HTTP/1 read buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most request header fields accepted (HTTP/1).
    pub max_headers: usize,
    /// Largest request body forwarded (`None`: no limit; bodies stream, so memory stays
    /// bounded either way). Interlock's nginx used `client_max_body_size 32m`.
    pub max_body_bytes: Option<u64>,
    /// Time graceful shutdown waits for in-flight requests and tunnels.
    pub drain_timeout: Duration,
    /// Value of `X-Forwarded-Proto` for this listener's requests.
    pub scheme: Scheme,
}

/// The scheme a listener serves, as seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle_per_endpoint: 256,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            drain_timeout: Duration::from_secs(30),
            scheme: Scheme::Http,
        }
    }
}
