//! Certificate secrets attached to the controller: it reads each pair its services name from
//! its `--secrets-dir` and sends it only to the proxies of the clusters that use it, over
//! the mutual-TLS snapshot channel. Real processes (`interlock certs`, one controller, a
//! `prod` and a `dev` proxy with TLS listeners and no secrets of their own), real
//! handshakes; the served certificate is compared byte for byte.

use interlock_testkit as common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::node::{eventually, Node, Scratch};
use common::tls::{connect, get, issue, served, try_served, Pem};
use common::{free_port, TestBackend};

/// A service of `cluster` for `host`, its certificate the secrets `stem.crt`/`stem.key`.
fn service(name: &str, cluster: &str, host: &str, backend: &TestBackend, stem: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"{host}\"\n\"com.docker.lb.service_cluster\" = \"{cluster}\"\n\
         \"com.docker.lb.ssl_cert\" = \"{stem}.crt\"\n\"com.docker.lb.ssl_key\" = \"{stem}.key\"\n",
        backend.addr
    )
}

/// Writes a pair as a secret would appear (key first, each file renamed into place).
fn write_secret(dir: &std::path::Path, stem: &str, pem: &Pem) {
    for (ext, text) in [("key", &pem.key), ("crt", &pem.cert)] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).unwrap();
    }
}

struct Proxy {
    node: Node,
    tls: u16,
    state: String,
}

/// A proxy of `cluster` with a TLS listener, a state file, and an empty secrets directory.
async fn proxy(s: &Scratch, api: u16, cluster: &str) -> Proxy {
    let tls = free_port();
    let state = s.path(&format!("{cluster}-state.json"));
    let empty = s.path(&format!("{cluster}-own-secrets"));
    std::fs::create_dir_all(&empty).unwrap();
    let mut args = s.proxy_args(api, cluster, &format!("proxy-{cluster}"));
    args.extend(
        [
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--tls-listen",
            &format!("127.0.0.1:{tls}"),
            "--secrets-dir",
            &empty,
            "--state-file",
            &state,
        ]
        .map(String::from),
    );
    let node = Node::start(&format!("proxy {cluster}"), &args).await;
    Proxy { node, tls, state }
}

async fn until_served(p: &Proxy, sni: &str, want: &Pem) -> Duration {
    let took = eventually(Duration::from_secs(15), || async {
        try_served(p.tls, sni).await.as_ref() == Some(&want.der)
    })
    .await;
    took.unwrap_or_else(|| panic!("{sni} never served the expected certificate"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_the_proxies_of_their_cluster_and_rotate_without_a_restart() {
    let s = Scratch::new("secrets");
    s.issue_certs(&["localhost", "127.0.0.1"], &["prod", "dev"]);
    let secrets = s.0.join("controller-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let far = 4_000_000_000;
    let (prod_v1, dev_v1) = (
        issue(&["web.prod.test"], far),
        issue(&["web.dev.test"], far),
    );
    write_secret(&secrets, "prod", &prod_v1);
    write_secret(&secrets, "dev", &dev_v1);
    let (prod_be, dev_be) = (
        TestBackend::named("prod-web").await,
        TestBackend::named("dev-web").await,
    );
    s.write_services(&format!(
        "{}{}",
        service("prod-web", "prod", "web.prod.test", &prod_be, "prod"),
        service("dev-web", "dev", "web.dev.test", &dev_be, "dev"),
    ));
    let api = free_port();
    let mut args = s.controller_args(api);
    args.extend(["--secrets-dir".to_string(), secrets.display().to_string()]);
    let _ctl = Node::start("controller", &args).await;
    let prod = proxy(&s, api, "prod").await;
    let dev = proxy(&s, api, "dev").await;

    // Each proxy serves its own cluster's certificate, which it had no file for.
    until_served(&prod, "web.prod.test", &prod_v1).await;
    until_served(&dev, "web.dev.test", &dev_v1).await;
    let mut kept = connect(prod.tls, "web.prod.test").await;
    assert_eq!(get(&mut kept, "web.prod.test").await.0, "HTTP/1.1 200 OK");
    assert_eq!(
        prod.node
            .metric(
                "interlock_certificate_expiry_timestamp_seconds",
                &["host=\"web.prod.test\"", "source=\"controller\""]
            )
            .await,
        Some(far as f64)
    );

    // Neither proxy ever holds the other cluster's key; their saved snapshots are private.
    for (p, own, other) in [(&prod, &prod_v1, &dev_v1), (&dev, &dev_v1, &prod_v1)] {
        let saved = std::fs::read_to_string(&p.state).unwrap();
        let escaped = |pem: &str| serde_json::to_string(pem).unwrap();
        let (own_key, other_key) = (escaped(&own.key), escaped(&other.key));
        assert!(saved.contains(own_key.trim_matches('"')), "own key saved");
        assert!(
            !saved.contains(other_key.trim_matches('"')),
            "another cluster's key"
        );
        let mode = std::fs::metadata(&p.state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", p.state);
    }

    // The secret renewed on the controller: served by prod without a restart; a connection
    // opened before keeps working; dev does not move.
    let prod_v2 = issue(&["web.prod.test"], far + 1);
    write_secret(&secrets, "prod", &prod_v2);
    let took = until_served(&prod, "web.prod.test", &prod_v2).await;
    println!("renewed secret served by the prod proxy after {took:?}");
    assert_eq!(get(&mut kept, "web.prod.test").await.0, "HTTP/1.1 200 OK");
    assert_eq!(served(dev.tls, "web.dev.test").await, dev_v1.der);

    // A pair that does not load on the controller (certificate without its key): the
    // proxies keep the last good one.
    std::fs::write(secrets.join("prod.crt"), issue(&["x.test"], far).cert).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served(prod.tls, "web.prod.test").await, prod_v2.der);

    // `check` loads each pair from its secrets directory: the broken one is prod-web's error.
    let out = std::process::Command::new(common::node::bin())
        .args([
            "check",
            "--config",
            &s.path("services.toml"),
            "--secrets-dir",
        ])
        .arg(&secrets)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("ERROR prod-web"), "{report}");
    assert!(report.contains("ssl_cert=\"prod.crt\""), "{report}");
    assert!(report.contains("ok    dev-web"), "{report}");
}
