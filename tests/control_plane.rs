//! The split roles as an operator runs them: `interlock certs`, one `controller` (file
//! provider, so no Docker is needed) and `proxy` processes per service cluster, talking
//! over mutual TLS on 127.0.0.1.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::node::{eventually, try_http, Node, Scratch};
use common::{free_port, TestBackend};

fn service(name: &str, cluster: &str, host: &str, backend: &TestBackend, extra: &str) -> String {
    let cluster_label = if cluster.is_empty() {
        String::new()
    } else {
        format!("\"com.docker.lb.service_cluster\" = \"{cluster}\"\n")
    };
    format!(
        "[[service]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"{host}\"\n{cluster_label}{extra}\n",
        backend.addr
    )
}

/// A proxy of `cluster` presenting the certificate `stem` (normally `proxy-<cluster>`).
async fn proxy(s: &Scratch, api: u16, cluster: &str, stem: &str) -> (Node, SocketAddr) {
    proxy_with(s, api, cluster, stem, &[]).await
}

async fn proxy_with(
    s: &Scratch,
    api: u16,
    cluster: &str,
    stem: &str,
    extra: &[&str],
) -> (Node, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args = s.proxy_args(api, cluster, stem);
    args.extend(["--listen".to_string(), listen.to_string()]);
    let args = [args, extra.iter().map(|a| a.to_string()).collect()].concat();
    (
        Node::start(&format!("proxy {cluster}"), &args).await,
        listen,
    )
}

/// Body of GET `host`/ through `proxy`, or the status when it is not 200.
async fn answer(proxy: SocketAddr, host: &str) -> String {
    match try_http(proxy, host, "/").await {
        Some((200, body)) => body,
        Some((status, _)) => status.to_string(),
        None => "no answer".into(),
    }
}

async fn until_answer(proxy: SocketAddr, host: &str, want: &str) -> Duration {
    let took = eventually(Duration::from_secs(15), || async {
        answer(proxy, host).await == want
    })
    .await;
    match took {
        Some(t) => t,
        None => panic!(
            "{host} via {proxy} never answered {want:?} (last: {:?})",
            answer(proxy, host).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_get_only_their_own_routes_and_a_broken_dev_label_cannot_touch_prod() {
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod", "dev"]);
    let (prod_be, dev_be, plain_be) = (
        TestBackend::named("prod-web").await,
        TestBackend::named("dev-web").await,
        TestBackend::named("plain").await,
    );
    // The same host in both clusters: each cluster's proxies route it to their own service.
    let base = format!(
        "{}{}{}",
        service("prod-web", "prod", "web.test", &prod_be, ""),
        service("dev-web", "dev", "web.test", &dev_be, ""),
        service("plain", "", "plain.test", &plain_be, ""),
    );
    s.write_services(&base);
    let api = free_port();
    let ctl = Node::start("controller", &s.controller_args(api)).await;
    let (prod, prod_addr) = proxy(&s, api, "prod", "proxy-prod").await;
    let (dev, dev_addr) = proxy(&s, api, "dev", "proxy-dev").await;

    until_answer(prod_addr, "web.test", "prod-web").await;
    until_answer(dev_addr, "web.test", "dev-web").await;
    assert_eq!(
        answer(prod_addr, "plain.test").await,
        "503",
        "default cluster is not prod's"
    );
    assert_eq!(answer(dev_addr, "plain.test").await, "503");
    let (_, routes) = prod.admin_get("/routes").await;
    assert!(
        !routes.contains("dev-web") && !routes.contains("plain"),
        "{routes}"
    );
    let prod_version = prod
        .metric("interlock_snapshot_version", &[])
        .await
        .unwrap();
    let dev_version = dev.metric("interlock_snapshot_version", &[]).await.unwrap();

    // dev breaks: a bad port on its service and a new service with a bad host.
    s.write_services(&format!(
        "{}{}{}{}",
        service("prod-web", "prod", "web.test", &prod_be, ""),
        service(
            "dev-web",
            "dev",
            "web.test",
            &dev_be,
            "\"com.docker.lb.port\" = \"eighty\"\n"
        ),
        service("dev-api", "dev", "bad host!", &dev_be, ""),
        service("plain", "", "plain.test", &plain_be, ""),
    ));
    eventually(Duration::from_secs(10), || async {
        dev.metric("interlock_snapshot_version", &[]).await > Some(dev_version)
    })
    .await
    .expect("dev got the new snapshot");
    // dev keeps its last good route; prod saw no change at all.
    assert_eq!(answer(dev_addr, "web.test").await, "dev-web");
    // The snapshot's version is counted when it arrives; its label errors are logged once
    // it is compiled, and a child's log reaches us through a pipe: a moment later.
    let reported = eventually(Duration::from_secs(5), || async {
        dev.logged(&["dev-web", "com.docker.lb.port"])
    })
    .await;
    assert!(reported.is_some(), "dev reports the bad label");
    let reported = eventually(Duration::from_secs(5), || async {
        ctl.logged(&["cluster=dev", "dev-api"])
    })
    .await;
    assert!(reported.is_some(), "the controller reports it too");
    assert_eq!(
        prod.metric("interlock_snapshot_version", &[]).await,
        Some(prod_version),
        "a dev change must not even wake prod's proxies"
    );
    for _ in 0..20 {
        assert_eq!(answer(prod_addr, "web.test").await, "prod-web");
    }
    assert!(
        !prod.logged(&["dev-"]),
        "prod never hears of dev's services"
    );

    // The controller's admin view: versions per cluster.
    let (status, body) = ctl.admin_get("/routes").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"cluster\": \"prod\"") && body.contains("\"cluster\": \"dev\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_can_read_only_the_cluster_its_certificate_names() {
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod", "dev"]);
    let be = TestBackend::named("prod-web").await;
    s.write_services(&service("prod-web", "prod", "web.test", &be, ""));
    let api = free_port();
    let _ctl = Node::start("controller", &s.controller_args(api)).await;

    // dev's key asking for prod: refused with a message naming the expected identity.
    let (thief, thief_addr) = proxy(&s, api, "prod", "proxy-dev").await;
    let refused = eventually(Duration::from_secs(10), || async {
        thief.logged(&["403", "prod.cluster.interlock"])
    })
    .await;
    assert!(
        refused.is_some(),
        "the controller must refuse: {:?}",
        thief.log()
    );
    assert_eq!(answer(thief_addr, "web.test").await, "503");
    assert_eq!(
        thief.metric("interlock_controller_up", &[]).await,
        Some(0.0)
    );

    // No client certificate at all: the handshake fails.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let pem = std::fs::read(s.path("ca.pem")).unwrap();
        for c in rustls_pemfile_certs(&pem) {
            r.add(c).unwrap();
        }
        Arc::new(r)
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api))
        .await
        .unwrap();
    let result = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await?;
        tls.write_all(b"GET /v1/snapshot?cluster=prod HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    }
    .await;
    match result {
        Err(_) => {}
        Ok(buf) => assert!(
            !String::from_utf8_lossy(&buf).contains("prod-web"),
            "a client without a certificate got a snapshot"
        ),
    }

    // The rightful proxy gets it.
    let (_prod, prod_addr) = proxy(&s, api, "prod", "proxy-prod").await;
    until_answer(prod_addr, "web.test", "prod-web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_while_the_controller_is_gone_and_follow_it_when_it_returns() {
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let (web, api_be) = (
        TestBackend::named("web").await,
        TestBackend::named("api").await,
    );
    s.write_services(&service("web", "prod", "web.test", &web, ""));
    let api = free_port();
    let mut ctl = Node::start("controller", &s.controller_args(api)).await;
    let (prod, addr) = proxy(&s, api, "prod", "proxy-prod").await;
    until_answer(addr, "web.test", "web").await;

    // Killed outright (no goodbye): traffic goes on from the last good snapshot.
    ctl.kill();
    eventually(Duration::from_secs(15), || async {
        prod.metric("interlock_controller_up", &[]).await == Some(0.0)
    })
    .await
    .expect("the proxy notices the controller is gone");
    for _ in 0..50 {
        assert_eq!(answer(addr, "web.test").await, "web");
    }

    // A restarted controller that cannot read all its providers yet (Docker unreachable)
    // must not wipe the proxies with an empty snapshot.
    s.write_services(&format!(
        "{}{}",
        service("web", "prod", "web.test", &web, ""),
        service("api", "prod", "api.test", &api_be, ""),
    ));
    let mut args = s.controller_args(api);
    args.push("--docker".into());
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut blind = Node::spawn(
        "controller without Docker",
        &args,
        admin,
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    )
    .ready()
    .await;
    eventually(Duration::from_secs(10), || async {
        prod.logged(&["503", "has not read its providers"])
            || blind.logged(&["Docker engine unavailable"])
    })
    .await
    .expect("the blind controller is up");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..20 {
        assert_eq!(answer(addr, "web.test").await, "web");
    }
    assert_eq!(
        answer(addr, "api.test").await,
        "503",
        "nothing new before the controller syncs"
    );
    blind.kill();

    // The controller returns (file provider only): the proxy resumes and picks up what
    // changed while it was away.
    let _ctl = Node::start("controller again", &s.controller_args(api)).await;
    let took = until_answer(addr, "api.test", "api").await;
    eprintln!("route live {took:?} after the controller came back");
    assert_eq!(answer(addr, "web.test").await, "web");
    eventually(Duration::from_secs(5), || async {
        prod.metric("interlock_controller_up", &[]).await == Some(1.0)
    })
    .await
    .expect("controller_up back to 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_serves_its_saved_snapshot_while_the_controller_is_down() {
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let web = TestBackend::named("web").await;
    s.write_services(&service("web", "prod", "web.test", &web, ""));
    let api = free_port();
    let state = s.path("prod-snapshot.json");
    let mut ctl = Node::start("controller", &s.controller_args(api)).await;
    let (mut first, addr) =
        proxy_with(&s, api, "prod", "proxy-prod", &["--state-file", &state]).await;
    until_answer(addr, "web.test", "web").await;
    first.kill();
    ctl.kill();
    // A new proxy process, the controller still gone: it serves the saved snapshot.
    let (second, addr) = proxy_with(&s, api, "prod", "proxy-prod", &["--state-file", &state]).await;
    until_answer(addr, "web.test", "web").await;
    assert!(second.logged(&["serving the saved snapshot"]));
    assert_eq!(
        second.metric("interlock_controller_up", &[]).await,
        Some(0.0)
    );
    // Without the file, a proxy starting blind has nothing to serve.
    let (_blind, blind_addr) = proxy(&s, api, "prod", "proxy-prod").await;
    assert_eq!(answer(blind_addr, "web.test").await, "503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_change_reaches_the_proxies_through_the_long_poll() {
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let (a, b) = (TestBackend::named("a").await, TestBackend::named("b").await);
    s.write_services(&service("svc", "prod", "svc.test", &a, ""));
    let api = free_port();
    let ctl = Node::start("controller", &s.controller_args(api)).await;
    let (p1, addr1) = proxy(&s, api, "prod", "proxy-prod").await;
    let (_p2, addr2) = proxy(&s, api, "prod", "proxy-prod").await;
    until_answer(addr1, "svc.test", "a").await;
    until_answer(addr2, "svc.test", "a").await;
    let mut times = Vec::new();
    for i in 0..6 {
        let (be, name) = if i % 2 == 0 { (&b, "b") } else { (&a, "a") };
        s.write_services(&service("svc", "prod", "svc.test", be, ""));
        let t1 = until_answer(addr1, "svc.test", name).await;
        let t2 = until_answer(addr2, "svc.test", name).await;
        times.push(t1.max(t2));
    }
    times.sort();
    eprintln!("file change -> both proxies routing it: {times:?}");
    // The product measures the same thing: from the file's write to the snapshot published
    // (controller) and to the table live (each proxy), in a histogram and in /routes.
    let count = |node: &Node| {
        let node = node.admin;
        async move {
            let (_, text) = common::node::http(node, "admin", "/metrics").await;
            common::node::metric_value(&text, "interlock_convergence_seconds_count", &[])
                .unwrap_or(0.0)
        }
    };
    assert!(
        count(&ctl).await >= 6.0,
        "the controller measured each change"
    );
    assert!(count(&p1).await >= 6.0, "the proxy measured each change");
    let (_, routes) = p1.admin_get("/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let took = routes["convergence"]["seconds"].as_f64().unwrap();
    let worst = times.last().unwrap().as_secs_f64();
    eprintln!("the proxy's last convergence: {took:.3} s (the test saw at most {worst:.3} s)");
    assert!(took < worst + 1.5, "{routes}");
    let (_, routes) = ctl.admin_get("/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert!(
        routes["clusters"][0]["convergence_seconds"]
            .as_f64()
            .is_some(),
        "{routes}"
    );
    // Polls parked at the controller, not busy loops: two proxies wait there.
    assert_eq!(
        ctl.metric("interlock_controller_waiting_proxies", &[])
            .await,
        Some(2.0)
    );
}

/// A mutual-TLS connection to the controller's API with the client certificate `stem`.
async fn control_connection(
    s: &Scratch,
    api: u16,
    stem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&std::fs::read(s.path("ca.pem")).unwrap()) {
        roots.add(c).unwrap();
    }
    let certs = rustls_pemfile_certs(&std::fs::read(s.path(&format!("{stem}.pem"))).unwrap());
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_file(s.path(&format!("{stem}.key"))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A long poll whose proxy goes away (killed, restarted, or any client that hangs up while
/// parked) is no longer counted in `interlock_controller_waiting_proxies`: the gauge must
/// not grow by one with every proxy restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_whose_proxy_goes_away_is_no_longer_counted_as_waiting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let web = TestBackend::named("web").await;
    s.write_services(&service("web", "prod", "web.test", &web, ""));
    let api = free_port();
    let ctl = Node::start("controller", &s.controller_args(api)).await;
    let waiting_is = |want: f64| {
        let ctl = &ctl;
        async move {
            eventually(Duration::from_secs(10), || async {
                ctl.metric("interlock_controller_waiting_proxies", &[])
                    .await
                    == Some(want)
            })
            .await
            .is_some()
        }
    };

    // Proxies restarted one after another (killed outright, as a crashed task is).
    for round in 0..3 {
        let (mut p, addr) = proxy(&s, api, "prod", "proxy-prod").await;
        until_answer(addr, "web.test", "web").await;
        assert!(
            waiting_is(1.0).await,
            "round {round}: the proxy's poll is parked"
        );
        p.kill();
        assert!(
            waiting_is(0.0).await,
            "round {round}: a killed proxy is still counted as waiting: {:?}",
            ctl.metric("interlock_controller_waiting_proxies", &[])
                .await
        );
    }

    // A client that hangs up in the middle of a 300 s poll, several times.
    let mut tls = control_connection(&s, api, "proxy-prod").await;
    tls.write_all(
        b"GET /v1/snapshot?cluster=prod HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let mut head = Vec::new();
    let _ = tls.read_to_end(&mut head).await;
    let head = String::from_utf8_lossy(&head).into_owned();
    let etag = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("etag")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no ETag in the snapshot answer:\n{head}"));
    for round in 0..3 {
        let mut tls = control_connection(&s, api, "proxy-prod").await;
        let poll = format!(
            "GET /v1/snapshot?cluster=prod&wait=300 HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n"
        );
        tls.write_all(poll.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        assert!(waiting_is(1.0).await, "round {round}: the poll is parked");
        drop(tls);
        assert!(
            waiting_is(0.0).await,
            "round {round}: a client that hung up is still counted as waiting: {:?}",
            ctl.metric("interlock_controller_waiting_proxies", &[])
                .await
        );
    }
}

/// The metric families exported by an instance, by the names of their `# TYPE` lines;
/// waits (20 s at most) for `/metrics`, which answers before `/healthz` is 200.
async fn families(admin: SocketAddr) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        match try_http(admin, "admin", "/metrics").await {
            Some((200, body)) => break body,
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => panic!("no /metrics on {admin}"),
        }
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// The Docker provider's families (`--docker`).
const DOCKER_FAMILIES: [&str; 3] = [
    "interlock_docker_up",
    "interlock_docker_resyncs_total",
    "interlock_docker_errors_total",
];
/// The proxy role's controller client.
const CLIENT_FAMILIES: [&str; 3] = [
    "interlock_controller_up",
    "interlock_snapshot_version",
    "interlock_controller_errors_total",
];
/// The controller role's snapshot API.
const SERVER_FAMILIES: [&str; 2] = [
    "interlock_controller_waiting_proxies",
    "interlock_controller_rejected_handshakes_total",
];
/// The snapshot API's labelled families: exported once they have a series (a cluster
/// published, a response sent).
const SERVER_SERIES: [&str; 2] = [
    "interlock_cluster_snapshot_version",
    "interlock_controller_responses_total",
];

/// Each role exports the metrics of the parts it runs and no others: a controller reports
/// no `interlock_controller_up 0` of a controller client it does not have and no
/// `interlock_open_connections 0` of traffic it does not serve, an instance without
/// `--docker` no `interlock_docker_up 0`, a proxy none of the snapshot API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_exports_the_metrics_of_what_it_runs_and_no_others() {
    // Serving traffic (the live table and the listeners): run and proxy, not controller.
    const TRAFFIC_FAMILIES: [&str; 6] = [
        "interlock_no_route_total",
        "interlock_open_connections",
        "interlock_open_tunnels",
        "interlock_table_generation",
        "interlock_reload_timestamp_seconds",
        "interlock_services_rejected",
    ];
    // TLS termination (`--tls-listen`): certificates that failed to load.
    const TLS_FAMILIES: [&str; 1] = ["interlock_tls_certificate_errors_total"];
    // Traffic's labelled families: exported once a request was answered.
    const TRAFFIC_SERIES: [&str; 2] = [
        "interlock_requests_total",
        "interlock_request_duration_seconds",
    ];
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let web = TestBackend::named("web").await;
    s.write_services(&service("web", "prod", "web.test", &web, ""));
    let no_engine = [("DOCKER_HOST", "unix:///nonexistent/docker.sock")];
    let api = free_port();
    let ctl = Node::start("controller", &s.controller_args(api)).await;
    let (prod, addr) = proxy(&s, api, "prod", "proxy-prod").await;
    until_answer(addr, "web.test", "web").await;
    let docker_ctl = Node::spawn(
        "controller --docker",
        &[s.controller_args(free_port()), vec!["--docker".into()]].concat(),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        &no_engine,
    );
    let run = |docker: bool, tls: bool| {
        let mut args: Vec<String> = ["run", "--config", &s.path("services.toml"), "--listen"]
            .map(String::from)
            .to_vec();
        args.push(format!("127.0.0.1:{}", free_port()));
        if docker {
            args.push("--docker".into());
        }
        if tls {
            args.push("--tls-listen".into());
            args.push(format!("127.0.0.1:{}", free_port()));
        }
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let name = format!("run docker={docker} tls={tls}");
        Node::spawn(&name, &args, admin, &no_engine)
    };
    let (file_only, with_docker, with_tls) =
        (run(false, false), run(true, false), run(false, true));

    // (node, Docker provider, controller client, snapshot API, snapshots published and
    // polled, traffic, requests answered, TLS listener); the controller without its engine
    // publishes nothing, and only `prod` was asked for web.test.
    let mut wrong = Vec::new();
    for (node, docker, client, server, served, traffic, answered, tls) in [
        (&ctl, false, false, true, true, false, false, false),
        (&docker_ctl, true, false, true, false, false, false, false),
        (&prod, false, true, false, false, true, true, false),
        (&file_only, false, false, false, false, true, false, false),
        (&with_docker, true, false, false, false, true, false, false),
        (&with_tls, false, false, false, false, true, false, true),
    ] {
        let have = families(node.admin).await;
        assert!(
            have.iter().any(|f| f == "interlock_reload_failures_total"),
            "{}: {have:?}",
            node.name
        );
        for (used, group) in [
            (docker, &DOCKER_FAMILIES[..]),
            (client, &CLIENT_FAMILIES[..]),
            (server, &SERVER_FAMILIES[..]),
            (served, &SERVER_SERIES[..]),
            (traffic, &TRAFFIC_FAMILIES[..]),
            (answered, &TRAFFIC_SERIES[..]),
            (tls, &TLS_FAMILIES[..]),
        ] {
            for family in group {
                if have.iter().any(|f| f == family) != used {
                    let verb = if used { "lacks" } else { "exports" };
                    wrong.push(format!("{} {verb} {family}", node.name));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

/// "A bad label keeps the last good routes" across restarts: a proxy that starts while a
/// service's label is broken routes it as before, whether the controller that tells it
/// runs on, was restarted meanwhile (its --state-file), or is down (the proxy's own
/// saved snapshot carries the last good labels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_label_keeps_its_last_good_routes_across_proxy_and_controller_restarts() {
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let (web, other) = (
        TestBackend::named("web").await,
        TestBackend::named("other").await,
    );
    let good = format!(
        "{}{}",
        service("web", "prod", "web.test", &web, ""),
        service("other", "prod", "other.test", &other, "")
    );
    let broken = format!(
        "{}{}",
        service(
            "web",
            "prod",
            "web.test",
            &web,
            "\"com.docker.lb.context_root\" = \"no-slash\"\n"
        ),
        service("other", "prod", "other.test", &other, "")
    );
    s.write_services(&good);
    let api = free_port();
    let ctl_args = [
        s.controller_args(api),
        vec!["--state-file".into(), s.path("controller-state.json")],
    ]
    .concat();
    let snapshot_file = s.path("prod-snapshot.json");
    let with_state = ["--state-file", snapshot_file.as_str()];
    let mut ctl = Node::start("controller", &ctl_args).await;
    let (mut first, addr) = proxy_with(&s, api, "prod", "proxy-prod", &with_state).await;
    until_answer(addr, "web.test", "web").await;

    // web's label breaks; the running proxy keeps its routes (in memory).
    let version = first
        .metric("interlock_snapshot_version", &[])
        .await
        .unwrap();
    s.write_services(&broken);
    eventually(Duration::from_secs(10), || async {
        first.metric("interlock_snapshot_version", &[]).await > Some(version)
    })
    .await
    .expect("the proxy got the broken label");
    assert_eq!(answer(addr, "web.test").await, "web");

    // 1. A new proxy, the controller up: the snapshot carries web's last good labels.
    first.kill();
    let (second, addr) = proxy(&s, api, "prod", "proxy-prod").await;
    until_answer(addr, "web.test", "web").await;
    assert!(
        second.logged(&["web", "com.docker.lb.context_root"]),
        "the error is still reported"
    );
    let (_, routes) = second.admin_get("/routes").await;
    assert!(routes.contains("kept_last_good"), "{routes}");
    drop(second);

    // 2. The controller restarted (the label still broken), then a new proxy without a
    //    saved snapshot: the controller's state file kept the last good labels.
    ctl.kill();
    let mut ctl = Node::start("controller", &ctl_args).await;
    let (third, addr) = proxy(&s, api, "prod", "proxy-prod").await;
    until_answer(addr, "web.test", "web").await;
    until_answer(addr, "other.test", "other").await;
    drop(third);

    // 3. The controller down, a proxy restarted from its saved snapshot.
    let (fourth, addr) = proxy_with(&s, api, "prod", "proxy-prod", &with_state).await;
    until_answer(addr, "web.test", "web").await;
    drop(fourth);
    ctl.kill();
    let (fifth, addr) = proxy_with(&s, api, "prod", "proxy-prod", &with_state).await;
    until_answer(addr, "web.test", "web").await;
    assert!(fifth.logged(&["serving the saved snapshot"]));
    drop(fifth);

    // 4. The controller moved and lost its file (one without --state-file): the proxies keep
    //    the last good labels they received, and save them with the new controller's
    //    snapshot, so a proxy restarted after that still routes web.
    let moved = Node::start("controller", &s.controller_args(api)).await;
    for round in 0..2 {
        let (p, addr) = proxy_with(&s, api, "prod", "proxy-prod", &with_state).await;
        eventually(Duration::from_secs(10), || async {
            p.metric("interlock_controller_up", &[]).await == Some(1.0)
        })
        .await
        .expect("the proxy reaches the moved controller");
        until_answer(addr, "web.test", "web").await;
        assert_eq!(answer(addr, "web.test").await, "web", "round {round}");
    }
    drop(moved);

    // A service that disappears is forgotten: recreated broken, it is not routed.
    s.write_services(&service("other", "prod", "other.test", &other, ""));
    let ctl = Node::start("controller", &ctl_args).await;
    let (sixth, addr) = proxy(&s, api, "prod", "proxy-prod").await;
    until_answer(addr, "other.test", "other").await;
    s.write_services(&broken);
    eventually(Duration::from_secs(10), || async {
        sixth.logged(&["web", "com.docker.lb.context_root"])
    })
    .await
    .expect("the broken service reaches the proxy");
    assert_eq!(answer(addr, "web.test").await, "503");
    drop(ctl);
}

/// Waits until `proxy` has failed a poll more than `failed_polls` times and polls a
/// controller again (another replica), at most 15 s.
async fn until_failed_over(proxy: &Node, failed_polls: f64, what: &str) {
    let errors = || async {
        proxy
            .metric("interlock_controller_errors_total", &[])
            .await
            .unwrap_or(0.0)
    };
    eventually(Duration::from_secs(15), || async {
        errors().await > failed_polls
            && proxy.metric("interlock_controller_up", &[]).await == Some(1.0)
    })
    .await
    .expect(what);
}

/// Two controller replicas on the same services file, one proxy given both: killing the
/// replica it polls moves it to the other without fetching or swapping anything (the
/// replicas' entity tags are digests of the same content), a change reaches it through the
/// other replica, and it moves back when that one goes; traffic never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_fails_over_between_controller_replicas_without_swapping_its_table() {
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let (web, api_be) = (
        TestBackend::named("web").await,
        TestBackend::named("api").await,
    );
    s.write_services(&service("web", "prod", "web.test", &web, ""));
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = Node::start("controller a", &s.controller_args(port_a)).await;
    let mut b = Node::start("controller b", &s.controller_args(port_b)).await;
    let mut args = s.proxy_args(port_a, "prod", "proxy-prod");
    let at = args.iter().position(|a| a == "--controller").unwrap() + 1;
    args[at] = format!("https://127.0.0.1:{port_a}, https://127.0.0.1:{port_b}");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    args.extend(["--listen".to_string(), listen.to_string()]);
    let proxy = Node::start("proxy prod", &args).await;
    until_answer(listen, "web.test", "web").await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match answer(listen, "web.test").await.as_str() {
                    "web" => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let generation = || async { proxy.metric("interlock_table_generation", &[]).await };
    let errors = || async {
        proxy
            .metric("interlock_controller_errors_total", &[])
            .await
            .unwrap_or(0.0)
    };
    // Settled: no swap pending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = generation().await;

    // The polled replica (the first) goes: the proxy moves to the other, nothing swapped.
    let failed_polls = errors().await;
    a.kill();
    until_failed_over(&proxy, failed_polls, "the proxy polls the other replica").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(generation().await, before, "a failover swapped the table");
    let sent = b
        .metric("interlock_controller_responses_total", &["code=\"200\""])
        .await
        .unwrap_or(0.0);
    assert_eq!(sent, 0.0, "the other replica sent the snapshot again");

    // A change reaches it through the remaining replica: one swap.
    s.write_services(&format!(
        "{}{}",
        service("web", "prod", "web.test", &web, ""),
        service("api", "prod", "api.test", &api_be, ""),
    ));
    until_answer(listen, "api.test", "api").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_change = generation().await;
    assert_eq!(
        after_change,
        before.map(|g| g + 1.0),
        "one swap for one change"
    );

    // The first replica back (it reads the same file), the second gone: back to the first,
    // still no swap.
    a = Node::start("controller a again", &s.controller_args(port_a)).await;
    let failed_polls = errors().await;
    b.kill();
    until_failed_over(
        &proxy,
        failed_polls,
        "the proxy polls the first replica again",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        generation().await,
        after_change,
        "the failover back swapped the table"
    );
    assert_eq!(answer(listen, "api.test").await, "api");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    eprintln!("traffic through two failovers: {ok} ok, {failed} failed");
    assert!(ok > 0);
    assert_eq!(failed, 0);
    drop(a);
}

/// The snapshot goes gzip-compressed to a client that accepts it (proxies do), as JSON to
/// one that does not, with the same tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_sent_compressed_to_clients_that_accept_gzip() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Scratch::new("control");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod"]);
    let web = TestBackend::named("web").await;
    let many: String = (0..200)
        .map(|i| service(&format!("web{i}"), "prod", &format!("w{i}.test"), &web, ""))
        .collect();
    s.write_services(&many);
    let api = free_port();
    let _ctl = Node::start("controller", &s.controller_args(api)).await;
    let get = |encoding: &'static str| {
        let s = &s;
        async move {
            let mut tls = control_connection(s, api, "proxy-prod").await;
            let req = format!(
                "GET /v1/snapshot?cluster=prod HTTP/1.1\r\nhost: localhost\r\n{encoding}connection: close\r\n\r\n"
            );
            tls.write_all(req.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            let mut raw = Vec::new();
            let _ = tls.read_to_end(&mut raw).await;
            let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            (head, raw[end + 4..].to_vec())
        }
    };
    let (plain_head, plain) = get("").await;
    let (gz_head, gz) = get("accept-encoding: gzip\r\n").await;
    assert!(!plain_head.contains("content-encoding"), "{plain_head}");
    assert!(gz_head.contains("content-encoding: gzip"), "{gz_head}");
    let tag = |h: &str| {
        h.lines()
            .find(|l| l.starts_with("etag:"))
            .map(str::to_string)
    };
    assert_eq!(tag(&plain_head), tag(&gz_head));
    let unpacked = interlock::snapshot::gunzip(&gz, 1 << 24).unwrap();
    assert_eq!(unpacked, plain, "the same snapshot");
    eprintln!(
        "200 services: {} bytes of JSON, {} gzip-compressed",
        plain.len(),
        gz.len()
    );
    assert!(gz.len() * 5 < plain.len());
}
