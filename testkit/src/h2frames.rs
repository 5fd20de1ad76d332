//! Raw HTTP/2 frames for tests that send what a well-behaved client never would (the h2
//! crate's client refuses forbidden fields and resets at will).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One frame: 9-byte header then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal (no Huffman), lengths < 127.
pub fn hpack_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// HEADERS (END_STREAM | END_HEADERS) of `GET /` for app.local plus `extra` fields.
pub fn h2_get(stream: u32, extra: &[(&str, &str)]) -> Vec<u8> {
    // :method GET (static 2), :scheme http (6), :path / (4).
    let mut block = vec![0x82, 0x86, 0x84];
    // :authority, literal without indexing, indexed name (static 1).
    block.push(0x01);
    hpack_str(&mut block, "app.local");
    for (k, v) in extra {
        block.push(0x00); // literal without indexing, new name
        hpack_str(&mut block, k);
        hpack_str(&mut block, v);
    }
    frame(0x1, 0x5, stream, &block)
}

/// Frames read from the proxy: (type, flags, stream, payload), answering its SETTINGS,
/// until `until` holds or the connection ends (5 s at most).
pub async fn read_frames<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    until: impl Fn(&[(u8, u8, u32, Vec<u8>)]) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                if kind == 0x4 && flags & 0x1 == 0 {
                    // The peer may have closed already (after a GOAWAY).
                    let _ = s.write_all(&frame(0x4, 0x1, 0, &[])).await;
                    let _ = s.flush().await;
                }
                frames.push((kind, flags, stream, payload));
                if until(&frames) {
                    return;
                }
            }
            let mut chunk = [0u8; 16384];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(res.is_ok(), "no expected frame within 5 s: {frames:?}");
    frames
}
