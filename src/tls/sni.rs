//! A minimal TLS ClientHello reader: just enough to find the SNI host name without
//! terminating TLS (passthrough routing). It only reads, never allocates beyond the name,
//! and never panics on any input (it is fuzzed: fuzz/fuzz_targets/sni.rs).

/// Outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// The ClientHello is not complete yet: read more bytes.
    Incomplete,
    /// A complete ClientHello, with its server name if it sent one.
    Complete(Option<String>),
    /// Not a TLS ClientHello (or malformed beyond repair).
    Invalid,
}

/// Largest ClientHello accepted (post-quantum key shares make them a few KiB).
pub const MAX_HELLO: usize = 16 * 1024;

/// Reads the SNI from the start of a TLS stream. The ClientHello may span several
/// handshake records; they are joined before parsing.
pub fn parse(buf: &[u8]) -> Hello {
    let mut msg: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Hello::Incomplete;
        }
        // Record header: type 22 (handshake), version 3.x, length.
        if rest[0] != 0x16 || rest[1] != 0x03 {
            return Hello::Invalid;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_HELLO + 2048 {
            return Hello::Invalid;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Hello::Incomplete;
        };
        msg.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if msg.len() < 4 {
            continue;
        }
        // Handshake header: type 1 (ClientHello), 24-bit length.
        if msg[0] != 0x01 {
            return Hello::Invalid;
        }
        let body_len =
            (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
        if body_len > MAX_HELLO {
            return Hello::Invalid;
        }
        if msg.len() >= 4 + body_len {
            return match server_name(&msg[4..4 + body_len]) {
                Some(sni) => Hello::Complete(sni),
                None => Hello::Invalid,
            };
        }
        if msg.len() > MAX_HELLO {
            return Hello::Invalid;
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a length prefix of `width` bytes.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(n)
    }
}

/// `Some(name)` / `Some(None)` for a well-formed ClientHello body, `None` if malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = Reader(r.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(Reader(data).vec(2)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec(2)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return None;
                }
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with the given SNI (or none), as a TLS record.
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(n.len() as u16).to_be_bytes());
            entry.extend_from_slice(n);
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        // An unrelated extension before/after, as real clients send many.
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![0x01, 0, 0, 0];
        hs[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn finds_the_server_name() {
        let hello = client_hello(Some("App.Example.com"));
        assert_eq!(
            parse(&hello),
            Hello::Complete(Some("app.example.com".into()))
        );
        assert_eq!(parse(&client_hello(None)), Hello::Complete(None));
    }

    #[test]
    fn asks_for_more_until_complete() {
        let hello = client_hello(Some("a.example"));
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn joins_a_hello_split_across_records() {
        let hello = client_hello(Some("split.example"));
        let payload = &hello[5..];
        let (a, b) = payload.split_at(20);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(parse(&two), Hello::Complete(Some("split.example".into())));
    }

    #[test]
    fn rejects_plain_http_and_garbage_without_panicking() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid);
        let hello = client_hello(Some("x.example"));
        // Every corruption of every byte either parses, asks for more, or is invalid.
        for i in 0..hello.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut h = hello.clone();
                h[i] = v;
                let _ = parse(&h);
            }
        }
    }
}
