//! Normalising the request's host (Host header or HTTP/2 authority) for lookup.

use std::borrow::Cow;

/// Strips the port and a final dot and lower-cases the name. Returns `None` for a host that
/// cannot be a valid name (empty, too long, or with bytes outside a host name).
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port.
        let end = rest.find(']')?;
        &raw[..end + 2]
    } else {
        match raw.bytes().rposition(|b| b == b':') {
            Some(colon) if raw[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..colon],
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    // One pass: every byte valid, and whether any is upper case.
    let mut upper = false;
    for b in host.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'[' | b']' | b':' => {}
            b'A'..=b'Z' => upper = true,
            _ => return None,
        }
    }
    if upper {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn strips_port_dot_and_case() {
        assert_eq!(
            normalize_host("App.Example.COM:8080").unwrap(),
            "app.example.com"
        );
        assert_eq!(
            normalize_host("app.example.com.").unwrap(),
            "app.example.com"
        );
        assert_eq!(normalize_host("[::1]:80").unwrap(), "[::1]");
        assert_eq!(normalize_host("127.0.0.1").unwrap(), "127.0.0.1");
    }

    #[test]
    fn rejects_garbage() {
        assert!(normalize_host("").is_none());
        assert!(normalize_host("a b").is_none());
        assert!(normalize_host("evil/..").is_none());
        assert!(normalize_host(&"a".repeat(300)).is_none());
    }
}
