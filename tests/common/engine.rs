//! The local Docker Engine for tests: the `docker` CLI, images imported from the test
//! binaries (nothing is pulled), a blocking HTTP client for published ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether Docker tests are switched off (INTERLOCK_SKIP_DOCKER=1).
pub fn skip() -> bool {
    std::env::var("INTERLOCK_SKIP_DOCKER").is_ok_and(|v| v == "1")
}

/// Runs `docker ARGS`, returns stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs");
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
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_interlock"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `docker/rootfs.sh`: the image root file system the Dockerfile builds too.
pub fn rootfs(binary: &Path, out: &Path, name: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/rootfs.sh");
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
        .args(["-C", root.to_str().unwrap(), "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("ENTRYPOINT [\"/{name}\"]"),
            "-",
            tag,
        ])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar of the image root");
    assert!(
        import.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
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
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
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

/// Builds the repository's Dockerfile around `binary` (`--build-arg ARTIFACTS=prebuilt`:
/// the runtime stage, without compiling again inside Docker). Needs BuildKit, which skips
/// the Rust stage; a docker CLI without the buildx plugin refuses BuildKit, so the engine
/// package's own CLI is tried too.
pub fn build_image(tag: &str, binary: &Path) {
    let ctx = std::env::temp_dir().join(format!(
        "ilt-context-{}-{}",
        std::process::id(),
        tag.replace(['/', ':'], "_")
    ));
    let _ = std::fs::remove_dir_all(&ctx);
    rootfs(binary, &ctx.join("rootfs"), "interlock");
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let mut errors = Vec::new();
    for cli in ["docker", "/usr/bin/docker"] {
        let out = Command::new(cli)
            .env("DOCKER_BUILDKIT", "1")
            .args([
                "build",
                "-q",
                "--build-arg",
                "ARTIFACTS=prebuilt",
                "-t",
                tag,
                "-f",
            ])
            .arg(&dockerfile)
            .arg(&ctx)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let _ = std::fs::remove_dir_all(&ctx);
                return;
            }
            Ok(o) => errors.push(format!("{cli}: {}", String::from_utf8_lossy(&o.stderr))),
            Err(e) => errors.push(format!("{cli}: {e}")),
        }
    }
    panic!(
        "docker build of the Dockerfile failed:\n{}",
        errors.join("\n")
    );
}

/// Imports the example backend (`examples/backend.rs`, built if missing) as `tag`.
pub fn backend_image(tag: &str) {
    let backend = bin_dir().join("examples/backend");
    if !backend.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--example", "backend"])
            .status()
            .unwrap();
        assert!(st.success(), "building the example backend");
    }
    import_image(tag, &backend);
}

/// Makes this engine a (one-node) swarm if it is not one.
pub fn ensure_swarm() {
    if docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]) != "active" {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    }
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
