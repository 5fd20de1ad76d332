//! The label parser (`src/config/labels.rs`, `parse`) on an arbitrary label map, built
//! from the input's lines `key=value`: a key of one character picks a label interlock
//! knows (so most keys are real ones), a key starting with `.` is `com.docker.lb.` plus
//! the rest, anything else is used as it is.
//!
//! Asserts: never a panic; the same map parses the same twice; every error names a label
//! of the map; with no error, the typed labels are normalised (hosts lower case without a
//! final dot, parsing again to themselves, listed once; paths absolute; redirect sources
//! listed in the hosts and carrying `redirect_code`; weight 1 to 100).
#![no_main]

use std::collections::BTreeMap;

use interlock::config::labels::{self, HostPattern, PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names = interlock::fuzzing::label_names();
    let mut map = BTreeMap::new();
    for line in text.split('\n') {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let key = if key.chars().count() == 1 {
            let c = key.chars().next().unwrap_or('a') as usize;
            names[c % names.len()].to_string()
        } else if let Some(rest) = key.strip_prefix('.') {
            format!("{PREFIX}{rest}")
        } else {
            key.to_string()
        };
        map.insert(key, value.to_string());
    }
    let parsed = labels::parse(&map);
    let again = labels::parse(&map);
    assert_eq!(parsed.labels, again.labels);
    assert_eq!(parsed.errors, again.errors);
    for e in &parsed.errors {
        assert!(map.contains_key(&e.label), "{e} names no label of the map");
        let _ = e.to_string();
    }
    let _ = serde_json::to_string(&parsed.labels).expect("labels serialise");
    if !parsed.errors.is_empty() {
        return;
    }
    let l = &parsed.labels;
    let mut sorted = l.hosts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), l.hosts.len(), "a host listed twice");
    for h in &l.hosts {
        let text = h.to_string();
        assert!(
            !text.ends_with('.') && text == text.to_ascii_lowercase(),
            "{text}"
        );
        assert_eq!(labels::parse_host("x", &text).as_ref(), Ok(h));
        if let HostPattern::Exact(name) = h {
            assert!(labels::host_matches(h, name));
        }
    }
    for p in l
        .context_root
        .iter()
        .chain(&l.websocket_endpoints)
        .chain(&l.health_path)
    {
        assert!(p.starts_with('/'), "{p}");
    }
    for r in &l.redirects {
        assert_eq!(r.status, l.redirect_code);
        assert!(l
            .hosts
            .iter()
            .any(|h| labels::host_matches(h, &r.source_host)));
    }
    assert!((1..=100).contains(&l.weight));
});
