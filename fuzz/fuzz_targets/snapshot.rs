//! What a proxy does with the bytes the controller sends (`providers::controller::poll`;
//! gunzipped first when they are gzip, `snapshot::gunzip`) or that it finds in its saved
//! snapshot (`load_saved`): decoded as a `Snapshot`, taken
//! only for its own cluster (the first byte picks "", "prod" or "dev"), last good labels
//! filled in (`last_good`) and compiled (`compile::compile`). The same bytes are read as
//! the all-in-one role's and the controller's state file (`last_good`, `LastGood::load`).
//!
//! Asserts: never a panic; the snapshot the proxy saves loads again, the same, with the
//! same routes (a proxy restarted from its state file serves what it served).
#![no_main]

use interlock::fuzzing::{last_good_state, proxy_takes_snapshot, snapshot_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let _ = last_good_state(bytes);
    let cluster = ["", "prod", "dev"][pick as usize % 3];
    let Some(body) = snapshot_body(bytes) else {
        return;
    };
    let Some((saved, routes)) = proxy_takes_snapshot(&body, cluster) else {
        return;
    };
    let file = serde_json::to_vec(&saved).expect("a snapshot serialises");
    let (loaded, routes_again) =
        proxy_takes_snapshot(&file, cluster).expect("the saved snapshot loads again");
    assert_eq!(loaded, saved);
    assert_eq!(routes_again, routes);
});
