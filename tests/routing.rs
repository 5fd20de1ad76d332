//! Routing through a real proxy: hosts, wildcards, context roots, redirects, default backend.

use interlock_testkit as common;

use common::*;

#[tokio::test]
async fn routes_by_host_case_insensitively_and_ignores_port() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let proxy = TestProxy::start(&state(vec![
        host_service("a", "a.example.com", &[a.endpoint()]),
        host_service("b", "b.example.com", &[b.endpoint()]),
    ]))
    .await;
    let c = client();
    assert_eq!(get(&c, &proxy, "a.example.com", "/").await.text(), "a");
    assert_eq!(get(&c, &proxy, "B.Example.COM:8080", "/").await.text(), "b");
    let miss = get(&c, &proxy, "c.example.com", "/").await;
    assert_eq!(miss.status, 503);
    assert!(miss.text().contains("no route"), "{}", miss.text());
}

#[tokio::test]
async fn exact_host_routes_only_that_host() {
    let a = TestBackend::named("a").await;
    let proxy = TestProxy::start(&state(vec![host_service(
        "a",
        "app.example.com",
        &[a.endpoint()],
    )]))
    .await;
    let c = client();
    let hit = get(&c, &proxy, "app.example.com", "/x?y=1").await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.text(), "a");
    assert_eq!(hit.header("x-seen-path"), Some("/x?y=1"));
    // Neither a subdomain nor the parent domain nor a trailing-dot variant of another name.
    for other in ["www.app.example.com", "example.com", "app.example.org"] {
        assert_eq!(get(&c, &proxy, other, "/").await.status, 503, "{other}");
    }
    // A final dot is the same name.
    assert_eq!(get(&c, &proxy, "app.example.com.", "/").await.text(), "a");
}

#[tokio::test]
async fn wildcard_matches_any_depth_and_most_specific_wins() {
    let any = TestBackend::named("any").await;
    let api = TestBackend::named("api").await;
    let www = TestBackend::named("www").await;
    let proxy = TestProxy::start(&state(vec![
        host_service("any", "*.example.com", &[any.endpoint()]),
        host_service("api", "*.api.example.com", &[api.endpoint()]),
        host_service("www", "www.example.com", &[www.endpoint()]),
    ]))
    .await;
    let c = client();
    for (host, want) in [
        ("x.example.com", "any"),
        ("a.b.c.example.com", "any"),
        ("API.example.com", "any"), // *.api needs a label below api
        ("v1.api.example.com", "api"),
        ("deep.v1.api.example.com", "api"),
        ("www.example.com", "www"), // exact beats every wildcard
        ("sub.www.example.com:81", "any"),
    ] {
        let r = get(&c, &proxy, host, "/").await;
        assert_eq!((r.status, r.text().as_str()), (200, want), "{host}");
    }
    // A wildcard does not match the bare domain.
    assert_eq!(get(&c, &proxy, "example.com", "/").await.status, 503);
    assert_eq!(get(&c, &proxy, "xexample.com", "/").await.status, 503);
}

fn rooted(name: &str, host: &str, root: &str, ep: &TestBackend) -> interlock::config::ServiceSpec {
    service(
        name,
        &[
            ("com.docker.lb.hosts", host),
            ("com.docker.lb.context_root", root),
        ],
        &[ep.endpoint()],
    )
}

#[tokio::test]
async fn longest_context_root_wins_on_segment_boundaries() {
    let whole = TestBackend::named("whole").await;
    let api = TestBackend::named("api").await;
    let v2 = TestBackend::named("v2").await;
    let proxy = TestProxy::start(&state(vec![
        host_service("whole", "app.local", &[whole.endpoint()]),
        rooted("api", "app.local", "/api", &api),
        rooted("v2", "app.local", "/api/v2/", &v2),
    ]))
    .await;
    let c = client();
    for (path, want) in [
        ("/", "whole"),
        ("/other", "whole"),
        ("/api", "api"),
        ("/api/", "api"),
        ("/api?x=/api/v2", "api"),
        ("/api/x", "api"),
        ("/apis", "whole"),
        ("/api/v2", "v2"),
        ("/api/v2/users?id=1", "v2"),
        ("/api/v20", "api"),
        ("/api/v2x/y", "api"),
    ] {
        let r = get(&c, &proxy, "app.local", path).await;
        assert_eq!((r.status, r.text().as_str()), (200, want), "{path}");
        // Without rewrite the upstream sees the path unchanged.
        assert_eq!(r.header("x-seen-path"), Some(path), "{path}");
    }
}

#[tokio::test]
async fn context_root_does_not_match_a_longer_segment() {
    let app = TestBackend::named("app").await;
    let proxy = TestProxy::start(&state(vec![rooted("app", "app.local", "/app", &app)])).await;
    let c = client();
    assert_eq!(get(&c, &proxy, "app.local", "/app").await.text(), "app");
    assert_eq!(get(&c, &proxy, "app.local", "/app/x").await.text(), "app");
    for path in ["/application", "/app.js", "/ap", "/", "/other/app"] {
        let r = get(&c, &proxy, "app.local", path).await;
        assert_eq!(r.status, 503, "{path} must not reach /app");
        assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn context_root_rewrite_strips_prefix_and_redirects_bare_root() {
    let app = TestBackend::named("app").await;
    let proxy = TestProxy::start(&state(vec![service(
        "app",
        &[
            ("com.docker.lb.hosts", "app.local"),
            ("com.docker.lb.context_root", "/app"),
            ("com.docker.lb.context_root_rewrite", "true"),
        ],
        &[app.endpoint()],
    )]))
    .await;
    let c = client();
    for (path, seen) in [
        ("/app/foo?q=1", "/foo?q=1"),
        ("/app/", "/"),
        ("/app/a/b/", "/a/b/"),
        ("/app/?q=2", "/?q=2"),
    ] {
        let r = get(&c, &proxy, "app.local", path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-seen-path"), Some(seen), "{path}");
    }
    let before = app.requests.load(std::sync::atomic::Ordering::SeqCst);
    for (path, location) in [("/app", "/app/"), ("/app?q=1", "/app/?q=1")] {
        let r = get(&c, &proxy, "app.local", path).await;
        assert_eq!(r.status, 301, "{path}");
        assert_eq!(r.header("location"), Some(location), "{path}");
    }
    // The redirect is answered by the proxy itself.
    assert_eq!(
        app.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
}

#[tokio::test]
async fn redirects_label_answers_302_with_original_uri() {
    let app = TestBackend::named("new").await;
    let proxy = TestProxy::start(&state(vec![service(
        "app",
        &[
            ("com.docker.lb.hosts", "old.local,new.local"),
            (
                "com.docker.lb.redirects",
                "http://old.local,http://new.local;",
            ),
        ],
        &[app.endpoint()],
    )]))
    .await;
    let c = client();
    let r = get(&c, &proxy, "old.local", "/some/path?x=1&y=2").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://new.local/some/path?x=1&y=2")
    );
    let r = get(&c, &proxy, "OLD.local:80", "/").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://new.local/"));
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The target host is served normally.
    let r = get(&c, &proxy, "new.local", "/some/path").await;
    assert_eq!((r.status, r.text().as_str()), (200, "new"));
}

#[tokio::test]
async fn default_backend_catches_unknown_hosts() {
    let app = TestBackend::named("app").await;
    let fallback = TestBackend::named("fallback").await;
    let proxy = TestProxy::start(&state(vec![
        host_service("app", "app.local", &[app.endpoint()]),
        service(
            "fallback",
            &[("com.docker.lb.default_backend", "true")],
            &[fallback.endpoint()],
        ),
    ]))
    .await;
    let c = client();
    assert_eq!(get(&c, &proxy, "app.local", "/").await.text(), "app");
    for host in ["unknown.local", "127.0.0.1", "x.app.local"] {
        let r = get(&c, &proxy, host, "/p").await;
        assert_eq!((r.status, r.text().as_str()), (200, "fallback"), "{host}");
        assert_eq!(r.header("x-seen-path"), Some("/p"));
    }

    // Without a default backend an unknown host gets a readable 503.
    proxy.apply(&state(vec![host_service(
        "app",
        "app.local",
        &[app.endpoint()],
    )]));
    let r = get(&c, &proxy, "unknown.local", "/").await;
    assert_eq!(r.status, 503);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    assert!(r.text().starts_with("503"), "{}", r.text());
    assert!(r.text().contains("no route"), "{}", r.text());
}

#[tokio::test]
async fn canary_splits_by_endpoint_count() {
    let v1: Vec<TestBackend> = vec![
        TestBackend::named("v1").await,
        TestBackend::named("v1").await,
        TestBackend::named("v1").await,
    ];
    let v2 = TestBackend::named("v2").await;
    let v1_eps: Vec<_> = v1.iter().map(TestBackend::endpoint).collect();
    let proxy = TestProxy::start(&state(vec![
        host_service("demo-v1", "demo.local", &v1_eps),
        host_service("demo-v2", "demo.local", &[v2.endpoint()]),
    ]))
    .await;
    let c = client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..40 {
        let r = get(&c, &proxy, "demo.local", "/").await;
        assert_eq!(r.status, 200);
        *counts.entry(r.text()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("v1"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("v2"), Some(&10), "{counts:?}");
    for b in &v1 {
        assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 10);
    }

    // Shift traffic by scaling: v1 down to zero endpoints, all traffic to v2.
    proxy.apply(&state(vec![
        host_service("demo-v1", "demo.local", &[]),
        host_service("demo-v2", "demo.local", &[v2.endpoint()]),
    ]));
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy, "demo.local", "/").await.text(), "v2");
    }
}

#[tokio::test]
async fn service_of_another_cluster_is_not_routed() {
    let east = TestBackend::named("east").await;
    let local = TestBackend::named("local").await;
    let proxy = TestProxy::start(&state(vec![
        service(
            "east",
            &[
                ("com.docker.lb.hosts", "east.local,shared.local"),
                ("com.docker.lb.service_cluster", "us-east"),
            ],
            &[east.endpoint()],
        ),
        host_service("local", "shared.local", &[local.endpoint()]),
    ]))
    .await;
    let c = client();
    assert_eq!(get(&c, &proxy, "east.local", "/").await.status, 503);
    // The shared host only has this cluster's service.
    for _ in 0..4 {
        assert_eq!(get(&c, &proxy, "shared.local", "/").await.text(), "local");
    }
    assert_eq!(east.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    let table = proxy.applier.store.snapshot();
    assert!(!table.services.contains_key("east"));
    assert!(table.report.errors.is_empty());
}

#[tokio::test]
async fn https_redirect_is_not_applied_on_the_http_listener() {
    // `redirects=https://a,https://b` only concerns requests that came in over HTTPS.
    let app = TestBackend::named("app").await;
    let proxy = TestProxy::start(&state(vec![service(
        "app",
        &[
            ("com.docker.lb.hosts", "a.local,b.local"),
            ("com.docker.lb.redirects", "https://a.local,https://b.local"),
        ],
        &[app.endpoint()],
    )]))
    .await;
    let r = get(&client(), &proxy, "a.local", "/x").await;
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
}

#[tokio::test]
async fn http_to_https_redirect_for_one_host() {
    let app = TestBackend::named("app").await;
    let proxy = TestProxy::start(&state(vec![service(
        "app",
        &[
            ("com.docker.lb.hosts", "app.example.org"),
            (
                "com.docker.lb.redirects",
                "http://app.example.org,https://app.example.org",
            ),
        ],
        &[app.endpoint()],
    )]))
    .await;
    let r = get(&client(), &proxy, "app.example.org:80", "/login?next=/home").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://app.example.org/login?next=/home")
    );
}
