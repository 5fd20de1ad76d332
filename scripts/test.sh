#!/usr/bin/env bash
# The test command (README's): installs what the tests use when it is missing, then checks
# formatting and lints and runs the whole suite. Works by itself on a fresh machine of the
# kind the tests need (Linux, root or passwordless sudo, a Docker Engine, Debian's packages
# and PyPI reachable).
#   1. installs, when missing: curl (tests/tls.rs), procps for `kill` (tests/process.rs),
#      iproute2 and util-linux for the multi-node bed's network namespaces
#      (tests/multinode.rs), pebble, Let's Encrypt's test CA with its DNS server
#      pebble-challtestsrv (tests/acme.rs), Python's grpcio (tests/grpc.rs: a real gRPC client
#      and server);
#   2. cargo fmt --check, no import cycles between modules or a module's files
#      (scripts/import-cycles.py), cargo clippy --workspace --all-targets -- -D warnings;
#   3. cargo test, and beside it, at the lowest CPU priority, the fuzz smoke
#      (scripts/fuzz-smoke.sh: every fuzz target on its seeds plus a few seconds; it installs
#      cargo-fuzz from crates.io when missing). With arguments, only `cargo test ARGS`
#      (e.g. `scripts/test.sh --test process`).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive

missing=()
type -P curl >/dev/null || missing+=(curl)
type -P kill >/dev/null || missing+=(procps)
type -P ip >/dev/null || missing+=(iproute2)
type -P nsenter >/dev/null || missing+=(util-linux)
{ type -P pebble && type -P pebble-challtestsrv; } >/dev/null || missing+=(pebble)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    "${sudo[@]}" apt-get update -q </dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

if ! python3 -c 'import grpc' 2>/dev/null; then
    echo "==> installing grpcio (pip)"
    python3 -m pip install --quiet --disable-pip-version-check grpcio </dev/null
fi

echo "==> toolchain"
cargo --version
rustc --version

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> no import cycles (scripts/import-cycles.py)"
python3 scripts/import-cycles.py

echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if [ "$#" -gt 0 ]; then
    echo "==> cargo test $*"
    cargo test "$@"
    exit 0
fi

# The whole suite: the fuzz smoke (scripts/fuzz-smoke.sh: builds every fuzz target, runs
# each on its seeds plus a few seconds) runs beside the tests at the lowest CPU priority. Most
# of the suite's time is spent waiting on Docker daemons, which the fuzz build fills; the
# tests keep the CPU whenever they want it.
echo "==> cargo test --no-run"
cargo test --no-run
fuzz_log=$(mktemp)
echo "==> fuzz smoke (scripts/fuzz-smoke.sh) beside the tests, at nice 19"
setsid nice -n 19 ./scripts/fuzz-smoke.sh >"$fuzz_log" 2>&1 </dev/null &
fuzz_pid=$!
# Stops the smoke (its whole process group) if the tests fail first.
trap '[ -z "$fuzz_pid" ] || kill -- -"$fuzz_pid" 2>/dev/null || true; rm -f "$fuzz_log"' EXIT

echo "==> cargo test"
cargo test

echo "==> fuzz smoke: waiting for it"
if wait "$fuzz_pid"; then
    fuzz_pid=
    grep '^fuzz-smoke:' "$fuzz_log"
else
    fuzz_pid=
    cat "$fuzz_log"
    echo "==> fuzz smoke FAILED"
    exit 1
fi
