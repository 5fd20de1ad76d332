//! A real ACME server for the tests of automatic HTTPS (`tests/acme.rs`): Debian's `pebble`
//! (Let's Encrypt's test CA) with `pebble-challtestsrv` as its DNS server, both child
//! processes on 127.0.0.1 free ports, killed on drop.
//!
//! - challtestsrv answers DNS only (its HTTP-01, HTTPS and TLS-ALPN-01 responders are off):
//!   every name resolves to 127.0.0.1 (no AAAA answers) unless [`Pebble::add_a`] says
//!   otherwise, so pebble's validations reach the proxy under test, on the ports
//!   [`PebbleOptions`] names;
//! - pebble's own HTTPS listener (the ACME directory and its management API) presents a
//!   certificate for `localhost` and 127.0.0.1 that the harness makes with rcgen:
//!   [`Pebble::listener_ca`] is the file to give interlock as `--acme-ca-root`;
//! - pebble makes a new issuing root at every start: [`Pebble::fetch_root`] writes the
//!   current one to a file for `curl --cacert` or a rustls root store.
//!
//! Random validation sleeps and nonce rejections are off (`PEBBLE_VA_NOSLEEP=1`,
//! `PEBBLE_WFE_NONCEREJECT=0`) and authorizations are never reused (`PEBBLE_AUTHZREUSE=0`),
//! so every order is validated through the proxy.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::node::Scratch;
use crate::Proc;

/// What the CA validates against, and how long its certificates live.
#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// The port HTTP-01 validations connect to (the proxy's plain listener).
    pub http_port: u16,
    /// The port TLS-ALPN-01 validations connect to (the proxy's TLS listener).
    pub tls_port: u16,
    /// Lifetime of issued certificates, in seconds (`certificateValidityPeriod`).
    pub validity_secs: u64,
    /// Names the CA refuses to issue for (`domainBlocklist`: an order naming one is
    /// refused with `rejectedIdentifier`).
    pub blocked: Vec<String>,
}

/// A running pebble and its DNS server (see the module's documentation).
pub struct Pebble {
    dir: Scratch,
    opts: PebbleOptions,
    acme_port: u16,
    mgmt_port: u16,
    dns_port: u16,
    dns_mgmt_port: u16,
    dns: Option<Proc>,
    ca: Option<Proc>,
    /// How many times pebble was started (names its log file).
    starts: usize,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pebble logs ---\n{}", self.logs());
        }
        self.ca.take();
        self.dns.take();
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP (a DNS server listens on both).
fn free_dns_port() -> u16 {
    for _ in 0..100 {
        let port = crate::free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// Waits (15 s at most) until every address of `addrs` accepts TCP connections; panics
/// with `log` if `proc` exits or the time runs out.
fn wait_listening(what: &str, proc: &mut Proc, addrs: &[SocketAddr], log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            panic!(
                "{what} exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if addrs
            .iter()
            .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {addrs:?} within 15 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs `curl ARGS` (10 s at most): its standard output, or a panic with what it said.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .args(args)
        .output()
        .expect("running curl (the test command installs it)");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Pebble {
    /// Starts challtestsrv, then pebble, and waits (bounded) until both listen. Panics with
    /// a pointer to the package when `pebble` is not installed.
    pub fn start(opts: PebbleOptions) -> Pebble {
        for bin in ["pebble", "pebble-challtestsrv"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
            assert!(
                found,
                "{bin} is not installed: the ACME tests need Debian's pebble package \
                 (`apt-get install pebble`; scripts/test.sh installs it when missing)"
            );
        }
        let dir = Scratch::new("pebble");
        // pebble's own HTTPS listener: a certificate for the names the tests dial.
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        std::fs::write(dir.0.join("listener.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.0.join("listener.key"), ck.signing_key.serialize_pem()).unwrap();
        let mut p = Pebble {
            dir,
            opts,
            acme_port: crate::free_port(),
            mgmt_port: crate::free_port(),
            dns_port: free_dns_port(),
            dns_mgmt_port: crate::free_port(),
            dns: None,
            ca: None,
            starts: 0,
        };
        p.write_config();
        p.start_dns();
        p.start_ca();
        p
    }

    fn write_config(&self) {
        let config = serde_like_json(&[
            ("listenAddress", format!("\"127.0.0.1:{}\"", self.acme_port)),
            (
                "managementListenAddress",
                format!("\"127.0.0.1:{}\"", self.mgmt_port),
            ),
            (
                "certificate",
                format!("\"{}\"", self.dir.path("listener.pem")),
            ),
            (
                "privateKey",
                format!("\"{}\"", self.dir.path("listener.key")),
            ),
            ("httpPort", self.opts.http_port.to_string()),
            ("tlsPort", self.opts.tls_port.to_string()),
            (
                "certificateValidityPeriod",
                self.opts.validity_secs.to_string(),
            ),
            (
                "domainBlocklist",
                format!(
                    "[{}]",
                    self.opts
                        .blocked
                        .iter()
                        .map(|b| format!("\"{b}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ),
            (
                "domainBlocklist",
                format!(
                    "[{}]",
                    self.opts
                        .blocked
                        .iter()
                        .map(|b| format!("\"{b}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ),
            ("ocspResponderURL", "\"\"".into()),
            ("externalAccountBindingRequired", "false".into()),
        ]);
        std::fs::write(self.dir.0.join("pebble.json"), config).unwrap();
    }

    fn start_dns(&mut self) {
        let log = self.dir.0.join("challtestsrv.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut proc = Proc(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{}", self.dns_port)])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-management", &format!("127.0.0.1:{}", self.dns_mgmt_port)])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("spawning pebble-challtestsrv"),
        );
        wait_listening(
            "pebble-challtestsrv",
            &mut proc,
            &[local(self.dns_port), local(self.dns_mgmt_port)],
            &log,
        );
        self.dns = Some(proc);
    }

    fn start_ca(&mut self) {
        self.starts += 1;
        let log = self.dir.0.join(format!("pebble-{}.log", self.starts));
        let out = std::fs::File::create(&log).unwrap();
        let mut proc = Proc(
            Command::new("pebble")
                .arg("-config")
                .arg(self.dir.0.join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("spawning pebble"),
        );
        wait_listening(
            "pebble",
            &mut proc,
            &[local(self.acme_port), local(self.mgmt_port)],
            &log,
        );
        self.ca = Some(proc);
    }

    /// The ACME directory URL (`https://127.0.0.1:<port>/dir`; pebble's listener certificate
    /// covers 127.0.0.1 and `localhost`).
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The certificate pebble's own HTTPS listener presents (self-signed, PEM): what
    /// interlock needs as `--acme-ca-root` to trust the directory.
    pub fn listener_ca(&self) -> PathBuf {
        self.dir.0.join("listener.pem")
    }

    /// The options it was started with.
    pub fn options(&self) -> &PebbleOptions {
        &self.opts
    }

    /// Fetches the root that issues this pebble's certificates from its management API
    /// (`/roots/0`) and writes it to a file (PEM), for `curl --cacert`. A restarted pebble
    /// has a new root: fetch again.
    pub fn fetch_root(&self) -> PathBuf {
        let pem = self.management("/roots/0");
        assert!(pem.contains("BEGIN CERTIFICATE"), "not a root: {pem}");
        let path = self.dir.0.join(format!("issuing-root-{}.pem", self.starts));
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// The intermediate that signs this pebble's leaf certificates (PEM text).
    pub fn intermediate_pem(&self) -> String {
        self.management("/intermediates/0")
    }

    fn management(&self, path: &str) -> String {
        let ca = self.listener_ca();
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://127.0.0.1:{}{path}", self.mgmt_port),
        ])
    }

    /// Makes the CA's DNS answer `host` (a name such as `a.test`) with `ip` (A record), so
    /// validations for it connect to `ip` instead of 127.0.0.1.
    pub fn add_a(&self, host: &str, ip: &str) {
        let host = host.trim_end_matches('.');
        let body = format!("{{\"host\":\"{host}.\",\"addresses\":[\"{ip}\"]}}");
        curl(&[
            "-X",
            "POST",
            "--data",
            &body,
            &format!("http://127.0.0.1:{}/add-a", self.dns_mgmt_port),
        ]);
    }

    /// Stops the CA (SIGKILL; its DNS server keeps running): the directory is unreachable
    /// until [`Pebble::restart`].
    pub fn stop(&mut self) {
        self.ca.take();
    }

    /// Starts the CA again on the same ports and configuration (a new issuing root).
    pub fn restart(&mut self) {
        self.stop();
        self.start_ca();
    }

    pub fn running(&self) -> bool {
        self.ca.is_some()
    }

    /// Both processes' output so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names = vec!["challtestsrv.log".to_string()];
        names.extend((1..=self.starts).map(|n| format!("pebble-{n}.log")));
        for name in names {
            out.push_str(&format!("== {name}\n"));
            out.push_str(&std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default());
        }
        out
    }
}

/// `{"pebble": {k: v, ...}}` with the values already JSON (testkit has no JSON crate).
fn serde_like_json(fields: &[(&str, String)]) -> String {
    let body = fields
        .iter()
        .map(|(k, v)| format!("    \"{k}\": {v}"))
        .collect::<Vec<_>>()
        .join(",\n");
    format!("{{\n  \"pebble\": {{\n{body}\n  }}\n}}\n")
}
