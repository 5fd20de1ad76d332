//! Routing through a real proxy: hosts, wildcards, context roots, redirects, default backend.

mod common;

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
