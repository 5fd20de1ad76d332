//! Read buffers of upstream connections, recycled per thread.
//!
//! A connection lets go of its read buffer when it goes back to its pool (hundreds of idle
//! connections would each hold one); the next exchange, on whichever connection of this
//! thread, takes a spare from here instead of allocating one. Allocating and freeing an
//! 8 KiB buffer per exchange cost about as much as parsing the answer's head.
//!
//! A buffer comes back while the last bytes read into it may still be on their way to a
//! client (they share its allocation): it is reused only once it is the sole handle, and
//! let go otherwise. At most [`KEEP`] spares wait per thread (512 KiB at
//! [`super::FIRST_READ`]): about as many as a burst of answers returns at once.

use std::cell::RefCell;

use bytes::BytesMut;

/// Most spare buffers kept per thread.
const KEEP: usize = 64;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `size` bytes: a spare if the last one returned is no
/// longer shared, else a new one.
pub(super) fn take(size: usize) -> BytesMut {
    let spare = SPARES
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten();
    if let Some(mut buf) = spare {
        if buf.is_empty() && buf.try_reclaim(size) {
            return buf;
        }
    }
    BytesMut::with_capacity(size)
}

/// Returns an empty buffer that was taken with [`take`] and never grown.
pub(super) fn give(buf: BytesMut) {
    debug_assert!(buf.is_empty(), "a spare buffer holds bytes");
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < KEEP {
            spares.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_once_no_bytes_of_it_are_held_elsewhere() {
        let mut buf = take(8192);
        let first = buf.as_ptr();
        buf.extend_from_slice(b"answer");
        let held = buf.split().freeze();
        give(buf);
        // The answer's bytes are still held: the spare is let go, a new buffer comes.
        let other = take(8192);
        assert_ne!(other.as_ptr(), first);
        assert!(other.capacity() >= 8192);
        drop(held);
        give(other);
        let again = take(8192);
        assert!(again.capacity() >= 8192 && again.is_empty());
    }

    #[test]
    fn a_spare_no_longer_shared_comes_back_whole() {
        let mut buf = take(8192);
        let first = buf.as_ptr();
        buf.extend_from_slice(&[7u8; 8192]);
        drop(buf.split().freeze());
        give(buf);
        let again = take(8192);
        assert_eq!(again.as_ptr(), first, "the same allocation, from its start");
        assert!(again.capacity() >= 8192);
    }
}
