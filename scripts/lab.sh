#!/usr/bin/env bash
# A simulated Docker VM in network namespaces. Used by demo.sh, bench.sh and the integration tests.
#
#   scripts/lab.sh create PREFIX    build the lab (namespaces PREFIX-host, PREFIX-vm, PREFIX-c1)
#   scripts/lab.sh destroy PREFIX   kill its processes and delete its namespaces (idempotent)
#
#   PREFIX-host  the developer's machine: vboxnet0 192.168.99.1/24, nothing else; its own
#                /etc/netns/PREFIX-host/resolv.conf ("nameserver 127.0.0.1"), which `ip netns exec`
#                bind-mounts over /etc/resolv.conf, so DNS tests never see the machine's file
#   PREFIX-vm    the VM: eth0 192.168.99.100/24, docker0 bridge 172.17.0.1/16, forwarding on,
#                dnsmasq on 172.17.0.1:53 answering redis.docker -> 172.17.0.2 (and only *.docker)
#   PREFIX-c1    a container: eth0 172.17.0.2/16 via 172.17.0.1, a TCP echo service on :6379
#
# It only ever touches namespaces (and /etc/netns entries) it creates; the machine's own network
# and /etc/resolv.conf are left alone.
set -euo pipefail

HOST_IF=${LAB_HOST_IF:-vboxnet0}
HOST_IP=${LAB_HOST_IP:-192.168.99.1}
VM_IP=${LAB_VM_IP:-192.168.99.100}
BRIDGE_IP=172.17.0.1
CTR_IP=172.17.0.2

die() { echo "lab: $*" >&2; exit 1; }

check_prefix() {
    [[ $1 =~ ^[A-Za-z0-9_-]{1,40}$ ]] || die "bad prefix '$1'"
}

wait_up() { # ns link
    for _ in $(seq 1 200); do
        if ip -n "$1" -o link show "$2" | grep -q 'state UP'; then return 0; fi
        sleep 0.01
    done
    die "$2 in $1 did not come up"
}

create() {
    local p=$1 h="$1-host" v="$1-vm" c="$1-c1"
    mkdir -p "/etc/netns/$h"
    echo "nameserver 127.0.0.1" >"/etc/netns/$h/resolv.conf"
    for ns in "$h" "$v" "$c"; do
        ip netns add "$ns"
        # IPv4 only: the kernel adds IPv6 link-local routes asynchronously, which would make
        # before/after snapshots of the routing tables race (dockroute routes IPv4 only)
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
            net.ipv6.conf.default.disable_ipv6=1
        ip -n "$ns" link set lo up
    done
    # host <-> VM: the host-only link
    ip -n "$h" link add "$HOST_IF" type veth peer name eth0 netns "$v"
    ip -n "$h" addr add "$HOST_IP/24" dev "$HOST_IF"
    ip -n "$v" addr add "$VM_IP/24" dev eth0
    ip -n "$h" link set "$HOST_IF" up
    ip -n "$v" link set eth0 up
    # the VM's docker0 bridge and one container on it
    ip -n "$v" link add docker0 type bridge
    ip -n "$v" addr add "$BRIDGE_IP/16" dev docker0
    ip -n "$v" link set docker0 up
    ip -n "$v" link add vethc1 type veth peer name eth0 netns "$c"
    ip -n "$v" link set vethc1 master docker0
    ip -n "$v" link set vethc1 up
    ip -n "$c" addr add "$CTR_IP/16" dev eth0
    ip -n "$c" link set eth0 up
    ip -n "$c" route add default via "$BRIDGE_IP"
    ip netns exec "$v" sysctl -qw net.ipv4.ip_forward=1
    wait_up "$h" "$HOST_IF"
    wait_up "$v" eth0
    wait_up "$c" eth0
    wait_up "$v" docker0
    # services: a TCP echo server in the container, dnsmasq as the containers' DNS in the VM
    setsid ip netns exec "$c" socat "TCP-LISTEN:6379,bind=$CTR_IP,reuseaddr,fork" EXEC:cat \
        </dev/null >/dev/null 2>&1 &
    setsid ip netns exec "$v" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv \
        --no-hosts --user=root --bind-interfaces --listen-address="$BRIDGE_IP" --port=53 \
        --local=/docker/ --host-record="redis.docker,$CTR_IP" --pid-file= \
        </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 300); do
        if ip netns exec "$c" ss -Hltn "sport = :6379" | grep -q 6379 &&
            ip netns exec "$v" ss -Hlun "sport = :53" | grep -q 53; then
            return 0
        fi
        sleep 0.01
    done
    die "services in $p did not start"
}

destroy() {
    local p=$1 ns pids
    for ns in "$p-c1" "$p-vm" "$p-host"; do
        [ -e "/run/netns/$ns" ] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "/etc/netns/$p-host"
}

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
[ $# = 2 ] || die "usage: lab.sh create|destroy PREFIX"
check_prefix "$2"
case $1 in
create) destroy "$2"; create "$2" ;;
destroy) destroy "$2" ;;
*) die "usage: lab.sh create|destroy PREFIX" ;;
esac
