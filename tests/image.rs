//! The image as users get it: the Dockerfile (from source) and docker/prebuilt.Dockerfile
//! share one runtime stage and build the same image with the classic builder and with
//! BuildKit, and `interlock certs` runs from the image exactly as docs/swarm.md shows it, as
//! the caller's user. INTERLOCK_SKIP_DOCKER=1 marks the Docker parts ignored.
//!
//! The images are built on the machine's Docker Engine (building is all this test does
//! there): every tag carries this process's id, so concurrent runs never overwrite each
//! other's images, and every image a test made (tags, and the untagged stages of the source
//! build, found by a label naming its stand-in Rust image) is removed at its end, also on
//! panic.

use interlock_testkit as common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::engine::{build_image, docker, docker_command, docker_quiet, image_layout};
use common::node::{succeed, Scratch};

/// `interlock-test/<name>:<tag>-<pid>`: this process's tag of an image.
fn tag(name: &str, tag: &str) -> String {
    format!("interlock-test/{name}:{tag}-{}", std::process::id())
}

/// The label of the stand-in Rust image `tag` (and so of the build stages made from it).
fn stub_label(tag: &str) -> String {
    format!("interlock-test.stub={}", tag.replace(['/', ':'], "_"))
}

/// Removes, on drop (also on panic), the images of `tags` (and `<tag>-buildkit`, which
/// `build_image` makes beside each) and every image labelled `label`.
struct Images {
    tags: Vec<String>,
    label: Option<String>,
}

impl Drop for Images {
    fn drop(&mut self) {
        for t in &self.tags {
            docker_quiet(&["rmi", "-f", t, &format!("{t}-buildkit")]);
        }
        let Some(label) = &self.label else { return };
        // A parent goes once its children have: a few rounds.
        for _ in 0..5 {
            let labelled = docker_command()
                .args(["images", "-a", "-q", "--filter"])
                .arg(format!("label={label}"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let mut ids: Vec<&str> = labelled.lines().collect();
            ids.dedup();
            if ids.is_empty() {
                break;
            }
            let mut args = vec!["rmi", "-f"];
            args.extend(ids);
            docker_quiet(&args);
        }
    }
}

/// The runtime stage of a Dockerfile: from its last `FROM`, comments and blank lines
/// dropped, with the build stage's sources (`--from=build /out/...`) written as context paths.
fn runtime_stage(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[from..]
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("--from=build ", "").replace(" /out/", " "))
        .collect()
}

#[test]
fn both_dockerfiles_share_one_runtime_stage() {
    let source = runtime_stage("Dockerfile");
    assert_eq!(source, runtime_stage("docker/prebuilt.Dockerfile"));
    assert!(source
        .iter()
        .any(|l| l.starts_with("HEALTHCHECK ") && l.ends_with(r#"CMD ["/interlock", "health"]"#)));
    assert!(source.contains(&"COPY --chown=65532:65532 state /var/lib/interlock".to_string()));
    // The classic builder builds every stage: the prebuilt path names no other image.
    let prebuilt = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prebuilt.Dockerfile"),
    )
    .unwrap();
    let froms: Vec<&str> = prebuilt
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms, ["FROM scratch"]);
}

/// What the source Dockerfile's build stage copies from the context (`COPY` lines without
/// `--from`, into the work directory), copied the same way into a fresh directory, is a
/// workspace cargo resolves with the lock file as it is (`--locked`, from the packages
/// already on this machine): every path dependency and workspace member is there. (The image test below builds with a stand-in
/// for cargo, so it cannot tell.)
#[test]
fn the_source_dockerfiles_build_stage_copies_what_cargo_needs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    let build_stage = text
        .lines()
        .skip_while(|l| !l.starts_with("FROM "))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "));
    let dir = Scratch::new("dockerfile-context");
    let mut copied = Vec::new();
    for line in build_stage {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        let words: Vec<&str> = args.split_whitespace().collect();
        let Some((dest, sources)) = words.split_last() else {
            continue;
        };
        if dest.starts_with('/') || sources.iter().any(|s| s.starts_with("--")) {
            continue;
        }
        for source in sources {
            let status = Command::new("cp")
                .arg("-r")
                .arg(repo.join(source))
                .arg(dir.0.join(source))
                .status()
                .unwrap();
            assert!(status.success(), "cp {source}");
            copied.push(*source);
        }
    }
    assert!(
        copied.contains(&"Cargo.toml") && copied.contains(&"src"),
        "{copied:?}"
    );
    // The host's platform only: what other platforms need is not downloaded here.
    let host = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    succeed(
        Command::new(env!("CARGO"))
            .args(["metadata", "--locked", "--offline", "--format-version", "1"])
            .args(["--filter-platform", &host])
            .current_dir(&dir.0),
        &format!("cargo resolving the Dockerfile's build context ({copied:?})"),
    );
}

/// The documented line, run by `sh` in `dir` with the image's tag substituted.
fn documented_certs(dir: &Path, user: &str, image: &str) -> std::process::Output {
    let line = format!(
        "mkdir -p certs && docker run --rm -v \"$PWD/certs:/certs\" --user \"{user}\" {image} \
         certs --out /certs --controller-name controller --cluster prod --cluster dev"
    );
    Command::new("sh")
        .args(["-c", &line])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// What `interlock certs` left in `dir`, checked: every file owned by `uid`, keys 0600.
fn check_issued(dir: &Path, uid: u32) {
    for name in [
        "ca.pem",
        "ca.key",
        "controller.pem",
        "controller.key",
        "proxy-prod.pem",
        "proxy-prod.key",
        "proxy-dev.pem",
        "proxy-dev.key",
    ] {
        let meta = std::fs::metadata(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta.uid(), uid, "{name} is the caller's");
        let mode = meta.permissions().mode() & 0o777;
        if name.ends_with(".key") {
            assert_eq!(mode, 0o600, "{name}: {mode:o}");
        } else {
            assert_eq!(mode & 0o044, 0o044, "{name} is readable: {mode:o}");
        }
    }
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn certs_run_from_the_image_as_the_callers_user() {
    let image = tag("interlock", "image");
    let _images = Images {
        tags: vec![image.clone()],
        label: None,
    };
    build_image(&image, Path::new(env!("CARGO_BIN_EXE_interlock")));

    // Exactly as documented, `--user "$(id -u):$(id -g)"`.
    let s = Scratch::new("image-certs");
    let out = documented_certs(&s.0, "$(id -u):$(id -g)", &image);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = std::fs::metadata(&s.0).unwrap().uid();
    check_issued(&s.0.join("certs"), uid);
    // Again with the same directory: the CA is reused (a cluster added later).
    let ca = std::fs::read(s.0.join("certs/ca.pem")).unwrap();
    let out = documented_certs(&s.0, "$(id -u):$(id -g)", &image);
    assert!(out.status.success());
    assert_eq!(std::fs::read(s.0.join("certs/ca.pem")).unwrap(), ca);

    // A user who is not root: the same line writes files that user owns.
    let other = Scratch::new("image-certs-user");
    std::fs::create_dir(other.0.join("certs")).unwrap();
    std::os::unix::fs::chown(other.0.join("certs"), Some(12345), Some(12345)).unwrap();
    let out = documented_certs(&other.0, "12345:12345", &image);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_issued(&other.0.join("certs"), 12345);

    // Why --user: the image's own user cannot write into a directory of someone else's.
    let root_owned = Scratch::new("image-certs-default");
    std::fs::create_dir(root_owned.0.join("certs")).unwrap();
    std::fs::set_permissions(
        root_owned.0.join("certs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["run", "--rm", "-v"])
        .arg(format!("{}:/certs", root_owned.0.join("certs").display()))
        .args([&image, "certs", "--out", "/certs", "--cluster", "prod"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if uid == 0 {
        assert!(!out.status.success(), "65532 wrote into a root-owned dir");
        assert!(err.contains("ermission denied"), "{err}");
    }
}

/// A stand-in for the Rust image, imported as `tag` (labelled [`stub_label`]): a shell and the tools the Dockerfile's
/// build stage and docker/rootfs.sh use, taken from this machine, and a `cargo` that puts
/// `binary` where `cargo build --release` would (no compiler: the Dockerfile's plumbing is
/// under test, not the compile).
fn stub_rust_image(tag: &str, binary: &Path) {
    let root = Scratch::new("stub-rust");
    let r = &root.0;
    for d in ["usr/bin", "usr/local/bin", "stub", "tmp"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    let tools = [
        "sh", "bash", "cp", "mkdir", "dirname", "chmod", "grep", "sed", "cat", "rm", "ldd",
    ];
    let mut libs = vec![binary.to_path_buf()];
    for tool in tools {
        let path = Path::new("/usr/bin").join(tool);
        std::fs::copy(
            std::fs::canonicalize(&path).unwrap(),
            r.join("usr/bin").join(tool),
        )
        .unwrap();
        libs.push(path);
    }
    for bin in libs {
        let out = Command::new("ldd").arg(&bin).output().unwrap();
        for lib in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dest = r.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
    std::fs::copy(binary, r.join("stub/interlock")).unwrap();
    let cargo = r.join("usr/local/bin/cargo");
    std::fs::write(
        &cargo,
        "#!/bin/sh\n# stub: `cargo build --release ...` of the interlock binary\n\
         mkdir -p target/release && cp /stub/interlock target/release/interlock\n",
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut tar = Command::new("tar")
        .args(["-C", r.to_str().unwrap(), "-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let import = docker_command()
        .args([
            "import",
            "--change",
            &format!("LABEL {}", stub_label(tag)),
            "-",
            tag,
        ])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
fn the_source_dockerfile_builds_the_same_image_with_either_builder() {
    let prebuilt = tag("interlock", "image-prebuilt");
    let stub = tag("stub-rust", "image");
    let sources = ["0", "1"].map(|b| tag("interlock", &format!("image-source-{b}")));
    let _images = Images {
        tags: [&prebuilt, &stub]
            .into_iter()
            .chain(&sources)
            .cloned()
            .collect(),
        label: Some(stub_label(&stub)),
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_interlock"));
    build_image(&prebuilt, binary);
    let expected = image_layout(&prebuilt);
    stub_rust_image(&stub, binary);
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut built = 0;
    for (buildkit, tag) in ["0", "1"].into_iter().zip(&sources) {
        let mut errors = Vec::new();
        for cli in ["docker", "/usr/bin/docker"] {
            let out = Command::new(cli)
                .env("DOCKER_BUILDKIT", buildkit)
                .args(["build", "-q", "--build-arg"])
                .arg(format!("RUST_IMAGE={stub}"))
                .args(["-t", tag, repo])
                .output()
                .unwrap();
            if out.status.success() {
                errors.clear();
                break;
            }
            errors.push(format!("{cli}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        if buildkit == "0" {
            assert!(errors.is_empty(), "classic builder: {errors:?}");
        } else if !errors.is_empty() {
            eprintln!("no BuildKit here: {errors:?}");
            continue;
        }
        assert_eq!(
            image_layout(tag),
            expected,
            "the Dockerfile (DOCKER_BUILDKIT={buildkit}) and docker/prebuilt.Dockerfile"
        );
        docker_quiet(&["rmi", tag]);
        built += 1;
    }
    eprintln!("the source Dockerfile built with {built} builder(s)");
    docker(&["rmi", &stub]);
}
