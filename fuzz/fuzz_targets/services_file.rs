//! The services file (`src/providers/file.rs`, `parse`) on arbitrary text, then compiled as
//! `interlock check` and `run` compile it (`compile::compile`).
//!
//! Asserts: never a panic, whatever an operator writes; a file that loads has unique
//! service names, and loads the same twice; compiling it never panics.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use interlock::providers::file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("services.toml");
    let Ok(state) = file::parse(path, &text) else {
        return;
    };
    let names: HashSet<_> = state.services.iter().map(|s| &s.name).collect();
    assert_eq!(names.len(), state.services.len());
    let again = file::parse(path, &text).expect("the same text loads again");
    assert!(again == state);
    for cluster in ["", "prod"] {
        interlock::fuzzing::compile(&state, cluster);
    }
});
