#!/usr/bin/env bash
# Benchmark of `dockroute watch` and of the reconcile at scale, in one run inside a namespace lab
# (scripts/lab.sh), with the release build:
#
#   sudo scripts/bench-watch.sh [--quick] [heal|idle|scale|all]     (default: all)
#
#   heal   heal latency, median and p99, from a change's kernel event to the container reached
#          through the VM again, for `dockroute watch`, a shell keeper driven by `ip monitor
#          route` and a 5-second poll loop (scripts/bench-keepers.sh): dockroute's routes and
#          rules deleted; `ip route replace 172.17.0.0/16 dev tun0` in main (vpnc-script); a VPN's
#          nftables table re-created with policy drop (dockroute only: the others repair no
#          firewall). 200 trials each (the poll loop: 20, each at a random time of its period)
#   idle   the watch process over 60 s with no events: CPU ticks, wake-ups, resident memory
#   scale  watch's own reconcile, `up` with nothing to change, `up` from nothing and `status`,
#          with 0/1k/5k/20k routes in main and 0/500/2,000 iptables-nft rules (30 runs each)
#
# --quick (about a minute after the build): 10 heal trials (2 for the poll loop), 3 s idle, the
# scale table at 0/1k routes and 0/500 rules with 3 runs each. The numbers are not meant to be
# read then; it checks that the benchmark still runs.
# The measuring is scripts/bench_watch.py (Python standard library only). A full run takes about
# 12 minutes.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
QUICK=()
PART=all
for a in "$@"; do
    case $a in
    --quick) QUICK=(--quick --trials 10 --poll-trials 2 --idle-secs 3 --runs 3) ;;
    heal | idle | scale | all) PART=$a ;;
    *) echo "usage: bench-watch.sh [--quick] [heal|idle|scale|all]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-watch.sh: run as root (network namespaces)" >&2; exit 1; }
scripts/deps.sh

cargo build --release --locked -q
sync
BIN=$PWD/target/$(rustc --print host-tuple)/release/dockroute
P="benchw$$"
WORK=$(mktemp -d /var/tmp/dockroute-benchw.XXXXXX)
chmod 755 "$WORK"
cleanup() { scripts/lab.sh destroy "$P" || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/lab.sh create "$P"
: >"$WORK/config.toml"
mkdir -m 700 "$WORK/state"
export DOCKROUTE_STATE_DIR=$WORK/state
echo "dockroute bench-watch: $(nproc) cores, kernel $(uname -r), $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')"
# The measuring runs in the lab's host namespace, in a private mount namespace where /run/dbus is
# empty: dockroute never reaches the machine's bus.
unshare --mount --propagation private sh -c \
    'if [ -d /run/dbus ]; then mount -t tmpfs -o mode=755 tmpfs /run/dbus; fi; exec "$@"' sh \
    ip netns exec "$P-host" python3 scripts/bench_watch.py "$PART" "$BIN" "$WORK/config.toml" \
    "$WORK/state" ${QUICK[@]+"${QUICK[@]}"}
