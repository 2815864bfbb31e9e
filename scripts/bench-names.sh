#!/usr/bin/env bash
# Benchmark of `dockroute watch`'s DNS responder (issue 18), in namespace labs, with the release
# build:
#
#   sudo scripts/bench-names.sh [--runs N]
#
#   1. dnsperf (Debian package) against the responder of a `watch` whose engine (a fake one,
#      scripts/bench_names.py serve) lists 1,000 running containers, and against dnsmasq serving
#      the same 1,000 names from a hosts file, in the same namespace: queries per second, median
#      and p99 latency. watch's resident memory: idle (--dns off, no responder) and with the
#      1,000 containers named.
#   2. name live after `docker start` (a real dockerd in the lab's VM, scripts/lab.sh
#      docker-create): N starts (default 50), median and p99.
# The measuring is scripts/bench_names.py (Python standard library only).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
RUNS=50
while [ $# -gt 0 ]; do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: bench-names.sh [--runs N]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-names.sh: run as root (network namespaces)" >&2; exit 1; }
command -v dnsperf >/dev/null || { echo "bench-names.sh: needs dnsperf (apt-get install dnsperf)" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "bench-names.sh: needs dnsmasq" >&2; exit 1; }

# DOCKROUTE_BIN: another build (e.g. a debug one, to check that the benchmark runs)
if [ -n "${DOCKROUTE_BIN:-}" ]; then
    BIN=$DOCKROUTE_BIN
else
    cargo build --release --locked -q
    BIN=$PWD/target/$(rustc --print host-tuple)/release/dockroute
fi
P="benchn$$"
D="benchd$$"
WORK=$(mktemp -d /var/tmp/dockroute-benchn.XXXXXX)
chmod 755 "$WORK"
FAKE=
cleanup() {
    if [ -n "$FAKE" ]; then kill "$FAKE" 2>/dev/null || true; fi
    scripts/lab.sh destroy "$P" || true
    scripts/lab.sh destroy "$D" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "dockroute bench-names: $(nproc) cores, kernel $(uname -r), $(dnsperf -h 2>&1 | grep -m1 Version || true), $(dnsmasq --version | head -1), $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')"

# In a private mount namespace where /run/dbus is empty: dockroute never reaches the machine's bus.
in_lab() {
    local ns=$1
    shift
    unshare --mount --propagation private sh -c \
        'if [ -d /run/dbus ]; then mount -t tmpfs -o mode=755 tmpfs /run/dbus; fi; exec "$@"' sh \
        ip netns exec "$ns" "$@"
}

# 1. dnsperf and memory: the fake engine with 1,000 containers
scripts/lab.sh create "$P"
mkdir -p "$WORK/1/state" && chmod 700 "$WORK/1/state" && : >"$WORK/1/config.toml"
python3 scripts/bench_names.py serve 1000 "$WORK/1/engine.sock" &
FAKE=$!
for _ in $(seq 1 100); do [ -S "$WORK/1/engine.sock" ] && break; sleep 0.05; done
in_lab "$P-host" python3 scripts/bench_names.py dnsperf "$BIN" "$WORK/1" "$WORK/1/engine.sock"
kill "$FAKE"
FAKE=
scripts/lab.sh destroy "$P"

# 2. name live after `docker start`: the real engine
scripts/lab.sh docker-create "$D" --forwarding
mkdir -p "$WORK/2/state" "$WORK/2/cli" && chmod 700 "$WORK/2/state" && : >"$WORK/2/config.toml"
in_lab "$D-host" python3 scripts/bench_names.py live "$BIN" "$WORK/2" \
    "/var/lib/dockroute-lab/$D/docker.sock" "$PWD/target/test-deps/docker/usr/bin/docker" "$RUNS"
