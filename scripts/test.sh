#!/usr/bin/env bash
# Every test: unit tests, and the integration tests that build namespace labs (they need root).
#
#   scripts/test.sh [cargo test args...]     as root (no sudo needed)
#
# The binary under test lands in target/<host triple>/debug/dockroute. Ends with one summary line
# "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (the integration tests build network namespaces)" >&2; exit 1; }
scripts/deps.sh test
echo "test.sh: building and running the tests (binary: target/$(rustc --print host-tuple)/debug/dockroute)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
