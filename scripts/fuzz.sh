#!/usr/bin/env bash
# Fuzz dockroute's parsers with cargo-fuzz (libFuzzer): every target, one after the other, for
# SECONDS each (default 60). The targets and their seed inputs live in tests/fuzz.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz's nightly flags through.
# Installs cargo-fuzz when it is missing. No sanitizer (the fuzzed code is safe Rust; ASan would
# halve the executions per second), debug assertions and overflow checks on.
# Seeds (tests/fuzz/corpus/TARGET) are only read; new inputs go to tests/fuzz/target/corpus/TARGET,
# a failing input to tests/fuzz/artifacts/TARGET. Per input: at most FUZZ_TIMEOUT seconds
# (default 5) and FUZZ_RSS_MB megabytes (default 512).
#
# Prints one line per target; exits non-zero when any target crashed, hung or ran out of memory.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
[ $# -gt 0 ] && shift
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: SECONDS must be a positive integer, not '$secs'" >&2; exit 2; }
per_input=${FUZZ_TIMEOUT:-5}
rss_mb=${FUZZ_RSS_MB:-512}
dir=tests/fuzz
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz sets RUSTFLAGS, which replaces .cargo/config.toml's rustflags (crt-static): the fuzz
# binaries link dynamically, as libFuzzer needs.
flags=(--fuzz-dir "$dir" --sanitizer none --debug-assertions)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir "$dir")
cargo fuzz build "${flags[@]}"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
summary=()
failed=0
for t in "${targets[@]}"; do
    [ -d "$dir/corpus/$t" ] || { echo "fuzz.sh: no target '$t' (no $dir/corpus/$t)" >&2; exit 2; }
    mkdir -p "$dir/target/corpus/$t"
    echo "fuzz.sh: $t for ${secs}s" >&2
    log=$logs/$t
    status=0
    cargo fuzz run "${flags[@]}" "$t" "$dir/target/corpus/$t" "$dir/corpus/$t" -- \
        -max_total_time="$secs" -timeout="$per_input" -rss_limit_mb="$rss_mb" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
    if [ "$status" = 0 ]; then
        summary+=("fuzz $t: ok, ${secs}s, $(stat number_of_executed_units) runs, $(stat average_exec_per_sec) exec/s, peak rss $(stat peak_rss_mb) MB")
    else
        failed=1
        what=crash
        if grep -q "ERROR: libFuzzer: timeout" "$log"; then what=hang; fi
        if grep -q "ERROR: libFuzzer: out-of-memory" "$log"; then what=out-of-memory; fi
        input=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
        tail -n 30 "$log" >&2
        summary+=("fuzz $t: FAILED, $what (exit $status), input ${input:-not saved}")
    fi
done
printf '%s\n' "${summary[@]}"
exit "$failed"
