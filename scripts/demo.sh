#!/usr/bin/env bash
# The main job on a simulated VM: build dockroute, build a namespace lab (scripts/lab.sh), show the
# container unreachable and its name unknown, run `dockroute up`, show a real TCP exchange and
# redis.docker resolving, `status`, `down`, and show the host's routes, rules and resolv.conf are
# byte-identical to before. The lab is removed on exit, Ctrl-C or failure. It changes nothing
# outside the lab's namespaces.
#
#   scripts/demo.sh        as root (no sudo needed); the binary lands in
#                          target/<host triple>/release/dockroute
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespaces)" >&2; exit 1; }
scripts/deps.sh demo

# Bold step titles on a terminal only; plain text (and no colour from cargo) in a pipe or a file.
if [ -t 1 ]; then
    step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    step() { printf '\n== %s\n' "$*"; }
    export CARGO_TERM_COLOR=never
fi

BIN=$PWD/target/$(rustc --print host-tuple)/release/dockroute # .cargo/config.toml: build.target
step "building dockroute (release; the first build takes a few minutes): $BIN"
cargo build --release --locked 2>&1

P="demo$$"
WORK=$(mktemp -d /tmp/dockroute-demo.XXXXXX)
chmod 755 "$WORK"
cleanup() { scripts/lab.sh destroy "$P" || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

step "creating the lab: host namespace $P-host with vboxnet0 <-> VM $P-vm (docker0) <-> container $P-c1"
scripts/lab.sh create "$P"
: >"$WORK/config.toml"
export DOCKROUTE_STATE_DIR=$WORK/state
host() { ip netns exec "$P-host" "$@"; }
dockroute() { echo "\$ dockroute $*"; host "$BIN" --config "$WORK/config.toml" "$@"; }
talk() { # a real TCP exchange with the container's echo service on 172.17.0.2:6379
    echo "\$ echo hello | socat - TCP:172.17.0.2:6379"
    echo "hello from the host" | host socat -T2 - TCP:172.17.0.2:6379,connect-timeout=2
}
resolve() { echo "\$ getent hosts redis.docker"; host getent hosts redis.docker; }
snapshot() { host ip route show table all; host ip rule show; host cat /etc/resolv.conf; }

snapshot >"$WORK/before"
step "before: the container is not reachable from the host, and its name is unknown"
if talk >/dev/null 2>&1; then echo "unexpected: reachable before dockroute up" >&2; exit 1; fi
if resolve >/dev/null 2>&1; then echo "unexpected: redis.docker resolves before dockroute up" >&2; exit 1; fi
echo "172.17.0.2:6379 does not answer, and redis.docker does not resolve"

step "dockroute up"
dockroute up --vm-ip 192.168.99.100

step "after: the container answers over the host-only link, and its name resolves"
talk
resolve
echo "\$ cat /etc/resolv.conf   # the lab's own, bind-mounted by ip netns exec"
host cat /etc/resolv.conf

step "dockroute up again (idempotent: it is also the post-VPN-connect hook)"
dockroute up --vm-ip 192.168.99.100

step "dockroute status"
dockroute status --check-name redis.docker

step "a VPN connects: tunnel tun0 and a kill switch (INPUT/OUTPUT policy DROP, tunnel allowed)"
host ip tuntap add dev tun0 mode tun # a real tun device, as OpenVPN's (no one reads it here)
host ip addr add 10.66.0.2/24 dev tun0
host ip link set tun0 up
for rule in "-A INPUT -i lo -j ACCEPT" "-A INPUT -i tun0 -j ACCEPT" "-A OUTPUT -o lo -j ACCEPT" \
    "-A OUTPUT -o tun0 -j ACCEPT" "-P INPUT DROP" "-P OUTPUT DROP"; do
    # shellcheck disable=SC2086
    host iptables $rule
done
if talk 2>/dev/null; then echo "unexpected: the kill switch lets the VM through" >&2; exit 1; fi
echo "the container is cut off"

step "dockroute up, as the post-connect hook runs it: it repairs the kill switch narrowly"
dockroute up --vm-ip 192.168.99.100
talk
dockroute status | sed -n '/^vpn/,/^conflicts/p'

step "the VPN disconnects (restores its policies, flushes its chains)"
host iptables -P INPUT ACCEPT
host iptables -P OUTPUT ACCEPT
host iptables -F INPUT
host iptables -F OUTPUT
host ip link del tun0

step "dockroute down"
dockroute down
snapshot >"$WORK/after"
if cmp -s "$WORK/before" "$WORK/after"; then
    echo "routes, rules and resolv.conf are byte-identical to before up"
else
    diff "$WORK/before" "$WORK/after" >&2 || true
    echo "routing state differs after down" >&2
    exit 1
fi
if talk 2>/dev/null; then echo "unexpected: still reachable after down" >&2; exit 1; fi
if resolve 2>/dev/null; then echo "unexpected: still resolves after down" >&2; exit 1; fi
echo "unreachable and unknown again, as before"

step "done: the lab is removed"
