#!/usr/bin/env bash
# systemd-analyze for dockroute's unit without installing systemd: Debian's `systemd` package is
# downloaded and extracted (never installed) into target/test-deps/systemd, and its systemd-analyze
# runs with the machine's libsystemd-shared (scripts/deps.sh installs it).
#
#   systemd/analyze.sh verify UNIT-FILE                  (tests/install.rs runs it)
#   systemd/analyze.sh security --offline=yes UNIT-FILE  (the exposure figure in the README)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${DOCKROUTE_TEST_CACHE:-$here/../target/test-deps}
root="$CACHE/systemd"
mkdir -p "$CACHE"
exec 9>"$CACHE/.fetch.lock"
flock 9
if [ ! -x "$root/usr/bin/systemd-analyze" ]; then
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -q systemd >/dev/null 2>&1) ||
        { apt-get update -qq && (cd "$tmp" && apt-get download -q systemd >/dev/null); }
    mkdir -p "$root"
    dpkg-deb -x "$tmp"/systemd_*.deb "$root"
    rm -rf "$tmp"
fi
exec 9>&-
# the unit's dependencies (network-online.target, multi-user.target) come from the package
export SYSTEMD_UNIT_PATH="$root/lib/systemd/system:"
exec "$root/usr/bin/systemd-analyze" "$@"
