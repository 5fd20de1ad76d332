//! Sticky sessions (`sticky_session_cookie`, `ip_hash`) and passive health (`max_fails`,
//! `fail_timeout`) through a real proxy.

use interlock_testkit as common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn get_with_cookie(proxy: &TestProxy, host: &str, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(proxy.url("/")).header("host", host);
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn cookie_pins_a_session_and_survives_swaps_and_scale_up() {
    let backends = [
        TestBackend::named("a").await,
        TestBackend::named("b").await,
        TestBackend::named("c").await,
    ];
    let labels = [
        ("com.docker.lb.hosts", "app.test"),
        ("com.docker.lb.sticky_session_cookie", "session"),
    ];
    let eps: Vec<_> = backends.iter().map(|b| b.endpoint()).collect();
    let proxy = TestProxy::start(&state(vec![service("app", &labels, &eps[..2])])).await;
    let c = client();

    // Each session sticks to one backend; different sessions spread.
    let mut owners = std::collections::BTreeMap::new();
    for s in 0..20 {
        let cookie = format!("theme=dark; session=user{s}");
        let first = send(&c, get_with_cookie(&proxy, "app.test", Some(&cookie)))
            .await
            .text();
        for _ in 0..5 {
            assert_eq!(
                send(&c, get_with_cookie(&proxy, "app.test", Some(&cookie)))
                    .await
                    .text(),
                first
            );
        }
        owners.insert(s, first);
    }
    let distinct: std::collections::BTreeSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        2,
        "sessions spread over both endpoints: {owners:?}"
    );

    // Requests without the cookie are not pinned: round robin.
    let plain: std::collections::BTreeSet<_> = {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(
                send(&c, get_with_cookie(&proxy, "app.test", None))
                    .await
                    .text(),
            );
        }
        seen
    };
    assert_eq!(plain.len(), 2);

    // A swap to the same endpoints keeps every session; adding an endpoint moves only
    // sessions to the new one.
    proxy.apply(&state(vec![service("app", &labels, &eps[..2])]));
    proxy.apply(&state(vec![service("app", &labels, &eps)]));
    let mut moved = 0;
    for (s, owner) in &owners {
        let now = send(
            &c,
            get_with_cookie(&proxy, "app.test", Some(&format!("session=user{s}"))),
        )
        .await
        .text();
        if &now != owner {
            assert_eq!(now, "c", "a session moved between old endpoints");
            moved += 1;
        }
    }
    assert!(moved < owners.len(), "most sessions stay where they were");
}

#[tokio::test]
async fn ip_hash_pins_the_client_address() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let labels = [
        ("com.docker.lb.hosts", "ip.test"),
        ("com.docker.lb.ip_hash", "true"),
    ];
    let proxy = TestProxy::start(&state(vec![service(
        "ip",
        &labels,
        &[a.endpoint(), b.endpoint()],
    )]))
    .await;
    let c = client();
    let first = get(&c, &proxy, "ip.test", "/").await.text();
    for _ in 0..10 {
        assert_eq!(
            get(&c, &proxy, "ip.test", "/").await.text(),
            first,
            "one client IP, one backend"
        );
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_taken_out_for_fail_timeout() {
    let good = TestBackend::named("good").await;
    // An endpoint that accepts connections and resets them: a hard upstream failure.
    let bad = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = bad.accept().await {
                drop(s);
            }
        }
    });
    let bad_ep = interlock::config::EndpointSpec {
        ip: bad_addr.ip(),
        port: Some(bad_addr.port()),
    };
    let labels = [
        ("com.docker.lb.hosts", "h.test"),
        ("com.docker.lb.max_fails", "2"),
        ("com.docker.lb.fail_timeout", "30s"),
    ];
    let proxy = TestProxy::start(&state(vec![service(
        "h",
        &labels,
        &[good.endpoint(), bad_ep],
    )]))
    .await;
    let c = client();
    let mut failures = 0;
    for _ in 0..20 {
        let r = get(&c, &proxy, "h.test", "/").await;
        if r.status != 200 {
            assert_eq!(r.status, 502, "{}", r.text());
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "the bad endpoint is out after max_fails failures"
    );
    let metrics = proxy.metrics.render();
    assert!(
        metrics.contains("interlock_upstream_errors_total{service=\"h\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn active_health_check_takes_a_failing_endpoint_out_and_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let sick = Arc::new(AtomicBool::new(true));
    let flag = sick.clone();
    let bad = TestBackend::with(move |req: hyper::Request<hyper::body::Incoming>| {
        let sick = flag.load(Ordering::SeqCst);
        async move {
            let mut resp = echo("bad", &req);
            if req.uri().path() == "/healthz" && sick {
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        }
    })
    .await;
    let good = TestBackend::named("good").await;
    let labels = [
        ("com.docker.lb.hosts", "hc.test"),
        ("com.docker.lb.health_path", "/healthz"),
        ("com.docker.lb.health_interval", "100ms"),
    ];
    let proxy = TestProxy::start(&state(vec![service(
        "hc",
        &labels,
        &[bad.endpoint(), good.endpoint()],
    )]))
    .await;
    tokio::spawn(interlock::maintenance::run_probes(
        proxy.applier.store.clone(),
    ));
    let c = client();
    let only_good = async {
        loop {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..6 {
                seen.insert(get(&c, &proxy, "hc.test", "/").await.text());
            }
            if seen.len() == 1 && seen.contains("good") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), only_good)
        .await
        .expect("sick endpoint taken out");
    sick.store(false, Ordering::SeqCst);
    let both = async {
        loop {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..6 {
                seen.insert(get(&c, &proxy, "hc.test", "/").await.text());
            }
            if seen.len() == 2 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), both)
        .await
        .expect("recovered endpoint back in");
}

#[tokio::test]
async fn weight_label_splits_beyond_replica_counts() {
    let v1 = TestBackend::named("v1").await;
    let v2 = TestBackend::named("v2").await;
    let proxy = TestProxy::start(&state(vec![
        service(
            "v1",
            &[
                ("com.docker.lb.hosts", "w.test"),
                ("com.docker.lb.weight", "3"),
            ],
            &[v1.endpoint()],
        ),
        service("v2", &[("com.docker.lb.hosts", "w.test")], &[v2.endpoint()]),
    ]))
    .await;
    let c = client();
    let mut v2_hits = 0;
    for _ in 0..40 {
        if get(&c, &proxy, "w.test", "/").await.text() == "v2" {
            v2_hits += 1;
        }
    }
    assert_eq!(
        v2_hits, 10,
        "weight 3 to 1 with one endpoint each: a quarter to v2"
    );
}

#[tokio::test]
async fn redirect_code_label_sets_the_status() {
    let proxy = TestProxy::start(&state(vec![service(
        "old",
        &[
            ("com.docker.lb.hosts", "old.test"),
            (
                "com.docker.lb.redirects",
                "http://old.test,https://new.test",
            ),
            ("com.docker.lb.redirect_code", "308"),
        ],
        &[],
    )]))
    .await;
    let r = get(&client(), &proxy, "old.test", "/a?b=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://new.test/a?b=1"));
}
