#!/usr/bin/env bash
# The multi-node Swarm test bed of tests/multinode.rs: several private Docker daemons on this
# machine, each in a network namespace of its own, wired through a bridge in a "switch"
# namespace, plus a veth from the host into that switch so the test process reaches every node.
# The machine's own Docker Engine is never used or touched.
#
#   bed.sh up    PREFIX ROOT NET MANAGERS WORKERS   start the daemons, make the swarm
#   bed.sh start PREFIX ROOT NET K                  start node K's dockerd again (same flags)
#   bed.sh down  PREFIX ROOT                        stop and remove everything of PREFIX
#   bed.sh stale FAMILY                             remove leftovers of dead runs of FAMILY
#
# PREFIX names every namespace and interface of one run (at most 9 characters), ROOT holds each
# node's data-root, exec-root, pid file, socket and log (ROOT/nK/...), NET is a free /24's first
# three octets (the host side is NET.1, node K is NET.(K+1)). Nodes 1..MANAGERS are managers,
# the rest workers. Each dockerd has its own --data-root, --exec-root, --pidfile, socket,
# containerd namespace, cgroup parent and hostname (PREFIX-nK); no bridge, no iptables.
set -euo pipefail

node_start() { # node_start PREFIX ROOT NET K
    local p=$1 root=$2 net=$3 k=$4
    local d="$root/n$k" ns="${p}n$k"
    local driver=${INTERLOCK_MULTINODE_STORAGE_DRIVER:-}
    if [ -z "$driver" ]; then
        # Storage drivers that work where the machine's engine works; vfs always does.
        driver=$(docker info --format '{{.Driver}}' 2>/dev/null || echo vfs)
    fi
    # nsenter (not `ip netns exec`): keeps the host's /sys, where the cgroups are mounted.
    nsenter --net="/var/run/netns/$ns" unshare --uts sh -c '
        hostname "$1"; shift; exec "$@"' sh "$p-n$k" \
        dockerd --config-file "$d/daemon.json" --storage-driver "$driver" \
        --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/pid" -H "unix://$d/docker.sock" \
        --iptables=false --bridge=none --cgroup-parent "/$p-n$k" \
        --containerd-namespace "$p-n$k" --containerd-plugins-namespace "$p-n$k-p" \
        >>"$d/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 150); do
        DOCKER_HOST="unix://$d/docker.sock" docker info >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "node $k: dockerd did not start; see $d/dockerd.log" >&2
    tail -n 20 "$d/dockerd.log" >&2 || true
    return 1
}

node_up() { # node_up PREFIX ROOT NET K
    local p=$1 root=$2 net=$3 k=$4
    local d="$root/n$k" ns="${p}n$k" ip="$net.$(($4 + 1))"
    mkdir -p "$d"
    echo '{}' >"$d/daemon.json"
    ip netns add "$ns"
    ip link add "${p}-${k}h" type veth peer name "${p}-${k}n"
    ip link set "${p}-${k}n" netns "$ns"
    ip link set "${p}-${k}h" netns "${p}sw"
    ip netns exec "${p}sw" ip link set "${p}-${k}h" master br0
    ip netns exec "${p}sw" ip link set "${p}-${k}h" up
    ip netns exec "$ns" ip addr add "$ip/24" dev "${p}-${k}n"
    ip netns exec "$ns" ip link set "${p}-${k}n" up
    ip netns exec "$ns" ip link set lo up
    node_start "$p" "$root" "$net" "$k"
}

sock() { echo "unix://$1/n$2/docker.sock"; }

# Stops the daemons of ROOT (by their pid files, only if that process is a dockerd of ROOT),
# then whatever is left in the cgroups of PREFIX, the mounts under ROOT, the namespaces and
# interfaces of PREFIX, and ROOT.
down() { # down PREFIX ROOT
    local p=$1 root=$2 d pid k
    for d in "$root"/n*; do
        [ -d "$d" ] || continue
        # Containers first (fast), so dockerd's own shutdown has nothing to wait for.
        if [ -S "$d/docker.sock" ]; then
            (
                export DOCKER_HOST="unix://$d/docker.sock"
                ids=$(timeout 10 docker ps -q 2>/dev/null || true)
                [ -z "$ids" ] || timeout 20 docker kill $ids >/dev/null 2>&1 || true
            ) &
        fi
    done
    wait
    local daemons=()
    for d in "$root"/n*; do
        [ -f "$d/pid" ] || continue
        pid=$(cat "$d/pid")
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-root $d/data"; then
            kill -TERM "$pid" 2>/dev/null || true
            daemons+=("$pid")
        fi
    done
    for pid in "${daemons[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Whatever else runs in this run's node namespaces (containerd, its shims, docker-proxy)
    # and in its cgroups (the containers' processes): all started by these daemons.
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${p}n[0-9]+\$" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    for c in /sys/fs/cgroup/*/"$p"-n*; do
        [ -d "$c" ] || continue
        find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | while read -r pid; do
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    sleep 0.2
    for c in /sys/fs/cgroup/*/"$p"-n*; do
        [ -d "$c" ] || continue
        find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    # Mounts under ROOT (overlays, netns files, secrets) must go before the folder can.
    { awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts || true; } | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    ip link del "${p}-h" 2>/dev/null || true
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${p}(sw|n[0-9]+)\$" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$root"
}

cmd=${1:-}
case "$cmd" in
up)
    p=$2 root=$3 net=$4 managers=$5 workers=$6
    n=$((managers + workers))
    mkdir -p "$root"
    ip netns add "${p}sw"
    ip netns exec "${p}sw" ip link add br0 type bridge
    ip netns exec "${p}sw" ip link set br0 up
    ip netns exec "${p}sw" ip link set lo up
    # The host's leg into the switch: the test process reaches NET.K from here.
    ip link add "${p}-h" type veth peer name "${p}-s"
    ip link set "${p}-s" netns "${p}sw"
    ip netns exec "${p}sw" ip link set "${p}-s" master br0
    ip netns exec "${p}sw" ip link set "${p}-s" up
    ip addr add "$net.1/24" dev "${p}-h"
    ip link set "${p}-h" up
    pids=()
    for k in $(seq 1 "$n"); do node_up "$p" "$root" "$net" "$k" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
    M=$(sock "$root" 1)
    DOCKER_HOST=$M docker swarm init --advertise-addr "$net.2" >/dev/null
    wtok=$(DOCKER_HOST=$M docker swarm join-token -q worker)
    mtok=$(DOCKER_HOST=$M docker swarm join-token -q manager)
    for k in $(seq 2 "$n"); do
        tok=$wtok
        [ "$k" -le "$managers" ] && tok=$mtok
        DOCKER_HOST=$(sock "$root" "$k") timeout 60 docker swarm join --token "$tok" \
            --advertise-addr "$net.$((k + 1))" --listen-addr "$net.$((k + 1)):2377" "$net.2:2377" >/dev/null
    done
    ;;
start)
    node_start "$2" "$3" "$4" "$5"
    ;;
down)
    down "$2" "$3"
    ;;
stale)
    # Runs named FAMILY<pid> whose test process is gone: their namespaces, interfaces, daemons.
    fam=$2
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${fam}[0-9]+sw\$" || true); do
        p=${ns%sw}
        run=${p#"$fam"}
        kill -0 "$run" 2>/dev/null && continue
        down "$p" "/tmp/$p"
    done
    for link in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^${fam}[0-9]+-h\$" || true); do
        p=${link%-h}
        kill -0 "${p#"$fam"}" 2>/dev/null || down "$p" "/tmp/$p"
    done
    for root in /tmp/"$fam"[0-9]*; do
        [ -d "$root" ] || continue
        p=${root#/tmp/}
        kill -0 "${p#"$fam"}" 2>/dev/null || down "$p" "$root"
    done
    ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
