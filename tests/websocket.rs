//! Websockets through a real proxy: the upgrade, echo through the tunnel, and tunnels that
//! outlive table swaps and the removal of their own route.

use interlock_testkit as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use interlock::config::DesiredState;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A websocket echo server (RFC 6455 handshake by tungstenite) on 127.0.0.1.
struct EchoServer {
    addr: std::net::SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let h = handshakes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    // tungstenite answers pings and the close handshake itself.
                    while let Some(Ok(msg)) = ws.next().await {
                        let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                        if echo && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            handshakes,
            task,
        }
    }

    fn endpoint(&self) -> interlock::config::EndpointSpec {
        interlock::config::EndpointSpec {
            ip: self.addr.ip(),
            port: Some(self.addr.port()),
        }
    }
}

fn ws_state(server: &EchoServer) -> DesiredState {
    state(vec![service(
        "chat",
        &[
            ("com.docker.lb.hosts", "chat.local"),
            ("com.docker.lb.websocket_endpoints", "/ws"),
        ],
        &[server.endpoint()],
    )])
}

/// Opens a websocket to `path` through the proxy with Host `chat.local`.
async fn connect(proxy: &TestProxy, path: &str) -> WebSocketStream<TcpStream> {
    let mut req = format!("ws://{}{}", proxy.addr, path)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", "chat.local".parse().unwrap());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (ws, resp) = bounded(
        "websocket handshake",
        10,
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo_once(ws: &mut WebSocketStream<TcpStream>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = bounded("websocket echo", 10, ws.next())
        .await
        .expect("websocket still open")
        .expect("websocket frame");
    assert_eq!(got, Message::text(text));
}

#[tokio::test]
async fn websocket_echoes_across_100_table_swaps() {
    let server = EchoServer::start().await;
    let other = TestBackend::named("other").await;
    let base = ws_state(&server);
    let mut bigger = base.clone();
    bigger.services.push(host_service(
        "other",
        "other.local,chat2.local",
        &[other.endpoint()],
    ));
    let proxy = TestProxy::start(&base).await;
    let mut ws = connect(&proxy, "/ws").await;
    for i in 0..100 {
        proxy.apply(if i % 2 == 0 { &bigger } else { &base });
        echo_once(&mut ws, &format!("message {i}")).await;
    }
    // Binary frames and a large message pass through unchanged too.
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = bounded("binary echo", 10, ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::binary(big));
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 1);
    // Plain HTTP on the same proxy follows the table meanwhile.
    assert_eq!(get(&client(), &proxy, "other.local", "/").await.status, 503);
    proxy.apply(&bigger);
    assert_eq!(
        get(&client(), &proxy, "other.local", "/").await.text(),
        "other"
    );
    echo_once(&mut ws, "last").await;
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_stays_open_when_its_route_is_removed() {
    let server = EchoServer::start().await;
    let proxy = TestProxy::start(&ws_state(&server)).await;
    let mut ws = connect(&proxy, "/ws").await;
    echo_once(&mut ws, "before").await;

    // The route, the service and its endpoint leave the table.
    proxy.apply(&state(vec![]));
    let r = get(&client(), &proxy, "chat.local", "/ws").await;
    assert_eq!(r.status, 503);
    // The established tunnel does not depend on the table.
    for i in 0..10 {
        echo_once(&mut ws, &format!("after {i}")).await;
    }
    // A new websocket cannot be opened any more.
    let mut req = format!("ws://{}/ws", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", "chat.local".parse().unwrap());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let refused = bounded(
        "refused handshake",
        10,
        tokio_tungstenite::client_async(req, stream),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected a 503 handshake answer, got {other:?}"),
    }
    echo_once(&mut ws, "still").await;
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn open_tunnels_gauge_counts_the_websocket() {
    let server = EchoServer::start().await;
    let proxy = TestProxy::start(&ws_state(&server)).await;
    assert_eq!(proxy.metrics.open_tunnels.get(), 0);
    let mut ws = connect(&proxy, "/ws").await;
    echo_once(&mut ws, "hello").await;
    assert!(
        wait_until(Duration::from_secs(5), || proxy.metrics.open_tunnels.get()
            == 1)
        .await,
        "open_tunnels = {}",
        proxy.metrics.open_tunnels.get()
    );
    assert_eq!(
        metric(&proxy, "interlock_open_tunnels"),
        Some(1.0),
        "the gauge is exported"
    );

    // Close handshake: both sides close and the tunnel task ends.
    ws.close(None).await.unwrap();
    let rest = bounded("close handshake", 10, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    drop((rest, ws));
    assert!(
        wait_until(Duration::from_secs(5), || proxy.metrics.open_tunnels.get()
            == 0)
        .await,
        "open_tunnels = {}",
        proxy.metrics.open_tunnels.get()
    );
    assert!(
        wait_until(Duration::from_secs(5), || proxy.proxy.tracker.live() == 0).await,
        "tracked connections/tunnels left: {}",
        proxy.proxy.tracker.live()
    );
}

#[tokio::test]
async fn upgrade_refused_by_the_backend_is_passed_through() {
    // A plain HTTP backend answers the upgrade request with a normal 200: no tunnel.
    let backend = TestBackend::named("plain").await;
    let proxy = TestProxy::start(&state(vec![host_service(
        "chat",
        "chat.local",
        &[backend.endpoint()],
    )]))
    .await;
    let mut req = format!("ws://{}/ws", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", "chat.local".parse().unwrap());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let res = bounded(
        "handshake",
        10,
        tokio_tungstenite::client_async(req, stream),
    )
    .await;
    match res {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 200);
            // The backend saw the upgrade request with its Upgrade/Connection pair.
            assert_eq!(
                resp.headers()
                    .get("x-seen-connection")
                    .map(|v| v.to_str().unwrap()),
                Some("upgrade")
            );
        }
        other => panic!("expected the backend's 200, got {other:?}"),
    }
    assert_eq!(proxy.metrics.open_tunnels.get(), 0);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}
