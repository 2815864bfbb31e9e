#!/bin/bash
# dockroute self-check for macOS: what the system really does with the container subnets, the
# DNS domain and pf, in a form to paste into an issue. Reads only; changes nothing.
#
#   scripts/macos-check.sh [-s SUBNET]... [-d DOMAIN] [-c HOST:PORT]... [-n NAME] [-i IF]
#
#   -s SUBNET     a container subnet (default 172.17.0.0/16; repeat for more)
#   -d DOMAIN     the DNS domain (default docker)
#   -c HOST:PORT  try a real TCP connection (e.g. -c 172.17.0.2:80); repeat for more
#   -n NAME       resolve NAME through the system resolver, as applications do
#   -i IF         the VM's link (default: every vboxnet* and bridge1NN)
#
# Run it with sudo to include pf's rules and counters (pfctl needs root).
#
# Written for macOS's /bin/bash 3.2 as much as for bash 5: no expansion of a possibly empty array
# without a guard (an error under `set -u` before bash 4.4), no `declare -A`, `${v,,}` or
# `mapfile`.
set -u
# The system's tools first, so that nothing in the Homebrew directories stands in for them; those
# come after, for dockroute itself.
PATH=/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin:/opt/homebrew/bin
export PATH LC_ALL=C

subnets=()
conns=()
domain=docker
name=
iface=
while getopts "s:d:c:n:i:h" opt; do
    case $opt in
    s) subnets+=("$OPTARG") ;;
    d) domain=$OPTARG ;;
    c) conns+=("$OPTARG") ;;
    n) name=$OPTARG ;;
    i) iface=$OPTARG ;;
    *)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
    esac
done
[ ${#subnets[@]} -eq 0 ] && subnets=(172.17.0.0/16)

if [ "$(uname -s)" != Darwin ]; then
    echo "error: macos-check.sh runs on macOS only (this is $(uname -s))" >&2
    exit 2
fi

# Inputs go to programs as single arguments, never through a shell; still, refuse oddities so
# the report stays readable.
valid() { [[ $1 =~ ^[A-Za-z0-9._:/-]+$ ]]; }
for v in "${subnets[@]}" ${conns[@]+"${conns[@]}"} "$domain" ${name:+"$name"} ${iface:+"$iface"}; do
    if ! valid "$v"; then
        echo "error: invalid argument '$v'" >&2
        exit 2
    fi
done

section() { printf '\n### %s\n```\n' "$1"; }
end() { printf '```\n'; }
run() {
    printf '$ %s\n' "$*"
    "$@" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && printf '(exit %d)\n' "$rc"
    return 0
}

# dockroute, when installed. As root only a binary that root owns and nobody else may write
# (Homebrew's directories belong to the user: running what is there as root would run whatever
# the user put there).
dockroute=$(command -v dockroute 2>/dev/null || true)
skipped=
if [ -n "$dockroute" ] && [ "$(id -u)" -eq 0 ] &&
    [ -z "$(find -L "$dockroute" -prune -type f -user 0 ! -perm -020 ! -perm -002 2>/dev/null)" ]; then
    skipped="(not running $dockroute as root: it is not a root-owned file that only root may write; run this script without sudo to include it)"
    dockroute=
fi

echo "## dockroute macos-check ($(date -u '+%Y-%m-%d %H:%M:%SZ'))"

section "system"
run sw_vers
run uname -m
if [ -n "$dockroute" ]; then
    run "$dockroute" --version
elif [ -n "$skipped" ]; then
    echo "$skipped"
else
    echo "(dockroute: not found in $PATH)"
fi
end

section "links"
if [ -n "$iface" ]; then
    run ifconfig "$iface"
else
    for i in $(ifconfig -l); do
        case $i in
        vboxnet* | bridge1[0-9][0-9]) run ifconfig "$i" ;;
        esac
    done
fi
end

section "routes the kernel picks"
for s in "${subnets[@]}"; do
    net=${s%/*}
    run route -n get -net "$s"
    # an address inside the subnet (the network address + 1 for a /16 or /24 written a.b.0.0)
    first="${net%.*}.$((${net##*.} + 1))"
    run route -n get "$first"
done
end

section "routing table (IPv4: the subnets, the VM links, utun)"
pattern='^Destination|vboxnet|bridge1|utun'
for s in "${subnets[@]}"; do
    net=${s%/*}
    a=${net%%.*}
    rest=${net#*.}
    pattern="$pattern|^$a\\.${rest%%.*}"
done
printf '$ netstat -rn -f inet | grep -E %s\n' "$pattern"
netstat -rn -f inet 2>&1 | grep -E "$pattern"
end

section "DNS for *.$domain"
printf '$ ls -l /etc/resolver\n'
ls -l /etc/resolver 2>&1
if [ -f "/etc/resolver/$domain" ]; then
    run cat "/etc/resolver/$domain"
fi
printf '$ scutil --dns | (the resolver for domain %s)\n' "$domain"
scutil --dns 2>&1 | awk -v d="$domain" '
    /^resolver #/ { if (show) printf "%s", block; block = $0 "\n"; show = 0; next }
    /^DNS configuration/ { if (show) printf "%s", block; block = ""; show = 0; print; next }
    { block = block $0 "\n"; if ($1 == "domain" && $3 == d) show = 1 }
    END { if (show) printf "%s", block }'
if [ -n "$name" ]; then
    run dscacheutil -q host -a name "$name"
fi
end

section "pf"
if [ "$(id -u)" -eq 0 ]; then
    run pfctl -s info
    run pfctl -s References
    run pfctl -sr
    run pfctl -a com.apple -s Anchors
    run pfctl -a com.apple/250.dockroute -vsr
else
    echo "(not root: run with sudo to include pf's status and dockroute's anchor with its counters)"
fi
end

section "VPN software"
for p in /opt/cisco/anyconnect /opt/cisco/secureclient /Applications/GlobalProtect.app \
    "/Applications/Cisco/Cisco AnyConnect Secure Mobility Client.app" \
    "/Applications/Cisco/Cisco Secure Client.app"; do
    [ -e "$p" ] && echo "present: $p"
done
if command -v systemextensionsctl >/dev/null 2>&1; then
    printf '$ systemextensionsctl list | grep -i -E "cisco|paloalto|globalprotect"\n'
    systemextensionsctl list 2>&1 | grep -i -E "cisco|paloalto|globalprotect" || echo "(none)"
fi
end

if [ ${#conns[@]} -gt 0 ]; then
    section "TCP connections"
    for c in "${conns[@]}"; do
        host=${c%:*}
        port=${c##*:}
        if nc -z -G 5 "$host" "$port" >/dev/null 2>&1; then
            echo "$c: connected"
        else
            echo "$c: FAILED (no connection within 5 s)"
        fi
    done
    end
fi

if [ -n "$dockroute" ]; then
    section "dockroute status"
    run "$dockroute" status
    end
fi
