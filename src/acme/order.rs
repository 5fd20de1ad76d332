//! One certificate order (RFC 8555 §7.4): order the names, answer each pending
//! authorization's challenge (HTTP-01 or TLS-ALPN-01) through the proxies, finalize with a
//! CSR on a fresh key, download the chain. The answers are handed to `publish` before the
//! CA is told to validate, and withdrawn by the caller when the order is over.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::tls::{Http01, PemPair};

/// Which challenge interlock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChallengeKind {
    /// `GET /.well-known/acme-challenge/<token>` on every proxy's plain listener (port 80).
    #[value(name = "http-01")]
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on every proxy's TLS listener (port 443).
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
}

/// The answers of one order's pending challenges.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// token -> answer.
    pub http01: Vec<(String, Http01)>,
    /// host -> key authorization digest (hex).
    pub tls_alpn01: Vec<(String, String)>,
}

/// What ended an order.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Refused(String),
}

/// Orders a certificate for `hosts`; `publish` receives the challenges' answers, then
/// `propagation` passes before the CA is asked to validate. Returns the chain and its key.
pub async fn issue(
    account: &Account,
    hosts: &[String],
    kind: ChallengeKind,
    propagation: Duration,
    publish: impl FnOnce(Answers),
) -> Result<PemPair, OrderError> {
    let identifiers: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let ctype = match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    // 1. Every pending authorization's answer, published at once.
    let mut answers = Answers::default();
    let mut pending = 0;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let host = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(OrderError::Refused(format!(
                    "the CA's authorization for {host} is {other:?}"
                )))
            }
        }
        let Some(challenge) = authz.challenge(ctype.clone()) else {
            return Err(OrderError::Refused(format!(
                "the CA offers no {kind:?} challenge for {host}"
            )));
        };
        let key_auth = challenge.key_authorization();
        match kind {
            ChallengeKind::Http01 => answers.http01.push((
                challenge.token.clone(),
                Http01 {
                    host: host.clone(),
                    key_authorization: key_auth.as_str().to_string(),
                },
            )),
            ChallengeKind::TlsAlpn01 => answers
                .tls_alpn01
                .push((host.clone(), hex(key_auth.digest().as_ref()))),
        }
        pending += 1;
    }
    publish(answers);
    if pending > 0 {
        tokio::time::sleep(propagation).await;
        // 2. Ready: the CA validates now.
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authz.challenge(ctype.clone()) {
                challenge.set_ready().await?;
            }
        }
    }
    // 3. Validated?
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&policy).await?;
    if status != OrderStatus::Ready {
        return Err(OrderError::Refused(why_invalid(&mut order).await));
    }
    // 4. Finalize on a fresh key (ECDSA P-256), download the chain.
    let key = rcgen::KeyPair::generate().map_err(|e| OrderError::Refused(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| OrderError::Refused(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| OrderError::Refused(e.to_string()))?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&policy).await?;
    Ok(PemPair {
        cert: chain,
        key: key.serialize_pem(),
    })
}

/// Why an order became invalid: its own problem, or its failed challenges'.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    if let Some(e) = &order.state().error {
        return e.to_string();
    }
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let host = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    reasons.push(format!("{host}: {p}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        "the CA refused the order (no reason given)".into()
    } else {
        reasons.join("; ")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
