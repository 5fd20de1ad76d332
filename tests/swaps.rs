//! Table swaps under load, and per-service isolation of bad labels.

use interlock_testkit as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use interlock::config::DesiredState;

const CLIENTS: usize = 64;
const SWAPS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_swaps_under_64_clients_fail_no_request() {
    let one = TestBackend::named("one").await;
    let two = TestBackend::named("two").await;
    let three = TestBackend::named("three").await;
    let api = TestBackend::named("api").await;
    // Both states route web.local; they differ in endpoints, services and routes.
    let small = state(vec![host_service(
        "web",
        "web.local",
        &[one.endpoint(), two.endpoint()],
    )]);
    let big = state(vec![
        host_service(
            "web",
            "web.local",
            &[one.endpoint(), two.endpoint(), three.endpoint()],
        ),
        host_service("extra", "extra.local,*.extra.local", &[three.endpoint()]),
        service(
            "api",
            &[
                ("com.docker.lb.hosts", "web.local"),
                ("com.docker.lb.context_root", "/api"),
            ],
            &[api.endpoint()],
        ),
    ]);
    let proxy = Arc::new(TestProxy::start(&small).await);
    let start_generation = proxy.applier.store.snapshot().generation;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let per_client: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        // Each client has its own pool, so its sequential requests share one connection.
        let c = if i % 2 == 0 { client() } else { h2c_client() };
        let (stop, ok, failures, per_client) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            per_client.clone(),
        );
        let url = proxy.url(&format!("/client/{i}"));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(&url)
                    .header("host", "web.local")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let res = tokio::time::timeout(Duration::from_secs(10), async {
                    let resp = c
                        .request(req)
                        .await
                        .map_err(|e| format!("request: {e:?}"))?;
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("body: {e:?}"))?
                        .to_bytes();
                    Ok::<_, String>((status, body))
                })
                .await;
                match res {
                    Ok(Ok((status, body)))
                        if status == 200 && matches!(&body[..], b"one" | b"two" | b"three") =>
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                        per_client[i].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok((status, body))) => failures
                        .lock()
                        .unwrap()
                        .push(format!("client {i}: {status} {body:?}")),
                    Ok(Err(e)) => failures.lock().unwrap().push(format!("client {i}: {e}")),
                    Err(_) => failures
                        .lock()
                        .unwrap()
                        .push(format!("client {i}: no answer in 10 s")),
                }
            }
        }));
    }

    // Start swapping once every client is under way.
    let all_running = wait_until(Duration::from_secs(20), || {
        per_client.iter().all(|n| n.load(Ordering::Relaxed) > 0)
    })
    .await;
    assert!(all_running, "not every client got a first answer");
    let before: usize = ok.load(Ordering::Relaxed);
    let swapper = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            for n in 0..SWAPS {
                let s: &DesiredState = if n % 2 == 0 { &big } else { &small };
                proxy.apply(s);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    bounded("1000 swaps", 120, swapper).await.unwrap();
    let during = ok.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        bounded("client task", 15, t).await.unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        during > 0,
        "no request completed while the table was swapped"
    );
    assert_eq!(
        proxy.applier.store.snapshot().generation,
        start_generation + SWAPS as u64
    );
    // Requests only ever went to web's endpoints, never to the /api service.
    assert_eq!(api.requests.load(Ordering::SeqCst), 0);
    let served = one.requests.load(Ordering::SeqCst)
        + two.requests.load(Ordering::SeqCst)
        + three.requests.load(Ordering::SeqCst);
    assert_eq!(served, ok.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_bad_label_skips_only_that_service() {
    let good = TestBackend::named("good").await;
    let bad = TestBackend::named("bad").await;
    let proxy = TestProxy::start(&state(vec![
        host_service("good", "good.local", &[good.endpoint()]),
        service(
            "bad",
            &[
                ("com.docker.lb.hosts", "bad.local"),
                ("com.docker.lb.context_root", "no-slash"),
            ],
            &[bad.endpoint()],
        ),
    ]))
    .await;
    let c = client();
    assert_eq!(get(&c, &proxy, "good.local", "/").await.text(), "good");
    assert_eq!(get(&c, &proxy, "bad.local", "/").await.status, 503);
    assert_eq!(bad.requests.load(Ordering::SeqCst), 0);

    let table = proxy.applier.store.snapshot();
    assert_eq!(table.report.errors.len(), 1);
    let e = &table.report.errors[0];
    assert_eq!(e.service, "bad");
    assert!(!e.kept_last_good);
    assert_eq!(e.errors[0].label, "com.docker.lb.context_root");
    assert_eq!(e.errors[0].value, "no-slash");
    let msg = e.to_string();
    assert!(
        msg.contains("\"bad\"")
            && msg.contains("com.docker.lb.context_root")
            && msg.contains("not routed"),
        "{msg}"
    );
    let d = table.describe();
    assert_eq!(d["services"]["bad"]["status"], "rejected", "{d}");
    assert_eq!(d["services"]["good"]["status"], "active", "{d}");
    assert_eq!(metric(&proxy, "interlock_services_rejected"), Some(1.0));

    // Fixing the label routes it.
    proxy.apply(&state(vec![
        host_service("good", "good.local", &[good.endpoint()]),
        service(
            "bad",
            &[
                ("com.docker.lb.hosts", "bad.local"),
                ("com.docker.lb.context_root", "/ok"),
            ],
            &[bad.endpoint()],
        ),
    ]));
    assert_eq!(get(&c, &proxy, "bad.local", "/ok/x").await.text(), "bad");
    assert!(proxy.applier.store.snapshot().report.errors.is_empty());
    assert_eq!(metric(&proxy, "interlock_services_rejected"), Some(0.0));
}

#[tokio::test]
async fn a_service_whose_labels_break_keeps_its_last_good_routes() {
    let app = TestBackend::named("app").await;
    let app2 = TestBackend::named("app").await;
    let other = TestBackend::named("other").await;
    let good_labels = [
        ("com.docker.lb.hosts", "app.local"),
        ("com.docker.lb.context_root", "/app"),
        ("com.docker.lb.context_root_rewrite", "true"),
    ];
    let proxy = TestProxy::start(&state(vec![
        service("app", &good_labels, &[app.endpoint()]),
        host_service("other", "other.local", &[other.endpoint()]),
    ]))
    .await;
    let c = client();
    let r = get(&c, &proxy, "app.local", "/app/x").await;
    assert_eq!((r.status, r.header("x-seen-path")), (200, Some("/x")));

    // The labels become invalid (a bad host and a bad policy) and the service scales up.
    proxy.apply(&state(vec![
        service(
            "app",
            &[
                ("com.docker.lb.hosts", "app.local,bad host"),
                ("com.docker.lb.context_root", "/app"),
                ("com.docker.lb.context_root_rewrite", "true"),
                ("com.docker.lb.balance", "fastest"),
            ],
            &[app.endpoint(), app2.endpoint()],
        ),
        host_service("other", "other.local", &[other.endpoint()]),
    ]));
    // Still routed with the last good labels, on the current endpoints.
    for _ in 0..4 {
        let r = get(&c, &proxy, "app.local", "/app/y?q=1").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-seen-path"), Some("/y?q=1"));
    }
    assert_eq!(app.requests.load(Ordering::SeqCst), 3);
    assert_eq!(app2.requests.load(Ordering::SeqCst), 2);
    assert_eq!(get(&c, &proxy, "other.local", "/").await.text(), "other");

    let table = proxy.applier.store.snapshot();
    let report = &table.report;
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.errors[0].service, "app");
    assert!(report.errors[0].kept_last_good);
    let labels: Vec<&str> = report.errors[0]
        .errors
        .iter()
        .map(|e| e.label.as_str())
        .collect();
    assert_eq!(labels, ["com.docker.lb.balance", "com.docker.lb.hosts"]);

    // The admin view (`/routes`) names the service, the labels and the values.
    let d = table.describe();
    let err = &d["report"]["errors"][0];
    assert_eq!(err["service"], "app", "{d}");
    assert_eq!(err["kept_last_good"], true, "{d}");
    assert_eq!(err["errors"][0]["label"], "com.docker.lb.balance", "{d}");
    assert_eq!(err["errors"][0]["value"], "fastest", "{d}");
    assert_eq!(err["errors"][1]["label"], "com.docker.lb.hosts", "{d}");
    assert_eq!(err["errors"][1]["value"], "bad host", "{d}");
    assert_eq!(d["services"]["app"]["status"], "kept_last_good", "{d}");
    assert_eq!(
        d["services"]["app"]["labels"]["hosts"][0], "app.local",
        "{d}"
    );
    let json = d.to_string();
    assert!(
        json.contains("expected") && json.contains("round_robin"),
        "{json}"
    );

    // Still broken on the next swap: still the last good routes, not a rejection.
    let again = proxy.applier.store.snapshot();
    proxy.apply(&state(vec![
        service(
            "app",
            &[("com.docker.lb.hosts", "bad host")],
            &[app.endpoint()],
        ),
        host_service("other", "other.local", &[other.endpoint()]),
    ]));
    assert!(proxy.applier.store.snapshot().generation > again.generation);
    let r = get(&c, &proxy, "app.local", "/app/z").await;
    assert_eq!((r.status, r.header("x-seen-path")), (200, Some("/z")));
}
