//! Sticky sessions: the key a request is pinned by (`sticky_session_cookie`: the value of
//! an application-set cookie; `ip_hash`: the client IP) and rendezvous scores. Requests
//! without the cookie are not pinned (Interlock's behaviour).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use crate::upstream::Upstream;

/// What pins a route's requests to an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Sticky {
    #[default]
    None,
    /// The value of this application cookie.
    Cookie(Box<str>),
    /// The client's IP address (the whole address, not nginx's /24 of IPv4).
    ClientIp,
}

/// The affinity key of a request, if its route is sticky and the request carries one.
/// `cookies`: the values of the request's Cookie fields.
pub fn affinity_key<'c>(
    sticky: &Sticky,
    cookies: impl IntoIterator<Item = &'c [u8]>,
    client: IpAddr,
) -> Option<u64> {
    match sticky {
        Sticky::None => None,
        Sticky::ClientIp => Some(hash(&client)),
        Sticky::Cookie(name) => cookie(cookies, name).map(|v| hash(&v)),
    }
}

/// The value of cookie `name` in the request's Cookie fields.
fn cookie<'c>(cookies: impl IntoIterator<Item = &'c [u8]>, name: &str) -> Option<&'c [u8]> {
    cookies
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// A fixed-key hash: the same on every proxy replica and across restarts.
fn hash<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Rendezvous (highest random weight) score of `key` on an endpoint.
pub(super) fn score(key: u64, upstream: &Upstream) -> u64 {
    hash(&(key, upstream.addr()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_named_cookie_among_others() {
        let h: [&[u8]; 2] = [b"x=0", b"a=1; session=abc ; b=2"];
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let k = affinity_key(&Sticky::Cookie("session".into()), h, ip);
        assert_eq!(k, Some(hash(b"abc".as_slice())));
        assert_eq!(affinity_key(&Sticky::Cookie("other".into()), h, ip), None);
        assert_eq!(affinity_key(&Sticky::None, h, ip), None);
        assert_eq!(affinity_key(&Sticky::ClientIp, h, ip), Some(hash(&ip)));
    }
}
