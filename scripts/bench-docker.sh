#!/usr/bin/env bash
# Benchmark of dockroute with a real Docker engine (issue 17), in a lab whose VM runs Debian's
# dockerd (scripts/lab.sh docker-create, forwarding on), with the release build:
#
#   sudo scripts/bench-docker.sh [--quick] [follow|scale|idle|all]     (default: all)
#
#   follow  `watch --docker`: a network created -> its route present, and removed -> its route
#           gone, median and p99 over 60 of each, from the engine's event (its timeNano) and
#           from `docker network create`/`rm` returning (the route's rtnetlink message is the
#           end; the lab's VM is a namespace of this machine, so the clocks are one)
#   scale   `up` listing the engine with 1, 10 and 100 networks beside a routes-only `up` of the
#           same subnets typed as --subnet (`--docker off`), from nothing and with nothing to
#           change (median of 20 runs each)
#   idle    `watch --docker` over 60 s with the event stream open and no events: CPU ticks,
#           wake-ups, resident memory
#
# --quick: 5 creates, 2 runs, sizes 1 and 10, 3 s idle (checks that the benchmark still runs).
# The measuring is scripts/bench_docker.py (Python standard library only).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
QUICK=()
PART=all
for a in "$@"; do
    case $a in
    --quick) QUICK=(--creates 5 --runs 2 --sizes "1,10" --idle-secs 3) ;;
    follow | scale | idle | all) PART=$a ;;
    *) echo "usage: bench-docker.sh [--quick] [follow|scale|idle|all]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-docker.sh: run as root (network namespaces)" >&2; exit 1; }
scripts/deps.sh bench

cargo build --release --locked -q
sync
BIN=$PWD/target/$(rustc --print host-tuple)/release/dockroute
CLI=$PWD/target/test-deps/docker/usr/bin/docker
P="benchd$$"
WORK=$(mktemp -d /var/tmp/dockroute-benchd.XXXXXX)
chmod 755 "$WORK"
cleanup() { scripts/lab.sh destroy "$P" || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/lab.sh docker-create "$P" --forwarding
: >"$WORK/config.toml"
mkdir -m 700 "$WORK/state" "$WORK/cli"
export DOCKROUTE_STATE_DIR=$WORK/state
echo "dockroute bench-docker: $(nproc) cores, kernel $(uname -r), $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes'), docker.io $(grep -m1 docker.io target/test-deps/docker/VERSIONS 2>/dev/null | awk '{print $2}')"
# In the lab's host namespace, in a private mount namespace where /run/dbus is empty: dockroute
# never reaches the machine's bus.
unshare --mount --propagation private sh -c \
    'if [ -d /run/dbus ]; then mount -t tmpfs -o mode=755 tmpfs /run/dbus; fi; exec "$@"' sh \
    ip netns exec "$P-host" python3 scripts/bench_docker.py "$PART" "$BIN" "$WORK/config.toml" \
    "$CLI" "unix:///var/lib/dockroute-lab/$P/docker.sock" "$WORK/cli" ${QUICK[@]+"${QUICK[@]}"}
