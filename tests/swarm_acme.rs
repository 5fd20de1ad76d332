//! examples/swarm/stack.yml with ACME turned on, against a real ACME server: Debian's
//! `pebble` and `pebble-challtestsrv`, run inside the bed as Swarm services (the bed's
//! daemon has no bridge and no iptables, so its containers cannot reach the host; the CA
//! lives where the stack does). pebble joins the stack's `control` network (the controller
//! dials `https://pebble:14000/dir`, trusting pebble's listener certificate, a Docker secret
//! added to the controller) and prod's apps network (HTTP-01 validations reach prod's proxy
//! on its port 8080: challtestsrv answers every name with that proxy's address).
//!
//! An app labelled `ssl_acme=true`, `hosts=secure.test`, `service_cluster=prod` gets a
//! certificate issued by pebble, served by prod's proxy on its TLS port (curl verifies it
//! against pebble's issuing root only); the ACME state (account and certificate key) stays
//! on the controller's volume: prod's saved snapshot holds the certificate but no string of
//! the account, dev's holds nothing of secure.test. The time from `docker service create`
//! of the app to the certificate served is printed.
//!
//! Gated like tests/swarm_stack.rs (INTERLOCK_SKIP_DOCKER=1, INTERLOCK_SKIP_MULTINODE=1);
//! fails with a pointer to the package when pebble is not installed.

use interlock_testkit as common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{
    backend_image, build_image, docker, docker_command, import_image, use_daemon, wait_until,
};
use common::free_port;
use common::multinode::{missing_tools, Bed, BedNode};
use common::node::{succeed, Scratch};
use common::pem::{holds, long_strings, pem_texts};

const IMAGE: &str = "interlock-test/interlock:acme";
const BACKEND_IMAGE: &str = "interlock-test/backend:acme";
const PEBBLE_IMAGE: &str = "interlock-test/pebble:acme";
const CHALLTESTSRV_IMAGE: &str = "interlock-test/pebble-challtestsrv:acme";

/// The deployed stack and the CA's services; their logs are printed on drop if the test
/// fails.
struct Stack {
    name: String,
    prod_network: String,
    dir: Scratch,
    prod_tls: SocketAddr,
    dev_tls: SocketAddr,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for svc in [
                format!("{}_controller", self.name),
                format!("{}_proxy-prod", self.name),
                format!("{}_proxy-dev", self.name),
                "pebble".to_string(),
                "challtestsrv".to_string(),
            ] {
                if let Ok(o) = docker_command()
                    .args(["service", "logs", "--raw", &svc])
                    .output()
                {
                    eprintln!(
                        "--- {svc} ---\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
    }
}

impl Stack {
    /// `docker stack deploy` of the example stack (the controller's socket mount pointed at
    /// the bed's daemon), with ACME on and its directory at `directory`.
    fn deploy(node: &BedNode, directory: &str) -> Stack {
        let name = format!("ilacme{}", std::process::id());
        let dir = Scratch::new("swarm-acme");
        dir.issue_certs(&["controller"], &["prod", "dev"]);
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let stack = Stack {
            prod_network: format!("{name}-apps-prod"),
            prod_tls: SocketAddr::from((node.addr, ports[2])),
            dev_tls: SocketAddr::from((node.addr, ports[3])),
            name,
            dir,
        };
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/swarm/stack.yml");
        let text = std::fs::read_to_string(&file).unwrap();
        let socket = node.host.trim_start_matches("unix://");
        let text: String = text
            .lines()
            .map(|l| {
                if l.contains("/var/run/docker.sock") && !l.trim_start().starts_with('#') {
                    l.replacen("/var/run/docker.sock", socket, 1)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let deployed = stack.dir.path("stack.yml");
        std::fs::write(&deployed, text).unwrap();
        let manager = "node.role == manager";
        succeed(
            docker_command()
                .args(["stack", "deploy", "-c"])
                .arg(&deployed)
                .arg(&stack.name)
                .env("INTERLOCK_IMAGE", IMAGE)
                .env("INTERLOCK_CERTS", &stack.dir.0)
                .env("PROD_HTTP_PORT", ports[0].to_string())
                .env("DEV_HTTP_PORT", ports[1].to_string())
                .env("PROD_HTTPS_PORT", ports[2].to_string())
                .env("DEV_HTTPS_PORT", ports[3].to_string())
                .env("CONTROLLER_PLACEMENT", manager)
                .env("PROD_PLACEMENT", manager)
                .env("DEV_PLACEMENT", manager)
                .env("PROD_APPS_NETWORK", &stack.prod_network)
                .env("DEV_APPS_NETWORK", format!("{}-apps-dev", stack.name))
                // ACME with one controller, as docs/swarm.md says.
                .env("CONTROLLER_MODE", "replicated")
                .env("ACME_AGREE_TOS", "true")
                .env("ACME_EMAIL", "ops@secure.test")
                .env("ACME_DIRECTORY", directory)
                .env("ACME_CHALLENGE", "http-01"),
            "docker stack deploy",
        );
        stack
    }

    /// The full name of `svc`: the stack's services by their short names, others as given.
    fn full(&self, svc: &str) -> String {
        if svc == "controller" || svc.starts_with("proxy-") {
            format!("{}_{svc}", self.name)
        } else {
            svc.to_string()
        }
    }

    /// The running containers of `svc`.
    fn containers(&self, svc: &str) -> Vec<String> {
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={}", self.full(svc)),
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Waits (90 s at most) until `svc` runs exactly one container, and returns it.
    fn running(&self, svc: &str) -> String {
        let mut found = Vec::new();
        wait_until(Duration::from_secs(90), || {
            found = self.containers(svc);
            found.len() == 1
        });
        found.remove(0)
    }
}

/// The address of `container` on `network`.
fn ip(container: &str, network: &str) -> String {
    docker(&[
        "inspect",
        container,
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    ])
}

/// The text of file `path` in `container` (`docker cp` to a tar stream, unpacked), or
/// `None` if it is not there.
fn file_in(container: &str, path: &str) -> Option<String> {
    let out = docker_command()
        .args(["cp", &format!("{container}:{path}"), "-"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut tar = Command::new("tar")
        .args(["-xOf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        tar.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    }
    let text = tar.wait_with_output().unwrap();
    text.status
        .success()
        .then(|| String::from_utf8_lossy(&text.stdout).into_owned())
}

/// `curl --cacert ROOT --resolve host:port:ip https://host:port/`: the body on a 200, or
/// what curl said.
fn curl_https(root: &Path, host: &str, addr: SocketAddr) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(root)
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
        .arg(format!("https://{host}:{}/", addr.port()))
        .output()
        .expect("curl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
#[cfg_attr(skip_multinode, ignore = "INTERLOCK_SKIP_MULTINODE=1")]
fn the_example_stack_gets_a_certificate_from_an_acme_ca_in_the_swarm() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "this test starts a dockerd of its own and needs {missing:?}"
    );
    for bin in ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv"] {
        assert!(
            Path::new(bin).is_file(),
            "{bin} is not installed: this test needs Debian's pebble package \
             (`apt-get install pebble`; scripts/test.sh installs it when missing)"
        );
    }
    let t0 = Instant::now();
    let bed = Bed::up(1, 0);
    let node = bed.manager().clone();
    use_daemon(&node.host);
    backend_image(BACKEND_IMAGE);
    import_image(PEBBLE_IMAGE, Path::new("/usr/bin/pebble"));
    import_image(
        CHALLTESTSRV_IMAGE,
        Path::new("/usr/bin/pebble-challtestsrv"),
    );
    build_image(IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));
    eprintln!(
        "bed {} ({}) up in {:.1} s, images on it at {:.1} s",
        node.hostname,
        node.addr,
        bed.started_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let stack = Stack::deploy(&node, "https://pebble:14000/dir");
    let control = format!("{}_control", stack.name);
    let prod_net = stack.prod_network.clone();

    // The CA's DNS: every name is prod's proxy on prod's apps network.
    let proxy = stack.running("proxy-prod");
    let proxy_ip = ip(&proxy, &prod_net);
    assert!(
        !proxy_ip.is_empty(),
        "prod's proxy has no address on {prod_net}"
    );
    docker(&[
        "service",
        "create",
        "-d",
        "-q",
        "--name",
        "challtestsrv",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        &control,
        CHALLTESTSRV_IMAGE,
        "-dns01",
        ":8053",
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-defaultIPv4",
        &proxy_ip,
        "-defaultIPv6",
        "",
    ]);
    let dns_ip = ip(&stack.running("challtestsrv"), &control);

    // pebble: its listener certificate names `pebble` (the name the controller dials), its
    // configuration and certificate are bind-mounted from a scratch directory, and its
    // management API is published on the node (for the issuing root).
    let listener = rcgen::generate_simple_self_signed(vec!["pebble".to_string()]).unwrap();
    std::fs::write(stack.dir.0.join("listener.pem"), listener.cert.pem()).unwrap();
    std::fs::write(
        stack.dir.0.join("listener.key"),
        listener.signing_key.serialize_pem(),
    )
    .unwrap();
    std::fs::write(
        stack.dir.0.join("pebble.json"),
        r#"{"pebble": {
  "listenAddress": "0.0.0.0:14000",
  "managementListenAddress": "0.0.0.0:15000",
  "certificate": "/config/listener.pem",
  "privateKey": "/config/listener.key",
  "httpPort": 8080,
  "tlsPort": 8443,
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false
}}
"#,
    )
    .unwrap();
    let mgmt = SocketAddr::from((node.addr, free_port()));
    docker(&[
        "service",
        "create",
        "-d",
        "-q",
        "--name",
        "pebble",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        &control,
        "--network",
        &prod_net,
        "--mount",
        &format!(
            "type=bind,source={},target=/config,readonly",
            stack.dir.0.display()
        ),
        "--publish",
        &format!("mode=host,target=15000,published={}", mgmt.port()),
        "--env",
        "PEBBLE_VA_NOSLEEP=1",
        "--env",
        "PEBBLE_WFE_NONCEREJECT=0",
        "--env",
        "PEBBLE_AUTHZREUSE=0",
        PEBBLE_IMAGE,
        "-config",
        "/config/pebble.json",
        "-dnsserver",
        &format!("{dns_ip}:8053"),
    ]);
    stack.running("pebble");
    let listener_ca = stack.dir.0.join("listener.pem");
    let mut root = String::new();
    wait_until(Duration::from_secs(60), || {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "3", "--cacert"])
            .arg(&listener_ca)
            .arg("--resolve")
            .arg(format!("pebble:{}:{}", mgmt.port(), mgmt.ip()))
            .arg(format!("https://pebble:{}/roots/0", mgmt.port()))
            .output()
            .unwrap();
        root = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && root.contains("BEGIN CERTIFICATE")
    });
    let root_file = stack.dir.0.join("issuing-root.pem");
    std::fs::write(&root_file, &root).unwrap();

    // The controller trusts pebble's listener: its certificate as a Docker secret.
    let secret = format!("{}-acme-ca.pem", stack.name);
    docker(&[
        "secret",
        "create",
        &secret,
        stack.dir.path("listener.pem").as_str(),
    ]);
    let controller = format!("{}_controller", stack.name);
    docker(&[
        "service",
        "update",
        "-d",
        "--secret-add",
        &format!("source={secret},target=acme-ca.pem"),
        "--env-add",
        "INTERLOCK_ACME_CA_ROOT=/run/secrets/acme-ca.pem",
        &controller,
    ]);
    wait_until(Duration::from_secs(90), || {
        docker(&[
            "service",
            "inspect",
            &controller,
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
        ]) == "completed"
    });
    let controller_c = stack.running("controller");
    eprintln!(
        "stack, pebble and the controller trusting it up at {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // The app.
    let app = format!("{}-secure", stack.name);
    let created = Instant::now();
    docker(&[
        "service",
        "create",
        "-d",
        "-q",
        "--name",
        &app,
        "--network",
        &prod_net,
        "--env",
        "BACKEND_NAME=secure",
        "--label",
        "com.docker.lb.hosts=secure.test",
        "--label",
        "com.docker.lb.port=9001",
        "--label",
        "com.docker.lb.service_cluster=prod",
        "--label",
        "com.docker.lb.ssl_acme=true",
        BACKEND_IMAGE,
        "--listen",
        "0.0.0.0:9001",
    ]);
    let mut last = Err(String::new());
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        last = curl_https(&root_file, "secure.test", stack.prod_tls);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let served_after = created.elapsed();
    let body = last.unwrap_or_else(|e| {
        panic!("prod's proxy does not serve secure.test with pebble's certificate: {e}")
    });
    assert!(body.starts_with("secure"), "{body}");
    eprintln!(
        "docker service create of the ssl_acme app -> pebble's certificate served by prod's \
         proxy (curl --cacert pebble's root): {:.1} s",
        served_after.as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leaf = rt
        .block_on(common::tls::try_served_at(stack.prod_tls, "secure.test"))
        .expect("a TLS handshake with prod's proxy for secure.test");
    // dev's proxy does not serve it.
    assert!(
        curl_https(&root_file, "secure.test", stack.dev_tls).is_err(),
        "dev's proxy serves secure.test with pebble's certificate"
    );

    // The ACME state stays on the controller: its account and the certificate's key there,
    // nothing of the account in the proxies' snapshots, nothing of secure.test in dev's.
    let account = file_in(&controller_c, "/var/lib/interlock/acme/account.json")
        .expect("the controller saved its ACME account on its volume");
    let account: serde_json::Value = serde_json::from_str(&account).unwrap();
    let account_secrets = long_strings(&account);
    assert!(!account_secrets.is_empty(), "no key in account.json");
    let saved_cert = file_in(
        &controller_c,
        "/var/lib/interlock/acme/certs/secure.test.json",
    )
    .expect("the controller saved secure.test's certificate on its volume");
    assert!(
        holds(&saved_cert, &leaf),
        "the controller's saved certificate is not the served one"
    );
    let cert_keys = pem_texts(&saved_cert, "PRIVATE KEY");
    assert_eq!(cert_keys.len(), 1, "one key in secure.test.json");
    let prod_c = stack.running("proxy-prod");
    let dev_c = stack.running("proxy-dev");
    for c in [&prod_c, &dev_c] {
        assert!(
            file_in(c, "/var/lib/interlock/acme/account.json").is_none(),
            "a proxy has the ACME state directory"
        );
    }
    let mut prod_json = String::new();
    wait_until(Duration::from_secs(30), || {
        prod_json = file_in(&prod_c, "/var/lib/interlock/prod.json").unwrap_or_default();
        holds(&prod_json, &leaf)
    });
    let dev_json =
        file_in(&dev_c, "/var/lib/interlock/dev.json").expect("dev's proxy saved its snapshot");
    assert!(
        pem_texts(&prod_json, "PRIVATE KEY").contains(&cert_keys[0]),
        "prod's snapshot holds secure.test's key (it serves it after a restart)"
    );
    for secret in &account_secrets {
        for (who, text) in [("prod", &prod_json), ("dev", &dev_json)] {
            assert!(
                !text.contains(secret.as_str()),
                "{who}'s snapshot holds the ACME account's {secret:.12}..."
            );
        }
    }
    assert!(
        !dev_json.contains("secure.test"),
        "dev's snapshot names secure.test"
    );
    assert!(
        !holds(&dev_json, &leaf),
        "dev's snapshot holds secure.test's certificate"
    );
    assert!(
        !pem_texts(&dev_json, "PRIVATE KEY").contains(&cert_keys[0]),
        "dev's snapshot holds secure.test's key"
    );

    // A second controller replica with ACME on: the controllers say it is one too many.
    docker(&["service", "scale", "-d", &format!("{controller}=2")]);
    let mut warned = false;
    wait_until(Duration::from_secs(60), || {
        warned = stack.containers("controller").iter().any(|c| {
            docker_command()
                .args(["logs", c])
                .output()
                .map(|o| {
                    let log = String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr);
                    log.lines().any(|l| {
                        l.contains("several controller replicas") && l.contains("\"replicas\":2")
                    })
                })
                .unwrap_or(false)
        });
        warned
    });
    assert!(warned, "no controller warned of two replicas with ACME on");
    docker(&["service", "scale", "-d", &format!("{controller}=1")]);
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
    drop(stack);
    drop(bed);
}
