#!/usr/bin/env bash
# Install the Debian packages one script needs, and only those (as root; no sudo needed).
# Idempotent, and quiet when everything is there already.
#
#   scripts/deps.sh demo    the demo: the namespace lab, its kill switch, the static build, and
#                           the lab's Docker engine (downloaded and extracted, never installed)
#   scripts/deps.sh test    the tests: the demo's, plus nftables, setpriv/nsenter, the DNS
#                           tests' private systemd-resolved (bus and library), dig and openssl
#   scripts/deps.sh bench   the benchmark: the demo's, plus hyperfine
#   scripts/deps.sh         all of the above
set -euo pipefail

what=${1:-all}
case $what in
demo | test | bench | all) ;;
*) echo "usage: scripts/deps.sh [demo|test|bench]" >&2; exit 2 ;;
esac

need=()
have() { command -v "$1" >/dev/null 2>&1; }
want() { # package, if it is not already listed
    local p
    for p in "${need[@]}"; do [ "$p" = "$1" ] && return 0; done
    need+=("$1")
}

# the lab (scripts/lab.sh), the demo's kill switch, and the static Linux build
# (.cargo/config.toml links glibc's libc.a)
have ip || want iproute2
have ss || want iproute2
have socat || want socat
have dnsmasq || want dnsmasq-base
have sysctl || want procps
have iptables || want iptables
have getent || want libc-bin
ls /usr/lib/*/libc.a >/dev/null 2>&1 || want libc6-dev

if [ "$what" = test ] || [ "$what" = all ]; then
    # the firewall tests build VPN kill switches with both iptables backends and nftables
    have iptables-legacy || want iptables
    have nft || want nftables
    have setpriv || want util-linux
    have nsenter || want util-linux
    have dpkg-deb || want dpkg
    # CI lints every script
    have shellcheck || want shellcheck
    # the file-safety tests put an ACL on a private /etc/resolv.conf
    have setfacl || want acl
    # the DNS tests' private systemd-resolved (scripts/resolved-lab.sh) needs a bus and systemd's library
    have dbus-daemon || want dbus-daemon
    have dbus-send || want dbus-bin
    ls /usr/lib/*/systemd/libsystemd-shared-*.so >/dev/null 2>&1 || want libsystemd-shared
    # the Docker TLS test makes its certificates and its fake engine with openssl
    have openssl || want openssl
    # the DNS responder's tests ask it with a real client
    have dig || want bind9-dnsutils
    # tests/names: a TCP exchange by name (curl resolves through the lab's resolv.conf)
    have curl || want curl
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    have hyperfine || want hyperfine
    # scripts/bench-watch.sh measures with a Python helper (standard library only)
    have python3 || want python3
    # scripts/bench-names.sh: the responder against dnsmasq
    have dnsperf || want dnsperf
    have dnsmasq || want dnsmasq
fi

if [ ${#need[@]} -gt 0 ]; then
    echo "deps: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$what" = demo ] || [ "$what" = test ] || [ "$what" = all ]; then
    # the lab's real Docker engine (docker.io, containerd, runc, tini, busybox-static):
    # `apt-get download` and `dpkg-deb -x` into target/test-deps/docker, reused when there. Never
    # `apt-get install`: the package would start the system's docker service in this machine's
    # own namespace and change its firewall. scripts/lab.sh docker-fetch prints where it is.
    "$(dirname "$0")/lab.sh" docker-fetch >/dev/null
fi
if ! have cargo; then
    echo "deps: cargo not found: install Rust 1.91 or newer (https://rustup.rs), then run again" >&2
    exit 1
fi
