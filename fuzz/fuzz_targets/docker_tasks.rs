//! The decoder of the Engine's task list (`GET /tasks`, read for the addresses bollard's
//! model drops) must never panic, whatever the engine, or something posing as it, answers;
//! and it keeps only tasks Swarm wants running, with addresses that are real IPs.
#![no_main]

use interlock::providers::docker::tasks::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tasks) = parse(data) {
        let wanted = serde_json::from_slice::<Vec<serde_json::Value>>(data)
            .map(|all| {
                all.iter()
                    .filter(|t| t.get("DesiredState").and_then(|d| d.as_str()) == Some("running"))
                    .count()
            })
            .unwrap_or(tasks.len());
        assert_eq!(tasks.len(), wanted);
    }
});
