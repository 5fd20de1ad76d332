//! The ClientHello/SNI reader must never panic, whatever bytes a client sends first, and
//! must agree with itself when the same bytes arrive in two pieces.
#![no_main]

use interlock::tls::sni::{parse, Hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Hello::Complete(Some(name)) = &whole {
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
    }
    // A prefix never claims a different complete answer than the whole.
    if data.len() > 1 {
        if let Hello::Complete(prefix) = parse(&data[..data.len() / 2]) {
            assert_eq!(Hello::Complete(prefix), whole);
        }
    }
});
