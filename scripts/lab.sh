#!/usr/bin/env bash
# A simulated Docker VM in network namespaces. Used by demo.sh, bench.sh and the integration tests.
#
#   scripts/lab.sh create PREFIX    build the lab (namespaces PREFIX-host, PREFIX-vm, PREFIX-c1)
#   scripts/lab.sh destroy PREFIX   kill its processes and delete its namespaces (idempotent)
#
#   scripts/lab.sh docker-create PREFIX [--forwarding]
#                                   the same lab with a real Docker engine in PREFIX-vm instead of
#                                   the simulated docker0, dnsmasq and container (see docker_start)
#   scripts/lab.sh docker-restart PREFIX   SIGTERM dockerd, start it again on the same data
#   scripts/lab.sh docker-fetch     download and extract the engine into the cache, print its root
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
here=$(cd "$(dirname "$0")" && pwd)
# the engine's packages, downloaded and extracted (never installed), shared with resolved-lab.sh
CACHE=${DOCKROUTE_TEST_CACHE:-$here/../target/test-deps}
# a running engine's files: data root, socket, pid file, log (root's; removed by destroy)
DOCKER_LABS=${LAB_DOCKER_DIR:-/var/lib/dockroute-lab}
BARE=0 # 1: the VM gets no simulated docker0, dnsmasq or container (a real engine brings its own)

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
    if [ "$BARE" = 1 ]; then
        wait_up "$h" "$HOST_IF"
        wait_up "$v" eth0
        return 0
    fi
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
    docker_stop "$p" # a real engine (docker-create), or what one left behind
    for ns in "$p-c1" "$p-vm" "$p-host"; do
        [ -e "/run/netns/$ns" ] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "/etc/netns/$p-host"
}

# --- a real Docker engine in the VM ------------------------------------------------------------
# Debian's docker.io with containerd, runc, tini (docker-init) and a static busybox for the image,
# downloaded with `apt-get download` and extracted with `dpkg-deb -x` into the cache: never
# installed, so no package script runs and the system's docker service is never started. The
# versions are whatever apt serves; the cache keeps them (VERSIONS) until it is removed.
docker_fetch() { # -> the extracted root (one fetch at a time: tests run in parallel)
    local root="$CACHE/docker" tmp deb
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.fetch.lock"
    flock 9
    if [ ! -f "$root/VERSIONS" ]; then
        tmp=$(mktemp -d)
        chmod 755 "$tmp" # apt's _apt user writes the downloads
        set -- docker.io containerd runc tini busybox-static
        (cd "$tmp" && apt-get download -q "$@" >/dev/null 2>&1) ||
            { apt-get update -qq && (cd "$tmp" && apt-get download -q "$@" >/dev/null); }
        rm -rf "$root.new"
        mkdir -p "$root.new"
        for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$root.new" & done
        wait
        for deb in "$tmp"/*.deb; do
            # shellcheck disable=SC2016 # dpkg-deb's format, not the shell's
            dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$root.new/VERSIONS.new"
        done
        rm -rf "$tmp" "$root.new/usr/share"
        mv "$root.new/VERSIONS.new" "$root.new/VERSIONS"
        rm -rf "$root"
        mv "$root.new" "$root"
    fi
    exec 9>&-
    echo "$root"
}

# Start dockerd in PREFIX-vm, inside a private mount namespace (lab.sh _docker, below), and wait
# until it answers /_ping on its socket DOCKER_LABS/PREFIX/docker.sock. It also listens on
# tcp://VM_IP:2375 without TLS (the VM's side of the host-only link, inside the lab only). Its
# firewall is Docker's default (--iptables), IPv6 rules off; its cgroups live under
# /dockroute-lab-PREFIX in every hierarchy (removed by docker_stop).
docker_start() {
    local p=$1 d="$DOCKER_LABS/$1" root
    root=$(docker_fetch)
    # the machine's cgroup mounts, to be mirrored inside (ip netns exec mounts a fresh /sys)
    awk '$3 == "cgroup" || $3 == "cgroup2" { print $3, $2, $4 }' /proc/self/mounts >"$d/cgroups"
    rm -f "$d/docker.pid" "$d/docker.sock"
    setsid ip netns exec "$p-vm" unshare --mount --propagation private \
        "$here/lab.sh" _docker "$p" "$d" "$root" </dev/null >>"$d/dockerd.log" 2>&1 &
    for _ in $(seq 1 1500); do
        if [ -S "$d/docker.sock" ] &&
            printf 'GET /_ping HTTP/1.0\r\n\r\n' | socat -t2 - "UNIX-CONNECT:$d/docker.sock" 2>/dev/null |
            grep -q '^OK'; then
            return 0
        fi
        running "$!" || break
        sleep 0.01
    done
    tail -n 30 "$d/dockerd.log" >&2
    echo "lab: dockerd in $p-vm did not start" >&2
    return 1
}

docker_inner() { # PREFIX DIR ROOT: runs in the VM's namespace, in a mount namespace of its own
    local p=$1 d=$2 root=$3 type dir opts
    mount -t tmpfs -o mode=755 tmpfs /run
    # dockerd writes /etc/docker/key.json: into an overlay, never the machine's /etc
    mkdir -p "$d/etc-upper" "$d/etc-work"
    mount -t overlay -o "lowerdir=/etc,upperdir=$d/etc-upper,workdir=$d/etc-work" overlay /etc
    if grep -q '^cgroup2 /sys/fs/cgroup ' "$d/cgroups"; then
        mount -t cgroup2 cgroup2 /sys/fs/cgroup
    else
        mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
        while read -r type dir opts; do
            case $dir in /sys/fs/cgroup/*) ;; *) continue ;; esac
            mkdir -p "$dir"
            mount -t "$type" -o "$opts" "$type" "$dir"
        done <"$d/cgroups"
    fi
    export PATH="$root/usr/bin:$root/usr/sbin:$root/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    exec dockerd --data-root="$d/data" --exec-root=/run/docker --pidfile="$d/docker.pid" \
        -H "unix://$d/docker.sock" -H "tcp://$VM_IP:2375" --tls=false --storage-driver=vfs \
        --ip6tables=false --cgroup-parent="/dockroute-lab-$p" --init --shutdown-timeout=2
}

# `docker ARGS` against the lab's engine, with the CLI of the extracted package.
docker_cli() { # PREFIX ARGS...
    local p=$1
    shift
    DOCKER_HOST="unix://$DOCKER_LABS/$p/docker.sock" DOCKER_CONFIG="$DOCKER_LABS/$p/cli" \
        "$CACHE/docker/usr/bin/docker" "$@"
}

# The lab's image without a registry: the static busybox in a rootfs, imported as busybox-httpd
# (CMD: httpd on port 80 serving /www/index.html, "dockroute lab") and tagged busybox:latest.
# Like the public busybox image it has its applets on PATH (chroot: dockroute's helper uses it).
docker_image() {
    local p=$1 r="$DOCKER_LABS/$1/rootfs"
    rm -rf "$r"
    mkdir -p "$r/bin" "$r/www" "$r/tmp"
    cp "$CACHE/docker/bin/busybox" "$r/bin/busybox"
    ln -s busybox "$r/bin/sh"
    ln -s busybox "$r/bin/chroot"
    echo "dockroute lab" >"$r/www/index.html"
    tar -C "$r" -c . | docker_cli "$p" import \
        -c 'CMD ["/bin/busybox","httpd","-f","-p","80","-h","/www"]' - busybox-httpd >/dev/null
    docker_cli "$p" tag busybox-httpd busybox:latest
    rm -rf "$r"
}

running() { # PID: alive and not a zombie (dockerd's parent, lab.sh, is gone: PID 1 reaps it)
    local st
    st=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$st" ] && [ "$st" != Z ]
}

docker_stop_engine() { # SIGTERM dockerd by its pid and wait for it (then KILL)
    local d="$DOCKER_LABS/$1" pid
    pid=$(cat "$d/docker.pid" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 1000); do
        running "$pid" || return 0
        sleep 0.01
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Every process in the lab's cgroups (the containers, which live in network namespaces of their
# own), then the cgroup directories, deepest first.
docker_cgroups() { # PREFIX
    find /sys/fs/cgroup -maxdepth 2 -type d -name "dockroute-lab-$1" 2>/dev/null
}

docker_stop() {
    local p=$1 d="$DOCKER_LABS/$1" ids cg pids left
    if [ -S "$d/docker.sock" ]; then
        ids=$(timeout 20 "$here/lab.sh" _cli "$p" ps -aq 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || timeout 30 "$here/lab.sh" _cli "$p" rm -f $ids >/dev/null 2>&1 || true
    fi
    docker_stop_engine "$p"
    # containerd and its shims are in the VM's network namespace; destroy kills what is left there
    pids=$(ip netns pids "$p-vm" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    for cg in $(docker_cgroups "$p"); do
        pids=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    done
    for _ in $(seq 1 300); do # a killed process leaves its cgroup a moment after the signal
        left=0
        for cg in $(docker_cgroups "$p"); do
            find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
        done
        [ "$left" = 1 ] || break
        sleep 0.01
    done
    if [ -d "$d" ]; then
        rm -rf "$d"
        rmdir "$DOCKER_LABS" 2>/dev/null || true # the last lab's (docker-create retries its mkdir)
    fi
}

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
case ${1:-} in
docker-fetch) docker_fetch; exit 0 ;;
_docker) shift; docker_inner "$@" ;; # inside the private mount namespace (docker_start)
_cli) shift; docker_cli "$@"; exit ;; # docker ARGS against PREFIX's engine (the tests' helper)
docker-create | docker-restart)
    [ $# -ge 2 ] || die "usage: lab.sh $1 PREFIX [--forwarding]"
    check_prefix "$2"
    fwd=0
    if [ $# = 3 ] && [ "$1" = docker-create ] && [ "$3" = --forwarding ]; then fwd=1
    elif [ $# != 2 ]; then die "usage: lab.sh docker-create PREFIX [--forwarding]"; fi
    if [ "$1" = docker-create ]; then
        destroy "$2"
        BARE=1
        create "$2"
        ip netns exec "$2-vm" sysctl -qw net.ipv4.ip_forward="$fwd"
        mkdir -p "$DOCKER_LABS/$2" 2>/dev/null || mkdir -p "$DOCKER_LABS/$2"
        chmod 700 "$DOCKER_LABS" "$DOCKER_LABS/$2"
        docker_start "$2" || { destroy "$2"; exit 1; }
        docker_image "$2" || { destroy "$2"; exit 1; }
    else
        docker_stop_engine "$2"
        docker_start "$2"
    fi
    exit 0
    ;;
esac
[ $# = 2 ] || die "usage: lab.sh create|destroy PREFIX"
check_prefix "$2"
case $1 in
create) destroy "$2"; create "$2" ;;
destroy) destroy "$2" ;;
*) die "usage: lab.sh create|destroy PREFIX" ;;
esac
