//! What the ACME side reads from the network: a CA's `Retry-After` value (seconds or an
//! HTTP date; the ACME client's backoff), and the TLS-ALPN-01 digest a proxy receives from
//! the controller, from which it makes its challenge certificate. The first byte picks
//! which.
//!
//! Asserts: never a panic; a Retry-After of plain seconds is never more than a week away
//! (the client caps what a CA may ask).
#![no_main]

use std::time::{Duration, SystemTime};

use interlock::fuzzing::{acme_challenge_certificate, acme_retry_after};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if pick % 2 == 0 {
        let when = acme_retry_after(text);
        if text.trim().bytes().all(|b| b.is_ascii_digit()) {
            if let Some(t) = when {
                let limit = SystemTime::now() + Duration::from_secs(7 * 86_400 + 60);
                assert!(t <= limit, "{text:?} asks for more than a week");
            }
        }
    } else {
        let (host, digest) = text.split_once('\n').unwrap_or(("a.test", text));
        let _ = acme_challenge_certificate(host, digest);
    }
});
