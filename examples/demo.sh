#!/usr/bin/env bash
# Runs interlock on examples/demo.toml in front of two example backends, without Docker:
#
#   ./examples/demo.sh
#
# Builds the release binaries, starts backend "blue" on 127.0.0.1:9001, backend "green"
# on 127.0.0.1:9002 and interlock on 127.0.0.1:8080 (admin on 127.0.0.1:9090), prints
# curl commands to try, and stops everything on Ctrl-C or exit.
# Ports can be changed with PROXY=, ADMIN= (the backends' ports are in demo.toml).
set -euo pipefail

cd "$(dirname "$0")/.."
PROXY=${PROXY:-127.0.0.1:8080}
ADMIN=${ADMIN:-127.0.0.1:9090}
CONFIG=examples/demo.toml

echo "==> building (cargo build --release --bin interlock --example backend)"
cargo build --release --bin interlock --example backend
BIN=target/release

pids=()
cleanup() {
    trap - EXIT INT TERM
    if [ "${#pids[@]}" -gt 0 ]; then
        echo
        echo "==> stopping (pids ${pids[*]})"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fails early, with a clear message, when something already listens on a port we need.
for addr in 127.0.0.1:9001 127.0.0.1:9002 "$PROXY" "$ADMIN"; do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
        echo "demo: $addr is already in use; stop what listens there first" >&2
        exit 1
    fi
done

"$BIN/examples/backend" --listen 127.0.0.1:9001 --name blue &
pids+=($!)
"$BIN/examples/backend" --listen 127.0.0.1:9002 --name green &
pids+=($!)
"$BIN/interlock" run --config "$CONFIG" --listen "$PROXY" --admin "$ADMIN" \
    --access-log --watch-interval-ms 500 &
pids+=($!)

# Wait until the admin listener answers (the proxy listener binds just before it).
for _ in $(seq 1 100); do
    if curl -fsS "http://$ADMIN/healthz" >/dev/null 2>&1; then
        break
    fi
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: a process exited early (pid $pid); see the messages above" >&2
            exit 1
        fi
    done
    sleep 0.1
done
curl -fsS "http://$ADMIN/healthz" >/dev/null

cat <<EOF

==> interlock is running on http://$PROXY (admin http://$ADMIN). Try, in another terminal:

  curl -H 'Host: blue.localhost'  http://$PROXY/               # -> blue
  curl -H 'Host: green.localhost' http://$PROXY/hello?x=1      # -> green
  curl -H 'Host: app.localhost'   http://$PROXY/green/page     # -> green, path rewritten to /page
  curl -i -H 'Host: app.localhost' http://$PROXY/green         # -> 301 to /green/
  curl -H 'Host: app.localhost'   http://$PROXY/greenhouse     # -> blue (segment boundary)
  curl -i -H 'Host: old.localhost' http://$PROXY/some/path     # -> 302 to http://blue.localhost:8080/some/path
  curl -i -H 'Host: nobody.localhost' http://$PROXY/           # -> 503, no route
  curl -H 'Host: blue.localhost'  http://$PROXY/headers        # headers the backend received
  curl --http2-prior-knowledge -H 'Host: blue.localhost' http://$PROXY/   # h2c

  curl http://$ADMIN/routes      # the live routing table (JSON)
  curl http://$ADMIN/metrics     # Prometheus metrics
  $BIN/interlock check --config $CONFIG

Edit $CONFIG while this runs: valid changes apply within a second, no restart.
Access log lines appear below. Press Ctrl-C to stop.

EOF

# Runs until Ctrl-C, or until one of the processes dies.
wait -n "${pids[@]}" || true
echo "demo: a process exited; stopping the others" >&2
exit 1
