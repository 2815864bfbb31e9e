#!/usr/bin/env bash
# The main job on a simulated VM that runs a real Docker engine: build dockroute, build a
# namespace lab whose VM runs Debian's dockerd (scripts/lab.sh docker-create), create a user
# network and a container on it beside one on the default bridge, show both unreachable and their
# names unknown, run `dockroute up --docker tcp://VM:2375`, show a real HTTP exchange with each and
# a name resolving, `status`, a VPN kill switch that `up` repairs narrowly, `down`, and show the
# host's routes, rules and resolv.conf are byte-identical to before. The lab (engine included) is
# removed on exit, Ctrl-C or failure. It changes nothing outside the lab's namespaces.
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
VM=192.168.99.100 # the VM's side of the host-only link (scripts/lab.sh)
ENGINE=$(scripts/lab.sh docker-fetch) # Debian's docker.io, extracted (never installed)
WORK=$(mktemp -d /tmp/dockroute-demo.XXXXXX)
chmod 755 "$WORK"
cleanup() { scripts/lab.sh destroy "$P" || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

step "creating the lab: host namespace $P-host with vboxnet0 <-> VM $P-vm running Debian's dockerd on tcp://$VM:2375"
scripts/lab.sh docker-create "$P" --forwarding
: >"$WORK/config.toml"
export DOCKROUTE_STATE_DIR=$WORK/state
host() { ip netns exec "$P-host" "$@"; }
vm() { ip netns exec "$P-vm" "$@"; }
dockroute() { echo "\$ dockroute $*"; host "$BIN" --config "$WORK/config.toml" "$@"; }
docker_cli() { # the docker CLI on the host, talking to the VM's engine as a developer's would
    host env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DOCKER_HOST="tcp://$VM:2375" \
        DOCKER_CONFIG="$WORK/docker" "$ENGINE/usr/bin/docker" "$@"
}
docker() { echo "\$ docker $*"; docker_cli "$@"; }
http() { # IP: a real HTTP exchange with the container's httpd; the status line and the page
    local reply
    printf '$ printf %s | socat - TCP:%s:80\n' "'GET / HTTP/1.0\r\n\r\n'" "$1"
    if ! reply=$(printf 'GET / HTTP/1.0\r\n\r\n' | host socat -T2 - "TCP:$1:80,connect-timeout=2" | tr -d '\r') ||
        [[ $reply != "HTTP/1.1 200 OK"*"dockroute lab" ]]; then
        echo "no answer from $1:80" >&2
        return 1
    fi
    printf '%s\n' "$reply" | sed -n '1s/^/  /p;$s/^/  /p'
}
resolve() { echo "\$ getent hosts $1"; host getent hosts "$1"; }
out_of_reach() { # WHEN [--no-name]: neither container answers, and api.docker does not resolve
    local ip
    for ip in "$WEB" "$API"; do
        if http "$ip" >/dev/null 2>&1; then echo "unexpected: $ip reachable $1" >&2; exit 1; fi
    done
    if [ $# = 1 ] && resolve api.docker >/dev/null 2>&1; then
        echo "unexpected: api.docker resolves $1" >&2
        exit 1
    fi
}
snapshot() { host ip route show table all; host ip rule show; host cat /etc/resolv.conf; }
echo "the VM's FORWARD policy is $(vm iptables -S FORWARD | sed -n 's/^-P FORWARD //p'): its forwarding was on" \
    "before dockerd started (in a freshly booted VM dockerd sets DROP, routed packets time out," \
    "and \`dockroute status\` diagnoses that)"

step "a user network and a container on it, beside one on the default bridge"
echo "(docker: the engine's CLI on the host, DOCKER_HOST=tcp://$VM:2375)"
docker network create demo_default # as \`docker compose\` makes one per project
docker run -d --name web busybox-httpd
docker run -d --name api --network demo_default busybox-httpd
ip_of() { docker_cli inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
WEB=$(ip_of web)
API=$(ip_of api)
echo "web is $WEB on the default bridge, api is $API on demo_default"
docker network ls

# Names: a stock Docker engine serves the host no names. As in the classic recipe (a dnsmasq or
# dnsdock in the VM, on docker0's address), a dnsmasq in the VM answers *.docker on 172.17.0.1;
# `dockroute up` points the host's *.docker at it. `dockroute watch` answers containers' names
# from the engine itself (issue 18): see the marked step below.
(setsid ip netns exec "$P-vm" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv \
    --no-hosts --user=root --bind-interfaces --listen-address=172.17.0.1 --port=53 --local=/docker/ \
    --host-record="web.docker,$WEB" --host-record="api.docker,$API" --pid-file="$WORK/dnsmasq.pid" \
    </dev/null >/dev/null 2>&1 &) # not a job of this shell: the lab's removal kills it
for _ in $(seq 1 300); do
    vm ss -Hlun "sport = :53" | grep -q 53 && break
    sleep 0.01
done
echo "the VM's own name server (dnsmasq on 172.17.0.1, the classic recipe) answers web.docker and api.docker"

snapshot >"$WORK/before"
step "before: neither container is reachable from the host, and their names are unknown"
out_of_reach "before dockroute up"
echo "$WEB:80 and $API:80 do not answer, and api.docker does not resolve"

step "dockroute up: it asks the engine for its networks and routes every bridge network"
dockroute up --docker "tcp://$VM:2375" --vm-ip "$VM"

step "after: each container answers over the host-only link, and the names resolve"
http "$WEB"
http "$API"
resolve web.docker
resolve api.docker
echo "\$ cat /etc/resolv.conf   # the lab's own, bind-mounted by ip netns exec"
host cat /etc/resolv.conf

step "dockroute up again, bare (idempotent: the post-VPN-connect hook runs it; it reuses what up recorded)"
dockroute up

step "dockroute status"
dockroute status --check-name api.docker

step "a VPN connects: tunnel tun0 and a kill switch (INPUT/OUTPUT policy DROP, tunnel allowed)"
host ip tuntap add dev tun0 mode tun # a real tun device, as OpenVPN's (no one reads it here)
host ip addr add 10.66.0.2/24 dev tun0
host ip link set tun0 up
for rule in "-A INPUT -i lo -j ACCEPT" "-A INPUT -i tun0 -j ACCEPT" "-A OUTPUT -o lo -j ACCEPT" \
    "-A OUTPUT -o tun0 -j ACCEPT" "-P INPUT DROP" "-P OUTPUT DROP"; do
    # shellcheck disable=SC2086
    host iptables $rule
done
out_of_reach "through the kill switch" --no-name
echo "both containers are cut off"

step "dockroute up, as the post-connect hook runs it: it repairs the kill switch narrowly"
echo "(the kill switch blocks the engine's port too, until this up opens the host-only link: up warns"
echo " and keeps the networks the last up routed; the next up asks the engine again)"
dockroute up
http "$WEB"
http "$API"
dockroute status | sed -n '/^vpn/,/^conflicts/p'

step "the VPN disconnects (restores its policies, flushes its chains)"
host iptables -P INPUT ACCEPT
host iptables -P OUTPUT ACCEPT
host iptables -F INPUT
host iptables -F OUTPUT
host ip link del tun0

step "dockroute watch: the containers' names from the engine itself, with no name server in the VM"
kill "$(cat "$WORK/dnsmasq.pid")"
echo "the VM's dnsmasq is stopped: the VM now serves no names at all"
echo "\$ dockroute watch &   # its log: $WORK/watch.log"
# not through the function `host`: a background function is a subshell, and a SIGTERM to it
# would not reach watch (ip netns exec becomes the program: this pid is watch's own)
ip netns exec "$P-host" "$BIN" --config "$WORK/config.toml" watch >"$WORK/watch.log" 2>&1 &
WATCH=$!
for _ in $(seq 1 500); do
    host getent hosts api.docker >/dev/null 2>&1 && break
    sleep 0.02
done
resolve web.docker
resolve api.docker
http_by_name() { # NAME: a real HTTP exchange, the name resolved by the host's resolver
    printf '$ printf %s | socat - TCP:%s:80\n' "'GET / HTTP/1.0\r\n\r\n'" "$1"
    printf 'GET / HTTP/1.0\r\n\r\n' | host socat -T2 - "TCP:$1:80,connect-timeout=2" | tr -d '\r' |
        sed -n '1s/^/  /p;$s/^/  /p'
}
http_by_name api.docker
docker run -d --name late --label com.docker.compose.service=cache \
    --label com.docker.compose.project=demo busybox-httpd
for _ in $(seq 1 500); do
    host getent hosts cache.demo.docker >/dev/null 2>&1 && break
    sleep 0.02
done
echo "(the container's start event refreshed the names: no up, no signal)"
resolve late.docker
resolve cache.demo.docker
echo "\$ cat /etc/resolv.conf"
host cat /etc/resolv.conf
kill -TERM "$WATCH"
wait "$WATCH" || true
echo "watch ended: DNS is back to what a plain up sets (the VM serves no names now, so no line)"
echo "\$ cat /etc/resolv.conf"
host cat /etc/resolv.conf

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
out_of_reach "after down"
echo "unreachable and unknown again, as before"

step "done: the lab and its engine are removed"
