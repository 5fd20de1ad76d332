//! The socket options interlock sets that `socket2` has no call for, each a safe function
//! over a borrowed descriptor. This crate holds the project's only `unsafe` code (one
//! `setsockopt` and one `getsockopt` call), so that the main crate can forbid it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Linux's `TCP_DEFER_ACCEPT` on a listening socket: its connections are handed to
/// `accept` only once the client's first bytes arrived, or, for a client that stays
/// silent, once it acknowledged a handshake reply the kernel retransmits after about
/// `seconds` (the kernel turns the seconds into a count of retransmissions). `0` turns the
/// option off. Not Linux: `Unsupported`.
pub fn set_tcp_defer_accept(listener: BorrowedFd<'_>, seconds: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
        // SAFETY: the descriptor is valid for the call (borrowed), and the option's value
        // is a pointer to a c_int with its exact size, as TCP_DEFER_ACCEPT takes.
        let set = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&value).cast(),
                c_int_len(),
            )
        };
        if set == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (listener, seconds);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The listening socket's `TCP_DEFER_ACCEPT`, as the kernel keeps it: `0` when off; when
/// on, the seconds its retransmission count stands for (at least the seconds set).
/// Not Linux: `Unsupported`.
pub fn tcp_defer_accept(listener: BorrowedFd<'_>) -> io::Result<u32> {
    #[cfg(target_os = "linux")]
    {
        let mut value: libc::c_int = 0;
        let mut len = c_int_len();
        // SAFETY: the descriptor is valid for the call (borrowed); the kernel writes at
        // most `len` bytes (a c_int's size) to `value` and the length it wrote to `len`.
        let got = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        if got != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u32::try_from(value).unwrap_or(0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = listener;
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(target_os = "linux")]
fn c_int_len() -> libc::socklen_t {
    // A c_int's size (4) always fits.
    std::mem::size_of::<libc::c_int>() as libc::socklen_t
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    /// The next connection of a non-blocking `listener`, polled every 5 ms; `None` once
    /// `deadline` passed without one.
    fn accept_before(listener: &TcpListener, deadline: Instant) -> Option<TcpStream> {
        loop {
            match listener.accept() {
                Ok((stream, _)) => return Some(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    #[test]
    fn set_and_read_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(tcp_defer_accept(listener.as_fd()).unwrap(), 0);
        set_tcp_defer_accept(listener.as_fd(), 1).unwrap();
        assert!(tcp_defer_accept(listener.as_fd()).unwrap() >= 1);
        set_tcp_defer_accept(listener.as_fd(), 0).unwrap();
        assert_eq!(tcp_defer_accept(listener.as_fd()).unwrap(), 0);
    }

    /// A connection whose client sent nothing yet is not acceptable; its first bytes make
    /// it so, and the accepted socket holds them.
    #[test]
    fn connections_come_with_their_first_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        set_tcp_defer_accept(listener.as_fd(), 1).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let silent = listener.accept();
        assert_eq!(
            silent.err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock),
            "a silent connection was handed over"
        );
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut accepted = accept_before(&listener, Instant::now() + Duration::from_secs(5))
            .expect("never handed over");
        accepted.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let n = accepted
            .read(&mut buf)
            .expect("the request is there at once");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    /// A client that stays silent is handed over all the same, after about a second.
    #[test]
    fn a_silent_client_is_handed_over_after_the_retransmission() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        set_tcp_defer_accept(listener.as_fd(), 1).unwrap();
        let start = Instant::now();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        listener.set_nonblocking(true).unwrap();
        accept_before(&listener, start + Duration::from_secs(10))
            .expect("a silent client was never handed over");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(500),
            "handed over after {waited:?}"
        );
    }
}
