//! Load balancing through a real proxy: round robin, least connections, and balancing
//! state (cursors, pools) across table swaps.

use interlock_testkit as common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use interlock::config::EndpointSpec;

async fn three() -> [TestBackend; 3] {
    [
        TestBackend::named("a").await,
        TestBackend::named("b").await,
        TestBackend::named("c").await,
    ]
}

fn eps(backends: &[TestBackend]) -> Vec<EndpointSpec> {
    backends.iter().map(TestBackend::endpoint).collect()
}

#[tokio::test]
async fn round_robin_is_exact_over_three_endpoints() {
    let backends = three().await;
    let proxy = TestProxy::start(&state(vec![host_service(
        "app",
        "app.local",
        &eps(&backends),
    )]))
    .await;
    let c = client();
    let mut order = Vec::new();
    for _ in 0..30 {
        let r = get(&c, &proxy, "app.local", "/").await;
        assert_eq!(r.status, 200);
        order.push(r.text());
    }
    for b in &backends {
        assert_eq!(b.requests.load(Ordering::SeqCst), 10);
    }
    // Strict rotation: every window of three sees each endpoint once.
    for w in order.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["a", "b", "c"], "{order:?}");
    }
}

#[tokio::test]
async fn least_conn_avoids_the_busy_endpoint() {
    // `busy` holds every request until released; `free` answers at once.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let busy = TestBackend::with(move |_req: Request<Incoming>| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.unwrap();
            Response::new(Full::new(Bytes::from_static(b"busy")))
        }
    })
    .await;
    let free = TestBackend::named("free").await;
    let proxy = TestProxy::start(&state(vec![service(
        "app",
        &[
            ("com.docker.lb.hosts", "app.local"),
            ("com.docker.lb.balance", "least_conn"),
        ],
        &[busy.endpoint(), free.endpoint()],
    )]))
    .await;
    let c = client();

    // Park one request on `busy` (with both idle, the first pick may go either way).
    let mut parked = Vec::new();
    let landed = bounded("a request reaches the busy endpoint", 10, async {
        loop {
            let c = c.clone();
            let pa = proxy.url("/");
            parked.push(tokio::spawn(async move {
                send(
                    &c,
                    Request::get(pa)
                        .header("host", "app.local")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
            }));
            let done = wait_until(Duration::from_millis(500), || {
                busy.requests.load(Ordering::SeqCst) == 1 || parked.last().unwrap().is_finished()
            })
            .await;
            assert!(done);
            if busy.requests.load(Ordering::SeqCst) == 1 {
                return true;
            }
        }
    })
    .await;
    assert!(landed);
    let describe = proxy.applier.store.snapshot().describe();
    let actives: Vec<_> = describe["routes"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["active"].as_u64().unwrap())
        .collect();
    assert_eq!(actives.iter().sum::<u64>(), 1, "{describe}");

    // Every new request now goes to the endpoint with fewer requests in flight. Round robin
    // would send every other one to `busy`, where it would hang (and time out here).
    for i in 0..10 {
        let r = bounded(
            &format!("request {i} avoids the busy endpoint"),
            5,
            get(&c, &proxy, "app.local", "/"),
        )
        .await;
        assert_eq!((r.status, r.text().as_str()), (200, "free"));
    }
    assert_eq!(busy.requests.load(Ordering::SeqCst), 1);

    release.add_permits(100);
    for p in parked {
        let r = bounded("parked request", 5, p).await.unwrap();
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn cursor_and_pooled_connections_survive_table_swaps() {
    let backends = three().await;
    let desired = state(vec![host_service("app", "app.local", &eps(&backends))]);
    let proxy = TestProxy::start(&desired).await;
    let c = client();
    let mut order = Vec::new();
    for i in 0..30 {
        // An equivalent state, and one with an unrelated extra service.
        if i % 2 == 0 {
            proxy.apply(&desired);
        } else {
            let mut more = desired.clone();
            more.services.push(host_service(
                "other",
                "other.local",
                &[backends[0].endpoint()],
            ));
            proxy.apply(&more);
        }
        let r = get(&c, &proxy, "app.local", "/").await;
        assert_eq!(r.status, 200);
        order.push(r.text());
    }
    // Rotation continued across 30 swaps, exactly as without them.
    for w in order.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["a", "b", "c"], "{order:?}");
    }
    for b in &backends {
        assert_eq!(b.requests.load(Ordering::SeqCst), 10);
        // One upstream connection per endpoint, reused across every swap.
        assert_eq!(b.connections.load(Ordering::SeqCst), 1);
        assert_eq!(b.closed.load(Ordering::SeqCst), 0);
    }
    assert!(proxy.applier.store.snapshot().generation >= 31);
}

#[tokio::test]
async fn removed_endpoint_has_its_idle_connections_closed() {
    let [a, b, _] = three().await;
    let proxy = TestProxy::app(&[a.endpoint(), b.endpoint()]).await;
    let c = client();
    for _ in 0..4 {
        assert_eq!(get(&c, &proxy, "app.local", "/").await.status, 200);
    }
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);
    assert_eq!(b.closed.load(Ordering::SeqCst), 0);

    // Scale down: b leaves the table.
    proxy.apply(&state(vec![host_service(
        "app",
        "app.local",
        &[a.endpoint()],
    )]));
    let closed = wait_until(Duration::from_secs(5), || {
        b.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        closed,
        "the departed endpoint's pooled connection was not closed"
    );
    // The remaining endpoint keeps its pooled connection.
    for _ in 0..4 {
        assert_eq!(get(&c, &proxy, "app.local", "/").await.text(), "a");
    }
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
    assert_eq!(a.closed.load(Ordering::SeqCst), 0);
    assert_eq!(b.requests.load(Ordering::SeqCst), 2);

    // Scaling back up opens a fresh connection to b.
    proxy.apply(&state(vec![host_service(
        "app",
        "app.local",
        &[a.endpoint(), b.endpoint()],
    )]));
    let mut seen = HashMap::new();
    for _ in 0..4 {
        *seen
            .entry(get(&c, &proxy, "app.local", "/").await.text())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("b"), Some(&2), "{seen:?}");
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_in_use_by_a_removed_endpoint_finishes_then_closes() {
    // A response in flight when its endpoint leaves the table completes normally; its
    // connection is then closed rather than pooled.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let slow = TestBackend::with(move |_req: Request<Incoming>| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.unwrap();
            Response::new(Full::new(Bytes::from_static(b"slow")))
        }
    })
    .await;
    let proxy = TestProxy::app(&[slow.endpoint()]).await;
    let c = client();
    let pending = {
        let c = c.clone();
        let url = proxy.url("/");
        tokio::spawn(async move {
            send(
                &c,
                Request::get(url)
                    .header("host", "app.local")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || slow
            .requests
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    proxy.apply(&state(vec![]));
    release.add_permits(1);
    let r = bounded("in-flight request", 5, pending).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    assert!(
        wait_until(Duration::from_secs(5), || slow
            .closed
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the retired endpoint's connection was pooled instead of closed"
    );
    assert_eq!(get(&c, &proxy, "app.local", "/").await.status, 503);
}
