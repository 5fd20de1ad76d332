//! `interlock certs`: issues the control channel's private CA, the controller's server
//! certificate and one client certificate per proxy cluster (see [`super::control`]).
//!
//! An existing `ca.pem`/`ca.key` in the output directory is reused, so certificates for a
//! new cluster can be added later without re-issuing the others.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

use super::control::identity;
use crate::snapshot::valid_cluster_name;

/// The CA's subject; the same on every run, so a reloaded CA key signs like the original.
const CA_NAME: &str = "interlock control-plane CA";

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub out: PathBuf,
    /// DNS names (or IP addresses) proxies use to reach the controller.
    pub controller_names: Vec<String>,
    /// One client certificate per cluster (`""`: the default cluster).
    pub clusters: Vec<String>,
    /// Validity of the leaf certificates.
    pub days: u32,
}

#[derive(Debug, Error)]
pub enum IssueError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("issuing {what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("{0:?} is not a valid cluster name (letters, digits, `-`, `_` and `.`)")]
    BadCluster(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IssueError + '_ {
    move |source| IssueError::Io {
        path: path.into(),
        source,
    }
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> IssueError {
    let what = what.into();
    move |source| IssueError::Rcgen { what, source }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let at = |secs: u64| {
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    params.not_before = at(now.saturating_sub(3600));
    params.not_after = at(now + u64::from(days) * 86_400);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The CA: loaded from `out` when present, else created there (10 years).
fn ca(out: &Path) -> Result<Issuer<'static, KeyPair>, IssueError> {
    let (cert_path, key_path) = (out.join("ca.pem"), out.join("ca.key"));
    let mut params = ca_params();
    if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&pem).map_err(rc("the CA key"))?;
        return Ok(Issuer::new(params, key));
    }
    validity(&mut params, 3650);
    let key = KeyPair::generate().map_err(rc("the CA key"))?;
    let cert = params.self_signed(&key).map_err(rc("the CA certificate"))?;
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok(Issuer::new(params, key))
}

/// Writes `contents` to `path`; a secret (a private key) is created readable by its owner
/// only, so it is never readable by others, not even for a moment.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), IssueError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(io(path))?;
    if secret {
        // A key file that already existed keeps its mode on open: tighten it first.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path))?;
    }
    file.write_all(contents.as_bytes()).map_err(io(path))?;
    Ok(())
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[String],
    usage: ExtendedKeyUsagePurpose,
    days: u32,
    out: &Path,
    stem: &str,
) -> Result<PathBuf, IssueError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(rc(stem))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(rc(stem))?;
    let cert = params.signed_by(&key, issuer).map_err(rc(stem))?;
    let cert_path = out.join(format!("{stem}.pem"));
    write(&cert_path, &cert.pem(), false)?;
    write(&out.join(format!("{stem}.key")), &key.serialize_pem(), true)?;
    Ok(cert_path)
}

/// The file stem of a cluster's proxy certificate.
pub fn proxy_stem(cluster: &str) -> String {
    if cluster.is_empty() {
        "proxy".into()
    } else {
        format!("proxy-{cluster}")
    }
}

/// Issues what `req` asks for; returns the certificate files written.
pub fn issue(req: &IssueRequest) -> Result<Vec<PathBuf>, IssueError> {
    for c in &req.clusters {
        if !valid_cluster_name(c) {
            return Err(IssueError::BadCluster(c.clone()));
        }
    }
    std::fs::create_dir_all(&req.out).map_err(io(&req.out))?;
    let issuer = ca(&req.out)?;
    let mut written = vec![req.out.join("ca.pem")];
    if !req.controller_names.is_empty() {
        written.push(leaf(
            &issuer,
            &req.controller_names,
            ExtendedKeyUsagePurpose::ServerAuth,
            req.days,
            &req.out,
            "controller",
        )?);
    }
    for cluster in &req.clusters {
        written.push(leaf(
            &issuer,
            &[identity(cluster)],
            ExtendedKeyUsagePurpose::ClientAuth,
            req.days,
            &req.out,
            &proxy_stem(cluster),
        )?);
    }
    Ok(written)
}
