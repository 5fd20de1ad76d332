//! PEM and base64 for the tests that look for certificates and keys inside files (state
//! files, JSON-escaped or not): no dependency, nothing clever.

/// The base64 bodies of the PEM blocks of `label` in `text` (e.g. `CERTIFICATE`, or
/// `PRIVATE KEY` for every key block), decoded.
pub fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    pem_texts(text, label)
        .iter()
        .map(|b| base64_decode(b))
        .collect()
}

/// The base64 body (whitespace removed) of each PEM block whose label ends with `label`,
/// wherever it stands in `text`: JSON-escaped newlines (`\n`) count as whitespace, so
/// blocks inside a JSON state file are found too.
pub fn pem_texts(text: &str, label: &str) -> Vec<String> {
    let text = text.replace("\\n", "\n");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("-----BEGIN ") {
        rest = &rest[i + "-----BEGIN ".len()..];
        let Some(j) = rest.find("-----") else { break };
        let this = &rest[..j];
        rest = &rest[j + 5..];
        let Some(k) = rest.find("-----END ") else {
            break;
        };
        if this.ends_with(label) {
            out.push(rest[..k].chars().filter(|c| !c.is_whitespace()).collect());
        }
        rest = &rest[k..];
    }
    out
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

pub fn base64_encode(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | (*x as u32) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        for _ in c.len()..3 {
            out.push('=');
        }
    }
    out
}

/// Whether `text` holds the DER `der` in base64 (as PEM or unwrapped, JSON-escaped or not):
/// the whole of it, so two certificates sharing their issuer's lines never match.
pub fn holds(text: &str, der: &[u8]) -> bool {
    let flat: String = text
        .replace("\\n", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    flat.contains(&base64_encode(der))
}

/// Every string of 40 characters or more in `v` (keys and such), recursively.
pub fn long_strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) if s.len() >= 40 && !s.starts_with("http") => {
            vec![s.clone()]
        }
        serde_json::Value::Array(a) => a.iter().flat_map(long_strings).collect(),
        serde_json::Value::Object(o) => o.values().flat_map(long_strings).collect(),
        _ => Vec::new(),
    }
}
