//! Certificates renewed on disk, through the real binary, with the services file never
//! touched: rewritten in place, replaced by rename, a `..data` symlink flipped (as
//! Kubernetes and Docker tooling do) and certbot-style `live/` symlinks re-pointed; each new
//! certificate is served within a few intervals while a keep-alive TLS connection opened
//! before the swap keeps working; a broken certificate is logged and the last good one
//! keeps serving until the files are fixed, and a certificate missing at start is served
//! once its files appear; the expiry gauge follows every swap, for services and for the
//! default certificate, and leaves with its host.

use interlock_testkit as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::tls::{connect, get, issue, served, Pem};
use common::{free_port, Proc, TestBackend};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("interlock-rot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The value of the expiry gauge for `host`, if the series exists.
async fn expiry(admin: u16, host: &str) -> Option<i64> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let series = format!(
        "interlock_certificate_expiry_timestamp_seconds{{host=\"{host}\",source=\"files\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

struct Running {
    _proc: Proc,
    https: u16,
    admin: u16,
    log: PathBuf,
}

fn start(dir: &Path, config: &str, default: Option<(&Path, &Path)>) -> Running {
    let path = dir.join("services.toml");
    std::fs::write(&path, config).unwrap();
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let log = dir.join("interlock.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_interlock"));
    cmd.args(["--config", path.to_str().unwrap()])
        .args(["--watch-interval-ms", "100"])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .args(["--tls-listen", &format!("127.0.0.1:{https}")])
        .args(["--secrets-dir", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some((cert, key)) = default {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let proc = Proc(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(Instant::now() < deadline, "interlock did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running {
        _proc: proc,
        https,
        admin,
        log,
    }
}

/// Waits (up to 5 s) until new handshakes for `sni` get `want`.
async fn until_served(r: &Running, sni: &str, want: &Pem, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if served(r.https, sni).await == want.der {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: the new certificate is not served; log:\n{}",
            std::fs::read_to_string(&r.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_pair(dir: &Path, pem: &Pem) {
    std::fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &pem.key).unwrap();
}

// notAfter values: 2030-01-01, 2031-06-15, 2049-12-31T23:59:59 (the last UTCTime),
// 2061-03-01 (GeneralizedTime), 2035-01-01, 2036-01-01.
const T1: i64 = 1_893_456_000;
const T2: i64 = 1_939_248_000;
const T3: i64 = 2_524_607_999;
const T4: i64 = 2_876_860_800;
const T5: i64 = 2_051_222_400;
const T6: i64 = 2_082_758_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_served_without_a_restart_or_a_dropped_connection() {
    let dir = temp_dir("renew");
    let backend = TestBackend::named("rot").await;
    // Kubernetes/Docker style: tls.crt -> ..data/tls.crt, ..data -> v1.
    std::fs::create_dir_all(dir.join("v1")).unwrap();
    let v1 = issue(&["rot.test"], T1);
    write_pair(&dir.join("v1"), &v1);
    std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    let config = format!(
        "[[service]]\nname = \"rot\"\nendpoints = [\"{}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"rot.test\"\n\
         \"com.docker.lb.ssl_cert\" = \"tls.crt\"\n\
         \"com.docker.lb.ssl_key\" = \"tls.key\"\n",
        backend.addr
    );
    let r = start(&dir, &config, None);
    assert_eq!(served(r.https, "rot.test").await, v1.der);
    assert_eq!(expiry(r.admin, "rot.test").await, Some(T1));
    assert_eq!(expiry(r.admin, "*").await, None, "no default certificate");
    // Opened before any swap, used after each.
    let mut kept = connect(r.https, "rot.test").await;
    assert_eq!(
        get(&mut kept, "rot.test").await,
        ("HTTP/1.1 200 OK".to_string(), "rot".to_string())
    );
    let services_file = std::fs::read(dir.join("services.toml")).unwrap();

    // (a) Rewritten in place (same inodes; the key lags the certificate for a moment).
    let v2 = issue(&["rot.test"], T2);
    write_pair(&dir.join("v1"), &v2);
    let took = until_served(&r, "rot.test", &v2, "rewritten in place").await;
    assert_eq!(expiry(r.admin, "rot.test").await, Some(T2));
    assert_eq!(
        get(&mut kept, "rot.test").await.1,
        "rot",
        "kept-alive connection"
    );
    eprintln!("in place: served after {took:?}");

    // (b) Replaced by rename (new inodes), the way most tools write files atomically.
    let v3 = issue(&["rot.test"], T3);
    let staging = temp_dir("renew-staging");
    write_pair(&staging, &v3);
    for f in ["tls.key", "tls.crt"] {
        std::fs::copy(staging.join(f), dir.join("v1").join(format!(".{f}.tmp"))).unwrap();
        std::fs::rename(
            dir.join("v1").join(format!(".{f}.tmp")),
            dir.join("v1").join(f),
        )
        .unwrap();
    }
    let took = until_served(&r, "rot.test", &v3, "replaced by rename").await;
    assert_eq!(expiry(r.admin, "rot.test").await, Some(T3));
    assert_eq!(
        get(&mut kept, "rot.test").await.1,
        "rot",
        "kept-alive connection"
    );
    eprintln!("renamed: served after {took:?}");

    // (c) The ..data symlink flipped atomically to a new directory.
    let v4 = issue(&["rot.test"], T4);
    std::fs::create_dir_all(dir.join("v2")).unwrap();
    write_pair(&dir.join("v2"), &v4);
    std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let took = until_served(&r, "rot.test", &v4, "symlink flipped").await;
    assert_eq!(
        expiry(r.admin, "rot.test").await,
        Some(T4),
        "a GeneralizedTime notAfter"
    );
    assert_eq!(
        get(&mut kept, "rot.test").await.1,
        "rot",
        "kept-alive connection"
    );
    eprintln!("symlink flipped: served after {took:?}");

    // (d) A broken certificate: the last good one keeps serving, the problem is logged
    // once; fixed, it is picked up. (A rewrite in place above may have been seen half done
    // and logged too: only what comes from here on counts.)
    let before = std::fs::read_to_string(&r.log).unwrap().len();
    std::fs::write(
        dir.join("v2/tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let warning = loop {
        let log = std::fs::read_to_string(&r.log).unwrap().split_off(before);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("WARN") && l.contains("last good certificate"))
        {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no warning logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        warning.contains("services=rot") && warning.contains("tls.crt"),
        "{warning}"
    );
    // Several intervals later: still the last good certificate, logged once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served(r.https, "rot.test").await, v4.der);
    assert_eq!(expiry(r.admin, "rot.test").await, Some(T4));
    let log = std::fs::read_to_string(&r.log).unwrap().split_off(before);
    assert_eq!(
        log.matches("last good certificate").count(),
        1,
        "logged once:\n{log}"
    );
    assert_eq!(
        get(&mut kept, "rot.test").await.1,
        "rot",
        "kept-alive connection"
    );
    let v5 = issue(&["rot.test"], T5);
    write_pair(&dir.join("v2"), &v5);
    until_served(&r, "rot.test", &v5, "fixed").await;
    assert_eq!(expiry(r.admin, "rot.test").await, Some(T5));
    assert_eq!(
        get(&mut kept, "rot.test").await.1,
        "rot",
        "kept-alive connection"
    );

    // The services file was never touched.
    assert_eq!(
        std::fs::read(dir.join("services.toml")).unwrap(),
        services_file
    );
    // The host leaves: its series goes, the new host's comes.
    let renamed = config.replace("rot.test", "other.test");
    std::fs::write(dir.join("services.toml"), renamed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while expiry(r.admin, "rot.test").await.is_some() {
        assert!(Instant::now() < deadline, "rot.test's series stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(expiry(r.admin, "other.test").await, Some(T5));
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&staging);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_live_symlinks_and_the_default_certificate_are_followed() {
    let dir = temp_dir("certbot");
    let backend = TestBackend::named("cb").await;
    // certbot: live/<name>/fullchain.pem -> ../../archive/<name>/fullchain1.pem, ...
    let (live, archive) = (dir.join("live/cb"), dir.join("archive/cb"));
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let v1 = issue(&["*.cb.test"], T1);
    std::fs::write(archive.join("fullchain1.pem"), &v1.cert).unwrap();
    std::fs::write(archive.join("privkey1.pem"), &v1.key).unwrap();
    std::os::unix::fs::symlink(
        "../../archive/cb/fullchain1.pem",
        live.join("fullchain.pem"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../../archive/cb/privkey1.pem", live.join("privkey.pem")).unwrap();
    // The default certificate, by absolute path.
    let d1 = issue(&["default.test"], T5);
    std::fs::write(dir.join("default.crt"), &d1.cert).unwrap();
    std::fs::write(dir.join("default.key"), &d1.key).unwrap();
    let config = format!(
        "[[service]]\nname = \"cb\"\nendpoints = [\"{}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"*.cb.test\"\n\
         \"com.docker.lb.ssl_cert\" = \"{}\"\n\
         \"com.docker.lb.ssl_key\" = \"live/cb/privkey.pem\"\n",
        backend.addr,
        live.join("fullchain.pem").display(),
    ) + &format!(
        // Its files do not exist yet.
        "[[service]]\nname = \"late\"\nendpoints = [\"{}\"]\n[service.labels]\n\
         \"com.docker.lb.hosts\" = \"late.test\"\n\
         \"com.docker.lb.ssl_cert\" = \"late.crt\"\n\
         \"com.docker.lb.ssl_key\" = \"late.key\"\n",
        backend.addr,
    );
    let r = start(
        &dir,
        &config,
        Some((&dir.join("default.crt"), &dir.join("default.key"))),
    );
    assert_eq!(served(r.https, "www.cb.test").await, v1.der);
    assert_eq!(served(r.https, "elsewhere.test").await, d1.der);
    assert_eq!(expiry(r.admin, "*.cb.test").await, Some(T1));
    assert_eq!(expiry(r.admin, "*").await, Some(T5));
    // A service whose files are missing: its host gets the default, the error is logged
    // once, and its certificate is served once the files are there.
    assert_eq!(served(r.https, "late.test").await, d1.der);
    assert_eq!(expiry(r.admin, "late.test").await, None);
    let late = issue(&["late.test"], T3);
    std::fs::write(dir.join("late.key"), &late.key).unwrap();
    std::fs::write(dir.join("late.crt"), &late.cert).unwrap();
    until_served(&r, "late.test", &late, "late files").await;
    assert_eq!(expiry(r.admin, "late.test").await, Some(T3));
    let log = std::fs::read_to_string(&r.log).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("ERROR") && l.contains("late.crt"))
            .count(),
        1,
        "{log}"
    );
    let mut kept = connect(r.https, "www.cb.test").await;
    assert_eq!(get(&mut kept, "www.cb.test").await.1, "cb");

    // certbot renew: new archive files, then each live link replaced by rename.
    let v2 = issue(&["*.cb.test"], T4);
    std::fs::write(archive.join("fullchain2.pem"), &v2.cert).unwrap();
    std::fs::write(archive.join("privkey2.pem"), &v2.key).unwrap();
    for (link, target) in [
        ("fullchain.pem", "fullchain2.pem"),
        ("privkey.pem", "privkey2.pem"),
    ] {
        let tmp = live.join(format!("{link}.new"));
        std::os::unix::fs::symlink(format!("../../archive/cb/{target}"), &tmp).unwrap();
        std::fs::rename(&tmp, live.join(link)).unwrap();
    }
    until_served(&r, "www.cb.test", &v2, "certbot renew").await;
    assert_eq!(expiry(r.admin, "*.cb.test").await, Some(T4));
    assert_eq!(get(&mut kept, "www.cb.test").await.1, "cb");

    // The default pair rewritten in place.
    let d2 = issue(&["default.test"], T6);
    std::fs::write(dir.join("default.crt"), &d2.cert).unwrap();
    std::fs::write(dir.join("default.key"), &d2.key).unwrap();
    until_served(&r, "elsewhere.test", &d2, "default certificate").await;
    assert_eq!(expiry(r.admin, "*").await, Some(T6));
    assert_eq!(served(r.https, "www.cb.test").await, v2.der);
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
