//! Parsing of the `com.docker.lb.*` labels into [`ServiceLabels`], with Interlock's
//! semantics (see docs/labels.md). Parsing is pure and per service: an error names the
//! label, the value and what was expected, and never affects another service.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Prefix shared by every label interlock reads.
pub const PREFIX: &str = "com.docker.lb.";

/// Declares each label's constant and [`KNOWN`], the list of them all, from one list.
macro_rules! labels {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        $($(#[$doc])* pub const $name: &str = $value;)*
        /// Every label interlock reads (anything else under [`PREFIX`] is warned about).
        pub(crate) const KNOWN: &[&str] = &[$($name),*];
    };
}

labels! {
    HOSTS = "com.docker.lb.hosts";
    PORT = "com.docker.lb.port";
    NETWORK = "com.docker.lb.network";
    CONTEXT_ROOT = "com.docker.lb.context_root";
    CONTEXT_ROOT_REWRITE = "com.docker.lb.context_root_rewrite";
    SSL_CERT = "com.docker.lb.ssl_cert";
    SSL_KEY = "com.docker.lb.ssl_key";
    SSL_PASSTHROUGH = "com.docker.lb.ssl_passthrough";
    WEBSOCKET_ENDPOINTS = "com.docker.lb.websocket_endpoints";
    STICKY_SESSION_COOKIE = "com.docker.lb.sticky_session_cookie";
    IP_HASH = "com.docker.lb.ip_hash";
    REDIRECTS = "com.docker.lb.redirects";
    SERVICE_CLUSTER = "com.docker.lb.service_cluster";
    BACKEND_MODE = "com.docker.lb.backend_mode";
    DEFAULT_BACKEND = "com.docker.lb.default_backend";
    MAX_FAILS = "com.docker.lb.max_fails";
    FAIL_TIMEOUT = "com.docker.lb.fail_timeout";
    /// interlock extension: `round_robin` (default) or `least_conn`.
    BALANCE = "com.docker.lb.balance";
    /// interlock extension: relative weight of each of the service's endpoints (1-100).
    WEIGHT = "com.docker.lb.weight";
    /// interlock extension: status of `redirects` (301, 302, 303, 307, 308; default 302).
    REDIRECT_CODE = "com.docker.lb.redirect_code";
    /// interlock extension: `http1` (default) or `h2c` (HTTP/2 cleartext, e.g. gRPC) upstream.
    BACKEND_PROTOCOL = "com.docker.lb.backend_protocol";
    /// interlock extension: active health check path (e.g. `/healthz`).
    HEALTH_PATH = "com.docker.lb.health_path";
    /// interlock extension: active health check interval (default 5s).
    HEALTH_INTERVAL = "com.docker.lb.health_interval";
    /// interlock extension: `true` asks the ACME CA for a certificate covering `hosts`.
    SSL_ACME = "com.docker.lb.ssl_acme";
    /// interlock extension: `on` (default) or `off`: whether a failed attempt is retried.
    RETRIES = "com.docker.lb.retries";
}

/// Labels Interlock documented but never honoured; reported as warnings.
pub(crate) const UNSUPPORTED: &[&str] = &[
    "com.docker.lb.ssl_only",
    "com.docker.lb.ssl_backend",
    "com.docker.lb.ssl_backend_tls_verify",
];

/// A label whose value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("label {label}={value:?}: expected {expected}")]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub expected: String,
}

impl LabelError {
    fn new(label: &str, value: &str, expected: impl Into<String>) -> Self {
        LabelError {
            label: label.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// A host name a service answers for: exact (`app.example.com`) or wildcard
/// (`*.example.com`, any depth of subdomain). Always lower case, without port or final dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*.`, e.g. `example.com`.
    Wildcard(String),
}

impl From<HostPattern> for String {
    fn from(h: HostPattern) -> String {
        h.to_string()
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// How endpoints of a service are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendMode {
    /// One upstream per running task (Interlock's default).
    #[default]
    Task,
    /// One upstream: the service's virtual IP (IPVS balances).
    Vip,
}

/// How a route chooses among its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    LeastConn,
}

/// One `redirects` pair: requests for `source_host` over `source_scheme` get a 302 to
/// `target` followed by the original request URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub source_scheme: String,
    pub source_host: String,
    /// Scheme and authority (and optional path prefix), without a trailing `/`.
    pub target: String,
    /// 302 unless `com.docker.lb.redirect_code` says otherwise.
    pub status: u16,
}

/// The typed form of one service's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceLabels {
    pub hosts: Vec<HostPattern>,
    pub port: Option<u16>,
    pub network: Option<String>,
    /// Normalised: starts with `/`, no trailing `/` (except `/` itself).
    pub context_root: Option<String>,
    pub context_root_rewrite: bool,
    pub ssl_cert: Option<String>,
    pub ssl_key: Option<String>,
    pub ssl_passthrough: bool,
    /// A certificate for `hosts` from the ACME CA (`com.docker.lb.ssl_acme`).
    pub ssl_acme: bool,
    pub websocket_endpoints: Vec<String>,
    pub sticky_session_cookie: Option<String>,
    pub ip_hash: bool,
    pub redirects: Vec<Redirect>,
    /// Empty for the default (cluster-less) cluster.
    pub service_cluster: String,
    pub backend_mode: BackendMode,
    pub default_backend: bool,
    pub max_fails: Option<u32>,
    #[serde(serialize_with = "serialize_opt_secs")]
    pub fail_timeout: Option<Duration>,
    pub balance: BalancePolicy,
    /// Relative weight of each endpoint of this service (canary beyond replica counts).
    pub weight: u32,
    pub redirect_code: u16,
    pub backend_protocol: BackendProtocol,
    /// Active health check: path probed with GET on every endpoint; 2xx/3xx is healthy.
    pub health_path: Option<String>,
    #[serde(serialize_with = "serialize_opt_secs")]
    pub health_interval: Option<Duration>,
    /// Whether the service's routes retry a failed attempt (`com.docker.lb.retries`).
    pub retries: Retries,
}

/// Whether a route retries a failed attempt (see docs/labels.md, "Retries").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retries {
    /// A refused connection goes to another endpoint, an idempotent request whose reused
    /// connection failed is sent once more, within the route's budget.
    #[default]
    On,
    /// Every request is one attempt on one connection.
    Off,
}

/// The protocol spoken to a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (gRPC servers).
    H2c,
}

fn serialize_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl ServiceLabels {
    /// True when the service asks to be routed at all (hosts or default backend).
    pub fn is_published(&self) -> bool {
        !self.hosts.is_empty() || self.default_backend
    }
}

/// Result of parsing: the labels, or every error found (all are reported at once), plus
/// warnings that do not stop the service from being routed.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub labels: ServiceLabels,
    pub errors: Vec<LabelError>,
    pub warnings: Vec<String>,
}

/// Parses every `com.docker.lb.*` label of one service.
pub fn parse(raw: &BTreeMap<String, String>) -> Parsed {
    let mut out = Parsed::default();
    let mut l = ServiceLabels {
        weight: 1,
        redirect_code: 302,
        ..ServiceLabels::default()
    };
    let from = (
        std::ops::Bound::Included(PREFIX),
        std::ops::Bound::Unbounded,
    );
    for (key, value) in raw.range::<str, _>(from) {
        if !key.starts_with(PREFIX) {
            break;
        }
        let v = value.trim();
        let res: Result<(), LabelError> = match key.as_str() {
            HOSTS => {
                let hosts = parse_list(v).map(|h| parse_host(HOSTS, h));
                if let Some(hosts) = every(hosts, &mut out.errors) {
                    l.hosts = dedup(hosts);
                }
                Ok(())
            }
            PORT => parse_port(v).map(|p| l.port = Some(p)),
            NETWORK => non_empty(NETWORK, v, "a network name").map(|n| l.network = Some(n)),
            CONTEXT_ROOT => parse_context_root(v).map(|c| l.context_root = Some(c)),
            CONTEXT_ROOT_REWRITE => parse_bool(key, v).map(|b| l.context_root_rewrite = b),
            SSL_CERT => {
                non_empty(SSL_CERT, v, "a secret or file name").map(|n| l.ssl_cert = Some(n))
            }
            SSL_KEY => non_empty(SSL_KEY, v, "a secret or file name").map(|n| l.ssl_key = Some(n)),
            SSL_PASSTHROUGH => parse_bool(key, v).map(|b| l.ssl_passthrough = b),
            SSL_ACME => parse_bool(key, v).map(|b| l.ssl_acme = b),
            WEBSOCKET_ENDPOINTS => {
                let paths = parse_list(v).map(|p| parse_path(WEBSOCKET_ENDPOINTS, p));
                if let Some(paths) = every(paths, &mut out.errors) {
                    l.websocket_endpoints = paths;
                }
                Ok(())
            }
            STICKY_SESSION_COOKIE => parse_token(STICKY_SESSION_COOKIE, v, "a cookie name")
                .map(|c| l.sticky_session_cookie = Some(c)),
            IP_HASH => parse_bool(key, v).map(|b| l.ip_hash = b),
            REDIRECTS => {
                let pairs = v.split(';').map(str::trim).filter(|s| !s.is_empty());
                if let Some(redirects) = every(pairs.map(parse_redirect), &mut out.errors) {
                    l.redirects = redirects;
                }
                Ok(())
            }
            SERVICE_CLUSTER => parse_cluster(v).map(|c| l.service_cluster = c),
            BACKEND_MODE => parse_backend_mode(v).map(|m| l.backend_mode = m),
            DEFAULT_BACKEND => parse_bool(key, v).map(|b| l.default_backend = b),
            MAX_FAILS => v
                .parse::<u32>()
                .map(|n| l.max_fails = Some(n))
                .map_err(|_| LabelError::new(key, v, "a non-negative integer")),
            FAIL_TIMEOUT => parse_duration(v)
                .map(|d| l.fail_timeout = Some(d))
                .ok_or_else(|| {
                    LabelError::new(key, v, "a duration such as `10s`, `500ms` or `1m`")
                }),
            BALANCE => parse_balance(v).map(|b| l.balance = b),
            WEIGHT => match v.parse::<u32>() {
                Ok(w) if (1..=100).contains(&w) => {
                    l.weight = w;
                    Ok(())
                }
                _ => Err(LabelError::new(key, v, "a weight from 1 to 100")),
            },
            REDIRECT_CODE => match v.parse::<u16>() {
                Ok(c @ (301 | 302 | 303 | 307 | 308)) => {
                    l.redirect_code = c;
                    Ok(())
                }
                _ => Err(LabelError::new(key, v, "one of 301, 302, 303, 307, 308")),
            },
            BACKEND_PROTOCOL => parse_protocol(v).map(|p| l.backend_protocol = p),
            RETRIES => parse_retries(v).map(|r| l.retries = r),
            HEALTH_PATH => parse_path(HEALTH_PATH, v).map(|p| l.health_path = Some(p)),
            HEALTH_INTERVAL => parse_duration(v)
                .filter(|d| !d.is_zero())
                .map(|d| l.health_interval = Some(d))
                .ok_or_else(|| LabelError::new(key, v, "a duration such as `5s` or `500ms`")),
            other if UNSUPPORTED.contains(&other) => {
                out.warnings.push(format!(
                    "label {other} is ignored: Interlock never supported it (use com.docker.lb.redirects)"
                ));
                Ok(())
            }
            other => {
                debug_assert!(!KNOWN.contains(&other));
                out.warnings
                    .push(format!("unknown label {other} is ignored"));
                Ok(())
            }
        };
        if let Err(e) = res {
            out.errors.push(e);
        }
    }
    for r in &mut l.redirects {
        r.status = l.redirect_code;
    }
    if l.ssl_acme && l.ssl_cert.is_some() {
        // The service keeps its own certificate.
        out.warnings.push(format!(
            "label {SSL_ACME} is ignored: the service has its own certificate ({SSL_CERT}/{SSL_KEY})"
        ));
        l.ssl_acme = false;
    }
    cross_check(&l, &mut out.errors);
    out.labels = l;
    out
}

/// `ssl_acme=true`: names the CA can validate over HTTP-01 or TLS-ALPN-01 (exact names; a
/// wildcard needs DNS-01), and no certificate of the service's own or passthrough.
fn acme_check(l: &ServiceLabels, errors: &mut Vec<LabelError>) {
    let why = if let Some(HostPattern::Wildcard(_)) = l
        .hosts
        .iter()
        .find(|h| matches!(h, HostPattern::Wildcard(_)))
    {
        Some("exact host names in com.docker.lb.hosts: a wildcard certificate needs the DNS-01 challenge, which interlock does not do; list the names, or give ssl_cert/ssl_key")
    } else if l.hosts.is_empty() {
        Some("com.docker.lb.hosts to name the hosts the certificate covers")
    } else if l.ssl_passthrough {
        Some("no ssl_passthrough: a passthrough service terminates TLS itself")
    } else {
        None
    };
    if let Some(why) = why {
        errors.push(LabelError::new(SSL_ACME, "true", why));
    }
}

/// Checks between labels, once each label is valid on its own.
fn cross_check(l: &ServiceLabels, errors: &mut Vec<LabelError>) {
    if l.ssl_key.is_some() != l.ssl_cert.is_some() {
        let (label, value) = match &l.ssl_cert {
            Some(c) => (SSL_CERT, c.as_str()),
            None => (SSL_KEY, l.ssl_key.as_deref().unwrap_or_default()),
        };
        errors.push(LabelError::new(
            label,
            value,
            "ssl_cert and ssl_key to be set together",
        ));
    }
    if l.ssl_acme {
        acme_check(l, errors);
    }
    for r in &l.redirects {
        let listed = l.hosts.iter().any(|h| host_matches(h, &r.source_host));
        if !listed {
            errors.push(LabelError::new(
                REDIRECTS,
                &r.source_host,
                format!("the redirect source host to be listed in {HOSTS}"),
            ));
        }
    }
}

/// True when `host` (a normalised name) is `pattern` or, for a wildcard, lies below it.
pub fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => h == host,
        HostPattern::Wildcard(suffix) => host
            .strip_suffix(suffix.as_str())
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
    }
}

fn dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn parse_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The entries of a list-valued label when all are valid; otherwise `None`, with an error
/// for every bad entry (not just the first) added to `errors`.
fn every<T>(
    entries: impl Iterator<Item = Result<T, LabelError>>,
    errors: &mut Vec<LabelError>,
) -> Option<Vec<T>> {
    let before = errors.len();
    let mut good = Vec::new();
    for entry in entries {
        match entry {
            Ok(t) => good.push(t),
            Err(e) => errors.push(e),
        }
    }
    (errors.len() == before).then_some(good)
}

fn non_empty(label: &str, v: &str, expected: &str) -> Result<String, LabelError> {
    if v.is_empty() {
        Err(LabelError::new(label, v, expected))
    } else {
        Ok(v.to_string())
    }
}

/// `true`/`false` in any case, also `1`/`0` and `yes`/`no`. An empty value counts as true:
/// Interlock v1 treated a present boolean label as set.
fn parse_bool(label: &str, v: &str) -> Result<bool, LabelError> {
    match v.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(LabelError::new(label, v, "`true` or `false`")),
    }
}

fn parse_retries(v: &str) -> Result<Retries, LabelError> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" => Ok(Retries::On),
        "off" | "false" => Ok(Retries::Off),
        _ => Err(LabelError::new(
            RETRIES,
            v,
            "`on` or `off` (also `true` or `false`)",
        )),
    }
}

fn parse_backend_mode(v: &str) -> Result<BackendMode, LabelError> {
    match v.to_ascii_lowercase().as_str() {
        "task" | "default" | "" => Ok(BackendMode::Task),
        "vip" => Ok(BackendMode::Vip),
        _ => Err(LabelError::new(BACKEND_MODE, v, "`task` or `vip`")),
    }
}

fn parse_protocol(v: &str) -> Result<BackendProtocol, LabelError> {
    match v.to_ascii_lowercase().as_str() {
        "http1" | "http" | "" => Ok(BackendProtocol::Http1),
        "h2c" | "grpc" => Ok(BackendProtocol::H2c),
        _ => Err(LabelError::new(BACKEND_PROTOCOL, v, "`http1` or `h2c`")),
    }
}

fn parse_balance(v: &str) -> Result<BalancePolicy, LabelError> {
    match v.to_ascii_lowercase().as_str() {
        "round_robin" | "" => Ok(BalancePolicy::RoundRobin),
        "least_conn" => Ok(BalancePolicy::LeastConn),
        _ => Err(LabelError::new(BALANCE, v, "`round_robin` or `least_conn`")),
    }
}

fn parse_port(v: &str) -> Result<u16, LabelError> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(LabelError::new(PORT, v, "a port number from 1 to 65535")),
    }
}

/// Validates a DNS name (RFC 1123 labels), lower-cases it and strips a final dot.
pub fn parse_host(label: &str, v: &str) -> Result<HostPattern, LabelError> {
    let expected = "host names such as `app.example.com` or `*.example.com`, separated by commas";
    let lower = v.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let (wildcard, name) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let valid_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(LabelError::new(label, v, expected));
    }
    Ok(if wildcard {
        HostPattern::Wildcard(name.to_string())
    } else {
        HostPattern::Exact(name.to_string())
    })
}

fn parse_path(label: &str, v: &str) -> Result<String, LabelError> {
    let ok = v.starts_with('/')
        && !v.contains("//")
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if !ok {
        return Err(LabelError::new(label, v, "an absolute path such as `/app`"));
    }
    Ok(v.to_string())
}

fn parse_context_root(v: &str) -> Result<String, LabelError> {
    let p = parse_path(CONTEXT_ROOT, v)?;
    Ok(match p.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    })
}

fn parse_token(label: &str, v: &str, what: &str) -> Result<String, LabelError> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(v.to_string())
    } else {
        Err(LabelError::new(label, v, what))
    }
}

fn parse_cluster(v: &str) -> Result<String, LabelError> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(v.to_string())
    } else {
        Err(LabelError::new(
            SERVICE_CLUSTER,
            v,
            "a cluster name of letters, digits, `-`, `_` and `.`",
        ))
    }
}

/// One pair of `http://old.example.com,https://new.example.com;...` (the label's pairs are
/// separated by `;`, a trailing `;` is allowed).
fn parse_redirect(pair: &str) -> Result<Redirect, LabelError> {
    let bad = || {
        LabelError::new(REDIRECTS, pair, "`<source URL>,<target URL>` pairs separated by `;`, e.g. `http://old.example.com,https://new.example.com`")
    };
    let (src, dst) = pair.split_once(',').ok_or_else(bad)?;
    let (src_scheme, src_host) = split_url(src.trim()).ok_or_else(bad)?;
    let dst = dst.trim();
    split_url(dst).ok_or_else(bad)?;
    if dst.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Redirect {
        source_scheme: src_scheme,
        source_host: src_host,
        target: dst.trim_end_matches('/').to_string(),
        status: 302,
    })
}

/// Splits `scheme://host[:port][/...]` into a lower-case scheme and host (no port).
fn split_url(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    match parse_host(REDIRECTS, host).ok()? {
        HostPattern::Exact(h) => Some((scheme, h)),
        HostPattern::Wildcard(_) => None,
    }
}

/// nginx-style durations: `30s`, `500ms`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_hosts_trimmed_lowercased_and_wildcards() {
        let p = parse(&labels(&[(
            HOSTS,
            " App.Example.com , *.Example.org., app.example.com",
        )]));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            p.labels.hosts,
            vec![
                HostPattern::Exact("app.example.com".into()),
                HostPattern::Wildcard("example.org".into())
            ]
        );
    }

    #[test]
    fn rejects_bad_host_naming_label_and_expectation() {
        let p = parse(&labels(&[(HOSTS, "ok.example.com,bad host")]));
        assert_eq!(p.errors.len(), 1);
        let msg = p.errors[0].to_string();
        assert!(
            msg.contains("com.docker.lb.hosts") && msg.contains("bad host"),
            "{msg}"
        );
        assert!(msg.contains("expected host names"), "{msg}");
    }

    /// Every bad entry of a list-valued label is reported, each with its own value and what
    /// was expected, not just the first.
    #[test]
    fn every_bad_entry_of_a_list_label_is_reported() {
        let cases: [(&str, &str, &[&str], &str); 3] = [
            (
                HOSTS,
                "ok.example.com, bad host ,-dash.example.com,*.fine.org",
                &["bad host", "-dash.example.com"],
                "host names such as",
            ),
            (
                WEBSOCKET_ENDPOINTS,
                "/ws,socket,/ok,/a//b",
                &["socket", "/a//b"],
                "an absolute path",
            ),
            (
                REDIRECTS,
                "nonsense;http://a.local,http://b.local;ftp://x.local,http://b.local",
                &["nonsense", "ftp://x.local,http://b.local"],
                "pairs separated by `;`",
            ),
        ];
        let mut wrong = Vec::new();
        for (label, value, bad, expected) in cases {
            let p = parse(&labels(&[(HOSTS, "a.local"), (label, value)]));
            let errors: Vec<_> = p.errors.iter().filter(|e| e.label == label).collect();
            let values: Vec<&str> = errors.iter().map(|e| e.value.as_str()).collect();
            if values != bad {
                wrong.push(format!(
                    "{label}={value:?}: reported {values:?}, want {bad:?}"
                ));
            }
            for e in errors {
                assert!(e.expected.contains(expected), "{e}");
                assert!(e.to_string().contains(&format!("{:?}", e.value)), "{e}");
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn parses_port_and_rejects_out_of_range() {
        assert_eq!(parse(&labels(&[(PORT, "8080")])).labels.port, Some(8080));
        for bad in ["0", "65536", "80x", ""] {
            let p = parse(&labels(&[(PORT, bad)]));
            assert_eq!(p.errors.len(), 1, "{bad}");
            assert!(p.errors[0].expected.contains("1 to 65535"));
        }
    }

    #[test]
    fn booleans_accept_common_spellings_and_empty_means_true() {
        for (v, want) in [
            ("true", true),
            ("TRUE", true),
            ("", true),
            ("1", true),
            ("false", false),
            ("no", false),
        ] {
            let p = parse(&labels(&[(IP_HASH, v)]));
            assert_eq!(p.labels.ip_hash, want, "{v}");
        }
        assert_eq!(parse(&labels(&[(IP_HASH, "maybe")])).errors.len(), 1);
    }

    #[test]
    fn context_root_is_normalised() {
        let p = parse(&labels(&[
            (CONTEXT_ROOT, "/app/"),
            (CONTEXT_ROOT_REWRITE, "true"),
        ]));
        assert_eq!(p.labels.context_root.as_deref(), Some("/app"));
        assert!(p.labels.context_root_rewrite);
        assert_eq!(
            parse(&labels(&[(CONTEXT_ROOT, "/")]))
                .labels
                .context_root
                .as_deref(),
            Some("/")
        );
        assert_eq!(parse(&labels(&[(CONTEXT_ROOT, "app")])).errors.len(), 1);
    }

    #[test]
    fn redirects_parse_with_trailing_semicolon_and_need_listed_source() {
        let p = parse(&labels(&[
            (HOSTS, "old.local,new.local"),
            (
                REDIRECTS,
                "http://old.local,http://new.local/;https://Old.local:443,https://new.local;",
            ),
        ]));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.labels.redirects.len(), 2);
        assert_eq!(p.labels.redirects[0].source_host, "old.local");
        assert_eq!(p.labels.redirects[0].target, "http://new.local");
        assert_eq!(p.labels.redirects[1].source_scheme, "https");

        let p = parse(&labels(&[
            (HOSTS, "a.local"),
            (REDIRECTS, "http://b.local,http://a.local"),
        ]));
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0]
            .expected
            .contains("listed in com.docker.lb.hosts"));
        assert_eq!(parse(&labels(&[(REDIRECTS, "nonsense")])).errors.len(), 1);
    }

    #[test]
    fn unknown_and_unsupported_labels_warn() {
        let p = parse(&labels(&[
            ("com.docker.lb.host", "x"),
            ("com.docker.lb.ssl_only", "true"),
            ("other", "y"),
        ]));
        assert!(p.errors.is_empty());
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    }

    #[test]
    fn durations_modes_and_policies() {
        let p = parse(&labels(&[
            (FAIL_TIMEOUT, "30s"),
            (MAX_FAILS, "3"),
            (BACKEND_MODE, "vip"),
            (BALANCE, "least_conn"),
            (SERVICE_CLUSTER, "us-east"),
            (STICKY_SESSION_COOKIE, "session"),
        ]));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.labels.fail_timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.labels.max_fails, Some(3));
        assert_eq!(p.labels.backend_mode, BackendMode::Vip);
        assert_eq!(p.labels.balance, BalancePolicy::LeastConn);
        assert_eq!(p.labels.service_cluster, "us-east");
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2x"), None);
    }

    #[test]
    fn retries_are_on_unless_switched_off() {
        assert_eq!(
            parse(&labels(&[(HOSTS, "a.test")])).labels.retries,
            Retries::On
        );
        for (v, want) in [
            ("on", Retries::On),
            ("TRUE", Retries::On),
            (" off ", Retries::Off),
            ("False", Retries::Off),
        ] {
            let p = parse(&labels(&[(RETRIES, v)]));
            assert!(p.errors.is_empty(), "{v}: {:?}", p.errors);
            assert_eq!(p.labels.retries, want, "{v}");
        }
        for bad in ["", "no", "maybe", "0"] {
            let p = parse(&labels(&[(RETRIES, bad)]));
            assert_eq!(p.errors.len(), 1, "{bad:?}");
            let msg = p.errors[0].to_string();
            assert!(
                msg.contains("com.docker.lb.retries") && msg.contains("`on` or `off`"),
                "{msg}"
            );
        }
    }

    #[test]
    fn cert_and_key_go_together() {
        let p = parse(&labels(&[(SSL_CERT, "app.cert")]));
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].label, SSL_CERT);
    }

    #[test]
    fn ssl_acme_wants_exact_hosts_and_yields_to_a_certificate_of_the_service() {
        let ok = parse(&labels(&[(HOSTS, "a.test,b.test"), (SSL_ACME, "true")]));
        assert!(
            ok.errors.is_empty() && ok.labels.ssl_acme,
            "{:?}",
            ok.errors
        );
        let wildcard = parse(&labels(&[(HOSTS, "*.a.test"), (SSL_ACME, "true")]));
        assert_eq!(wildcard.errors[0].label, SSL_ACME);
        assert!(wildcard.errors[0].expected.contains("DNS-01"));
        let no_hosts = parse(&labels(&[(DEFAULT_BACKEND, "true"), (SSL_ACME, "true")]));
        assert_eq!(no_hosts.errors[0].label, SSL_ACME);
        let passthrough = parse(&labels(&[
            (HOSTS, "a.test"),
            (SSL_ACME, "true"),
            (SSL_PASSTHROUGH, "true"),
        ]));
        assert_eq!(passthrough.errors[0].label, SSL_ACME);
        let own = parse(&labels(&[
            (HOSTS, "a.test"),
            (SSL_ACME, "true"),
            (SSL_CERT, "a.crt"),
            (SSL_KEY, "a.key"),
        ]));
        assert!(own.errors.is_empty(), "{:?}", own.errors);
        assert!(
            !own.labels.ssl_acme,
            "the service keeps its own certificate"
        );
        assert!(
            own.warnings[0].contains("ssl_acme is ignored"),
            "{:?}",
            own.warnings
        );
    }
}
