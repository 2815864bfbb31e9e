#!/usr/bin/env bash
# Build the Debian package with cargo-deb (installed with `cargo install cargo-deb --locked` when
# missing). The package holds /usr/bin/dockroute, the boot job /lib/systemd/system/dockroute.service
# (installed, not enabled), the VPN hooks `dockroute install --hooks` writes (under
# /usr/share/dockroute/hooks, not installed: opt-in), shell completions, the man page, and the
# maintainer scripts of scripts/deb/ (removal stops and disables the job and runs down; purge
# removes the state directory). The unit and the hooks are rendered from systemd/ and
# scripts/hooks/ with the path /usr/bin/dockroute, the same text `dockroute install` writes.
#
#   scripts/deb.sh           build target/debian/dockroute_VERSION_ARCH.deb
#   scripts/deb.sh --check   also check it in a throwaway directory: file list and modes, the
#                            maintainer scripts, the licence, the unit and hooks against
#                            `dockroute install --print --hooks`, the binary runs. It is never
#                            installed on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
case "${1-}" in
--check) check=1 ;;
"") ;;
*) echo "usage: scripts/deb.sh [--check]" >&2; exit 2 ;;
esac

if ! cargo deb --version >/dev/null 2>&1; then
    echo "deb: installing cargo-deb (cargo install cargo-deb --locked; takes a few minutes)" >&2
    cargo install cargo-deb --locked --version 3.8.0
fi

triple=$(rustc --print host-tuple) # .cargo/config.toml builds for the host's triple
echo "deb: building the release binary: target/$triple/release/dockroute" >&2
cargo build --release --locked --target "$triple"
bin=target/$triple/release/dockroute

# Rendered assets ([package.metadata.deb] in Cargo.toml names them).
gen=target/deb-assets
rm -rf "$gen"
mkdir -p "$gen"
sed 's|@DOCKROUTE@|/usr/bin/dockroute|g' systemd/dockroute.service >"$gen/dockroute.service"
for h in nm-dispatcher vpnc-post-connect openvpn-route-up; do
    sed 's|@DOCKROUTE@|/usr/bin/dockroute|g' "scripts/hooks/$h" >"$gen/$h"
done
"$bin" completions bash >"$gen/dockroute.bash"
"$bin" completions zsh >"$gen/_dockroute"
"$bin" completions fish >"$gen/dockroute.fish"
"$bin" manpage >"$gen/dockroute.8"

mkdir -p target/debian
said=$(mktemp)
deb=$(cargo deb --no-build --target "$triple" --output target/debian 2>"$said") || { cat "$said" >&2; rm -f "$said"; exit 1; }
cat "$said" >&2
deb=$(printf '%s\n' "$deb" | tail -n 1)
echo "deb: built $deb"
if [ "$check" = 1 ] && grep -qi 'warn' "$said"; then
    rm -f "$said"
    echo "deb check: cargo-deb warned (above)" >&2
    exit 1
fi
rm -f "$said"
[ "$check" = 1 ] || exit 0

# --- the check: never installed, only listed and extracted into a throwaway root -------------------
work=$(mktemp -d /tmp/dockroute-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "deb check: $*" >&2; exit 1; }

[ "$(dpkg-deb -f "$deb" Package)" = dockroute ] || fail "wrong package name"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
case "$(dpkg-deb -f "$deb" Version)" in
"$version"-*) ;;
*) fail "version $(dpkg-deb -f "$deb" Version) is not Cargo.toml's $version" ;;
esac

# Every file with its mode and owner, nothing else; no directory writable by group or others.
dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { print $1, $2, $6 }' | sort >"$work/files"
sort >"$work/expected" <<'EOF'
-rwxr-xr-x 0/0 ./usr/bin/dockroute
-rw-r--r-- 0/0 ./lib/systemd/system/dockroute.service
-rw-r--r-- 0/0 ./usr/share/dockroute/hooks/nm-dispatcher
-rw-r--r-- 0/0 ./usr/share/dockroute/hooks/vpnc-post-connect
-rw-r--r-- 0/0 ./usr/share/dockroute/hooks/openvpn-route-up
-rw-r--r-- 0/0 ./usr/share/bash-completion/completions/dockroute
-rw-r--r-- 0/0 ./usr/share/zsh/vendor-completions/_dockroute
-rw-r--r-- 0/0 ./usr/share/fish/vendor_completions.d/dockroute.fish
-rw-r--r-- 0/0 ./usr/share/man/man8/dockroute.8.gz
-rw-r--r-- 0/0 ./usr/share/doc/dockroute/copyright
EOF
diff -u "$work/expected" "$work/files" >&2 || fail "unexpected file list or modes (- expected, + in the package)"
if dpkg-deb -c "$deb" | awk '$1 ~ /^d/ && ($1 ~ /^d....w/ || $1 ~ /^d.......w/)' | grep -q .; then
    fail "a directory is writable by group or others"
fi
dpkg-deb -e "$deb" "$work/control"
# nothing in /etc: the hooks and the job are enabled only by `dockroute install [--hooks]`
[ ! -s "$work/control/conffiles" ] || fail "the package has conffiles: $(cat "$work/control/conffiles")"
# the maintainer scripts, as in scripts/deb/ (tests/package.rs runs them against a lab)
for s in prerm postrm postinst; do
    [ -x "$work/control/$s" ] || fail "the package has no executable $s"
    cmp "$work/control/$s" "scripts/deb/$s" || fail "its $s differs from scripts/deb/$s"
done

root=$work/root
dpkg-deb -x "$deb" "$root"
"$root/usr/bin/dockroute" --version | grep -q "^dockroute " || fail "the packaged binary does not run"
# the licence: Cargo.toml's, in the copyright file, with both texts at the top of the source
grep -qx 'License: MIT OR Apache-2.0' "$root/usr/share/doc/dockroute/copyright" ||
    fail "the copyright file does not name the licence MIT OR Apache-2.0"
{ [ -s LICENSE-MIT ] && [ -s LICENSE-APACHE ]; } || fail "LICENSE-MIT or LICENSE-APACHE is missing"

# The unit and the hooks are what `dockroute install --print --hooks` prints for /usr/bin/dockroute.
"$root/usr/bin/dockroute" -q install --print --hooks --init systemd >"$work/printed"
real=$(readlink -f "$root/usr/bin/dockroute")
sed -i "s|$real|/usr/bin/dockroute|g" "$work/printed"
mkdir "$work/parts"
awk -v dir="$work/parts" '
    BEGIN { n = 0; f = dir "/0" }
    /^# ==> / { n++; f = dir "/" n; print $3 > (dir "/" n ".path"); next }
    { print > f }' "$work/printed"
cmp "$work/parts/0" "$root/lib/systemd/system/dockroute.service" || fail "the unit differs from install's"
n=0
for p in "$work"/parts/*.path; do
    path=$(cat "$p")
    case "$path" in
    /etc/NetworkManager/dispatcher.d/90-dockroute) shipped=nm-dispatcher ;;
    /etc/vpnc/post-connect.d/dockroute) shipped=vpnc-post-connect ;;
    /etc/openvpn/dockroute-route-up) shipped=openvpn-route-up ;;
    *) fail "install printed an unknown hook $path" ;;
    esac
    cmp "${p%.path}" "$root/usr/share/dockroute/hooks/$shipped" || fail "$path differs from install's"
    n=$((n + 1))
done
[ "$n" = 3 ] || fail "expected 3 hooks, install printed $n"
zcat "$root/usr/share/man/man8/dockroute.8.gz" | grep -q '^\.TH dockroute 8' || fail "the man page is not roff"
echo "deb check: ok ($(dpkg-deb -c "$deb" | grep -vc '^d') files, modes as expected, unit and hooks identical to dockroute install's)"
