#!/usr/bin/env bash
# A bounded fuzzing smoke run (CI runs it after the tests): builds every cargo-fuzz target of
# fuzz/ once, then runs each on its seeds (fuzz/seeds/<target>) plus a few seconds of
# fuzzing. Any crash or failed assertion fails the run; libFuzzer writes the input that
# caused it under fuzz/artifacts/<target>/. Long runs are described in docs/testing.md.
#
#   FUZZ_SMOKE_SECONDS  seconds per target, seeds included (default 4)
#
# Needs cargo-fuzz (installed from crates.io when missing) and the nightly features of the
# stable toolchain (RUSTC_BOOTSTRAP=1, set here).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
secs=${FUZZ_SMOKE_SECONDS:-4}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# No sanitizer (the crate forbids unsafe code; debug assertions and overflow checks stay on)
# and no optimisation: the build is what takes the time here, not the few seconds of runs.
flags=(--sanitizer none --dev)
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz-smoke: built in $(( $(date +%s) - start )) s"

# New inputs found on the way go to a scratch corpus, never into the seeds.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target"
    dirs=("$scratch/$target")
    [ -d "seeds/$target" ] && dirs+=("seeds/$target")
    log="$scratch/$target.log"
    if ! cargo fuzz run "${flags[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "fuzz-smoke: $target FAILED (the input is under fuzz/artifacts/$target/)"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz-smoke: $target: ${runs:-?} runs, $(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)"
done
echo "fuzz-smoke: done in $(( $(date +%s) - start )) s"
