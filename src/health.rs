//! `interlock health`: asks a running instance's admin listener for `/healthz` and exits 0
//! when it answers 200 (serving), 1 otherwise: the image's `HEALTHCHECK`, which has no curl.
//!
//! The address is the instance's own `--admin` (`INTERLOCK_ADMIN`, so a HEALTHCHECK in the
//! same container finds it without flags); an unspecified address (`0.0.0.0`, `[::]`) is
//! asked on loopback. What "serving" means per role is `/healthz`'s (see [`crate::admin`]).
//! Docker reserves exit code 2 of a health check, so every failure is 1.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

/// The largest answer read (a `/healthz` answer is one short line).
const MAX_ANSWER: u64 = 64 << 10;

#[derive(Args, Debug, Clone)]
pub struct HealthArgs {
    /// The instance's admin listener (its --admin); 0.0.0.0 and [::] are asked on loopback.
    #[arg(long, env = "INTERLOCK_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Seconds to wait for the whole answer.
    #[arg(long, default_value_t = 2.0)]
    pub timeout: f64,
}

/// Where to ask: `admin` with an unspecified IP replaced by loopback.
pub fn target(admin: &str) -> Result<SocketAddr, String> {
    if admin == "off" || admin.is_empty() {
        return Err(
            "the admin listener is off (--admin off): there is nothing to ask; \
                    disable the health check or give the instance an admin address"
                .into(),
        );
    }
    let mut addr: SocketAddr = admin
        .parse()
        .map_err(|_| format!("--admin {admin:?}: expected ip:port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// Asks `addr` for `/healthz` within `timeout`: the answer's body if it is 200, else why not.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{addr}: no answer within {timeout:?}"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?)
        .map_err(|e| format!("connecting to the admin listener {addr}: {e}"))?;
    stream
        .set_write_timeout(Some(left()?))
        .and_then(|()| {
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        })
        .map_err(|e| format!("{addr}: sending the request: {e}"))?;
    let mut raw = Vec::new();
    let mut limited = (&stream).take(MAX_ANSWER);
    let mut buf = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| format!("{addr}: {e}"))?;
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("{addr}: no answer within {timeout:?}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{addr}: reading the answer: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let body = body.trim().to_string();
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("not serving ({status}): {body}"))
    }
}

/// `interlock health`: prints the answer and exits 0 when serving, 1 otherwise.
pub fn run(args: &HealthArgs) -> ExitCode {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .unwrap_or(Duration::from_secs(2));
    match target(&args.admin).and_then(|addr| probe(addr, timeout)) {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("interlock health: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        assert_eq!(
            target("0.0.0.0:9090").unwrap().to_string(),
            "127.0.0.1:9090"
        );
        assert_eq!(target("[::]:9090").unwrap().to_string(), "[::1]:9090");
        assert_eq!(target("10.0.0.7:99").unwrap().to_string(), "10.0.0.7:99");
        assert!(target("off").unwrap_err().contains("off"));
        assert!(target("localhost:9090").is_err());
    }

    /// A listener that answers one connection with `answer` (or never, if `None`).
    fn admin(answer: Option<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            match answer {
                Some(a) => {
                    let _ = s.write_all(a.as_bytes());
                }
                None => std::thread::sleep(Duration::from_secs(3)),
            }
        });
        addr
    }

    #[test]
    fn only_a_200_is_serving() {
        let ok = admin(Some(
            "HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\nok generation=3\n",
        ));
        assert_eq!(
            probe(ok, Duration::from_secs(2)).unwrap(),
            "ok generation=3"
        );
        let starting = admin(Some("HTTP/1.1 503 Service Unavailable\r\n\r\nstarting\n"));
        let e = probe(starting, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("503") && e.contains("starting"), "{e}");
        let silent = admin(None);
        let t = Instant::now();
        let e = probe(silent, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(closed, Duration::from_secs(1)).is_err());
    }
}
