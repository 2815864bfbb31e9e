#!/usr/bin/env bash
# A real systemd-resolved for a lab's host namespace, without installing it and without touching
# the machine: the Debian package is downloaded and extracted (never installed: its install script
# replaces /etc/resolv.conf), and it runs with a private dbus-daemon inside a private mount
# namespace of PREFIX-host (its own /run, /etc/passwd with the systemd-resolve user, and
# /etc/resolv.conf pointing at resolved's stub).
#
#   scripts/resolved-lab.sh start PREFIX   prints the PID to use with `nsenter -t PID -m -n ...`
#   (scripts/lab.sh destroy PREFIX stops it: every process of the namespace is killed)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${DOCKROUTE_TEST_CACHE:-$here/../target/test-deps}

die() { echo "resolved-lab: $*" >&2; exit 1; }

fetch() { # -> path of the extracted package root (one fetch at a time: tests run in parallel)
    local root="$CACHE/systemd-resolved"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.fetch.lock"
    flock 9
    if [ ! -x "$root/lib/systemd/systemd-resolved" ]; then
        local tmp
        tmp=$(mktemp -d)
        chmod 755 "$tmp"
        (cd "$tmp" && apt-get download -q systemd-resolved >/dev/null 2>&1) ||
            { apt-get update -qq && (cd "$tmp" && apt-get download -q systemd-resolved >/dev/null); }
        mkdir -p "$root"
        dpkg-deb -x "$tmp"/systemd-resolved_*.deb "$root"
        rm -rf "$tmp"
    fi
    exec 9>&-
    echo "$root"
}

inner() { # runs inside the private mount namespace
    local work=$1 root=$2
    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /run/dbus /run/systemd/resolved.conf.d
    # nothing leaves the lab: no global or fallback servers, no multicast protocols
    printf '[Resolve]\nDNS=\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\n' \
        >/run/systemd/resolved.conf.d/lab.conf
    cp /etc/passwd "$work/passwd"
    cp /etc/group "$work/group"
    grep -q '^systemd-resolve:' "$work/passwd" ||
        echo 'systemd-resolve:x:991:991:resolved:/:/usr/sbin/nologin' >>"$work/passwd"
    grep -q '^systemd-resolve:' "$work/group" || echo 'systemd-resolve:x:991:' >>"$work/group"
    mount --bind "$work/passwd" /etc/passwd
    mount --bind "$work/group" /etc/group
    cat >"$work/bus.conf" <<'EOF'
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
    dbus-daemon --config-file="$work/bus.conf" --fork --nopidfile
    "$root/lib/systemd/systemd-resolved" >"$work/resolved.log" 2>&1 &
    for _ in $(seq 1 500); do
        if [ -s /run/systemd/resolve/stub-resolv.conf ] &&
            dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
                org.freedesktop.DBus.NameHasOwner string:org.freedesktop.resolve1 2>/dev/null |
            grep -q 'boolean true'; then
            mount --bind /run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
            touch "$work/ready"
            exec sleep infinity
        fi
        sleep 0.01
    done
    cat "$work/resolved.log" >&2
    exit 1
}

case ${1:-} in
start)
    [ $# = 2 ] || die "usage: resolved-lab.sh start PREFIX"
    [[ $2 =~ ^[A-Za-z0-9_-]{1,40}$ ]] || die "bad prefix"
    [ "$(id -u)" = 0 ] || die "needs root"
    root=$(fetch)
    work=$(mktemp -d "/tmp/dockroute-resolved.$2.XXXXXX")
    setsid ip netns exec "$2-host" unshare --mount --propagation private \
        "$here/resolved-lab.sh" _inner "$work" "$root" </dev/null >"$work/holder.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 1000); do
        [ -e "$work/ready" ] && { echo "$pid"; exit 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.01
    done
    cat "$work/holder.log" "$work/resolved.log" >&2 2>/dev/null || true
    die "systemd-resolved did not start"
    ;;
_inner) inner "$2" "$3" ;;
*) die "usage: resolved-lab.sh start PREFIX" ;;
esac
