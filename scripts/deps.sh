#!/usr/bin/env bash
# Install what the demo, the tests and the benchmark need on Debian (as root). Idempotent and
# quiet when everything is there already.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have socat || need+=(socat)
have dnsmasq || need+=(dnsmasq-base)
have ss || need+=(iproute2)
have setpriv || need+=(util-linux)
have sysctl || need+=(procps)
have hyperfine || need+=(hyperfine)
# scripts/bench-watch.sh measures with a Python helper (standard library only)
have python3 || need+=(python3)
# the firewall tests build VPN kill switches with both iptables backends and nftables
have iptables || need+=(iptables)
have iptables-legacy || need+=(iptables)
have nft || need+=(nftables)
have nsenter || need+=(util-linux)
have getent || need+=(libc-bin)
# the file-safety tests put an ACL on a private /etc/resolv.conf
have setfacl || need+=(acl)
have getfacl || need+=(acl)
# the DNS tests' private systemd-resolved (scripts/resolved-lab.sh) needs a bus and systemd's library
have dbus-daemon || need+=(dbus-daemon)
have dbus-send || need+=(dbus-bin)
have dpkg-deb || need+=(dpkg)
ls /usr/lib/*/systemd/libsystemd-shared-*.so >/dev/null 2>&1 || need+=(libsystemd-shared)
# the static Linux build (.cargo/config.toml) links glibc's libc.a
ls /usr/lib/*/libc.a >/dev/null 2>&1 || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "deps: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! have cargo; then
    echo "deps: cargo not found: install Rust 1.91 or newer (https://rustup.rs), then run again" >&2
    exit 1
fi
