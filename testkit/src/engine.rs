//! A Docker daemon for tests: the `docker` CLI, images imported from the test binaries
//! (nothing is pulled), a blocking HTTP client for published ports.
//!
//! Every helper here talks to the daemon given once to [`use_daemon`] (a private daemon the
//! test started, e.g. a node of [`crate::multinode::Bed`]); until then, to the daemon of the
//! process's environment (`DOCKER_HOST`, or the machine's engine: `docker build` only).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The daemon of [`use_daemon`].
static DAEMON: OnceLock<String> = OnceLock::new();

/// Points every helper of this module, and [`docker_command`], at the daemon `host`
/// (`unix://...`) for the rest of this process. Set once, before the helpers are used; never
/// through the process environment (tests run in threads).
pub fn use_daemon(host: &str) {
    let set = DAEMON.get_or_init(|| host.to_string());
    assert_eq!(set, host, "this process already uses another daemon");
}

/// The daemon of [`use_daemon`], if one was given.
pub fn daemon() -> Option<&'static str> {
    DAEMON.get().map(String::as_str)
}

/// The docker CLI `cli` aimed at the daemon of [`use_daemon`] (if one was given).
pub fn docker_cli(cli: &str) -> Command {
    let mut cmd = Command::new(cli);
    if let Some(host) = daemon() {
        cmd.env("DOCKER_HOST", host);
    }
    cmd
}

/// `docker` aimed at the daemon of [`use_daemon`] (if one was given).
pub fn docker_command() -> Command {
    docker_cli("docker")
}

/// Runs `docker ARGS`, returns stdout; panics with stderr on failure. A service update that
/// swarm refused as "update out of sequence" (the spec the CLI read was changed by swarm in
/// the meantime; nothing was applied) is run again, a few times, as the CLI's users must.
pub fn docker(args: &[&str]) -> String {
    let run = || {
        docker_command()
            .args(args)
            .output()
            .expect("docker CLI runs")
    };
    let mut out = run();
    for _ in 0..5 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("update out of sequence")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        out = run();
    }
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker ARGS` and ignores failure (cleanup).
pub fn docker_quiet(args: &[&str]) {
    let _ = docker_command()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn bin_dir() -> PathBuf {
    super::node::bin().parent().unwrap().to_path_buf()
}

/// `docker/rootfs.sh`: what the image is made of, as the Dockerfile builds it too:
/// `out/rootfs` (the root file system) and `out/state` (its /var/lib/interlock).
pub fn rootfs(binary: &Path, out: &Path, name: &str) {
    let script = super::repo().join("docker/rootfs.sh");
    let st = Command::new(script)
        .arg(binary)
        .arg(out)
        .arg(name)
        .status()
        .expect("docker/rootfs.sh runs");
    assert!(st.success(), "docker/rootfs.sh {}", binary.display());
}

/// Imports an image holding one binary (as its entrypoint) and the libraries it links.
pub fn import_image(tag: &str, binary: &Path) {
    let root = std::env::temp_dir().join(format!(
        "ilt-rootfs-{}-{}",
        std::process::id(),
        tag.replace(['/', ':'], "_")
    ));
    let _ = std::fs::remove_dir_all(&root);
    let name = binary.file_name().unwrap().to_str().unwrap();
    rootfs(binary, &root, name);
    let mut tar = Command::new("tar")
        .args(["-C", root.join("rootfs").to_str().unwrap(), "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    crate::node::succeed(
        docker_command()
            .args([
                "import",
                "--change",
                &format!("ENTRYPOINT [\"/{name}\"]"),
                "-",
                tag,
            ])
            .stdin(tar.stdout.take().unwrap()),
        "docker import",
    );
    assert!(tar.wait().unwrap().success(), "tar of the image root");
    let _ = std::fs::remove_dir_all(&root);
}

/// A response of the tiny blocking client.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub backend: Option<String>,
    pub body: Vec<u8>,
}

/// One blocking HTTP/1.1 GET with `Connection: close`; `None` if the connection failed.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<Reply> {
    http_get_within(addr, host, path, Duration::from_secs(10))
}

/// [`http_get`], waiting up to `read_timeout` for each read (a request the backend answers
/// late on purpose needs more than the usual 10 s).
pub fn http_get_within(
    addr: SocketAddr,
    host: &str,
    path: &str,
    read_timeout: Duration,
) -> Option<Reply> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let backend = head
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: ").map(str::to_string));
    Some(Reply {
        status,
        backend,
        body: raw[split + 4..].to_vec(),
    })
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds `docker/prebuilt.Dockerfile` around `binary` (the image's runtime stage, without
/// compiling again inside Docker) as `tag` with the classic builder (`DOCKER_BUILDKIT=0`),
/// and with BuildKit as `tag-buildkit` where a CLI has it (the docker CLI in /usr/local/bin
/// lacks the buildx plugin; the engine package's /usr/bin/docker has BuildKit built in),
/// and checks that both builders give the same image.
pub fn build_image(tag: &str, binary: &Path) {
    let ctx = std::env::temp_dir().join(format!(
        "ilt-context-{}-{}",
        std::process::id(),
        tag.replace(['/', ':'], "_")
    ));
    let _ = std::fs::remove_dir_all(&ctx);
    rootfs(binary, &ctx, "interlock");
    let dockerfile = super::repo().join("docker/prebuilt.Dockerfile");
    let build = |buildkit: &str, tag: &str| -> Result<(), String> {
        let mut errors = Vec::new();
        for cli in ["docker", "/usr/bin/docker"] {
            let out = docker_cli(cli)
                .env("DOCKER_BUILDKIT", buildkit)
                .args(["build", "-q", "-t", tag, "-f"])
                .arg(&dockerfile)
                .arg(&ctx)
                .output();
            match out {
                Ok(o) if o.status.success() => return Ok(()),
                Ok(o) => errors.push(format!("{cli}: {}", String::from_utf8_lossy(&o.stderr))),
                Err(e) => errors.push(format!("{cli}: {e}")),
            }
        }
        Err(errors.join("\n"))
    };
    let classic = build("0", tag);
    let buildkit_tag = format!("{tag}-buildkit");
    let buildkit = build("1", &buildkit_tag);
    let _ = std::fs::remove_dir_all(&ctx);
    match (classic, buildkit) {
        (Ok(()), Ok(())) => assert_eq!(
            image_layout(tag),
            image_layout(&buildkit_tag),
            "the classic builder and BuildKit build the same image"
        ),
        (Ok(()), Err(e)) => eprintln!("no BuildKit here, built with the classic builder only: {e}"),
        (Err(e), Ok(())) => {
            eprintln!("no classic builder here, built with BuildKit only: {e}");
            docker(&["tag", &buildkit_tag, tag]);
        }
        (Err(a), Err(b)) => panic!("docker build of docker/prebuilt.Dockerfile failed:\n{a}\n{b}"),
    }
}

/// An image's files (mode, numeric owner, path) and run-time configuration (user,
/// entrypoint, command, health check, ports), one per line.
pub fn image_layout(tag: &str) -> String {
    let config = docker(&[
        "image",
        "inspect",
        tag,
        "--format",
        "user={{json .Config.User}} entrypoint={{json .Config.Entrypoint}} cmd={{json .Config.Cmd}} \
         healthcheck={{json .Config.Healthcheck}} ports={{json .Config.ExposedPorts}}",
    ]);
    let id = docker(&["create", tag]);
    let mut export = docker_command()
        .args(["export", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let list = Command::new("tar")
        .args(["--numeric-owner", "-tvf", "-"])
        .stdin(export.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(export.wait().unwrap().success(), "docker export {tag}");
    docker_quiet(&["rm", &id]);
    // Docker adds these to every container's root.
    let added = [
        ".dockerenv",
        "dev",
        "proc",
        "sys",
        "etc/hosts",
        "etc/hostname",
    ];
    let added_too = ["etc/resolv.conf", "etc/mtab", "dev/", "proc/", "sys/"];
    let mut files: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| {
            // mode owner/group size date time path (links have more)
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5..)?.join(" ");
            let path = path.trim_start_matches("./").trim_end_matches('/');
            let docker_made =
                added.contains(&path) || added_too.iter().any(|a| path.starts_with(a));
            (!docker_made && !path.is_empty()).then(|| format!("{} {} {path}", f[0], f[1]))
        })
        .collect();
    files.sort();
    format!("{config}\n{}", files.join("\n"))
}

/// Imports the example backend (`examples/backend.rs`, built if missing) as `tag`.
pub fn backend_image(tag: &str) {
    build_example_backend();
    import_image(tag, &bin_dir().join("examples/backend"));
}

/// `base` with a HEALTHCHECK in exec form (the image has no shell): `backend --check`. A task
/// whose container has one is reported running only once it is healthy, so a proxy never
/// routes to a backend that is not listening yet (without it, a task can be running a few
/// milliseconds before its process listens, and with retries off that is a 502).
pub fn with_healthcheck(base: &str, tag: &str) {
    use std::io::Write;
    let dockerfile = format!(
        "FROM {base}\nHEALTHCHECK --interval=250ms --timeout=2s --retries=3 \
         CMD [\"/backend\", \"--check\", \"127.0.0.1:9001\"]\n"
    );
    let mut build = docker_command()
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    build
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker build of {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cargo build --example backend` (a no-op when it is current; a stale binary is never
/// used), without the variables cargo sets for the test process: build scripts watch some of
/// them (ring's does), and seeing them changed would rebuild half the tree.
pub fn build_example_backend() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", "backend"]);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let set_by_cargo = k == "OUT_DIR"
            || k == "CARGO_PRIMARY_PACKAGE"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|p| k.starts_with(p));
        if set_by_cargo {
            cmd.env_remove(&*k);
        }
    }
    let st = cmd.status().unwrap();
    assert!(st.success(), "building the example backend");
}

/// Starts container `name` (replacing one of that name) of the example backend `image`,
/// answering as `backend` and labelled for `host` on port 9001; `extra` goes to `docker run`.
pub fn run_backend_container(name: &str, image: &str, backend: &str, host: &str, extra: &[&str]) {
    docker_quiet(&["rm", "-f", name]);
    let env = format!("BACKEND_NAME={backend}");
    let hosts = format!("com.docker.lb.hosts={host}");
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(extra);
    args.extend([
        "--name",
        name,
        "-e",
        &env,
        "-l",
        &hosts,
        "-l",
        "com.docker.lb.port=9001",
        image,
        "--listen",
        "0.0.0.0:9001",
    ]);
    docker(&args);
}
