//! The image as users get it: the Dockerfile (from source) and docker/prebuilt.Dockerfile
//! share one runtime stage, and `interlock certs` runs from the image exactly as
//! docs/swarm.md shows it, as the caller's user. INTERLOCK_SKIP_DOCKER=1 skips the latter.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::engine::{build_image, skip};
use common::node::Scratch;

const IMAGE: &str = "interlock-test/interlock:image";

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

/// The documented line, run by `sh` in `dir` with the image's tag substituted.
fn documented_certs(dir: &Path, user: &str) -> std::process::Output {
    let line = format!(
        "mkdir -p certs && docker run --rm -v \"$PWD/certs:/certs\" --user \"{user}\" {IMAGE} \
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
fn certs_run_from_the_image_as_the_callers_user() {
    if skip() {
        return;
    }
    build_image(IMAGE, Path::new(env!("CARGO_BIN_EXE_interlock")));

    // Exactly as documented, `--user "$(id -u):$(id -g)"`.
    let s = Scratch::new("image-certs");
    let out = documented_certs(&s.0, "$(id -u):$(id -g)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = std::fs::metadata(&s.0).unwrap().uid();
    check_issued(&s.0.join("certs"), uid);
    // Again with the same directory: the CA is reused (a cluster added later).
    let ca = std::fs::read(s.0.join("certs/ca.pem")).unwrap();
    let out = documented_certs(&s.0, "$(id -u):$(id -g)");
    assert!(out.status.success());
    assert_eq!(std::fs::read(s.0.join("certs/ca.pem")).unwrap(), ca);

    // A user who is not root: the same line writes files that user owns.
    let other = Scratch::new("image-certs-user");
    std::fs::create_dir(other.0.join("certs")).unwrap();
    std::os::unix::fs::chown(other.0.join("certs"), Some(12345), Some(12345)).unwrap();
    let out = documented_certs(&other.0, "12345:12345");
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
        .args([IMAGE, "certs", "--out", "/certs", "--cluster", "prod"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if uid == 0 {
        assert!(!out.status.success(), "65532 wrote into a root-owned dir");
        assert!(err.contains("ermission denied"), "{err}");
    }
}
