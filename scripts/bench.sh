#!/usr/bin/env bash
# Benchmark: dockroute up/down against the shell recipe, in one run inside a namespace lab.
#
#   scripts/bench.sh (as root) [RUNS]      (default 300 timed runs per command, after warm-up runs)
#
# Every command is timed by hyperfine without a shell (-N), in the lab's host namespace; the
# "prepare" command puts the kernel back before each timed run. Prints medians in milliseconds.
# Part 1: routes only (--dns off --firewall off), dockroute and ip alternating in rounds so that
# the machine's noise hits both alike. Part 2: routes + DNS through a real
# systemd-resolved (scripts/resolved-lab.sh) against `ip route replace` + `resolvectl dns` +
# `resolvectl domain`, and `up` with its defaults (DNS and the firewall check, which reads
# iptables and nftables through their programs).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
RUNS=${1:-300}
[[ $RUNS =~ ^[0-9]+$ ]] || { echo "usage: bench.sh [RUNS]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (network namespaces)" >&2; exit 1; }
scripts/deps.sh bench

cargo build --release --locked -q
sync # the build's writes must not be flushed during the first timings
BIN=$PWD/target/$(rustc --print host-tuple)/release/dockroute # .cargo/config.toml: build.target
P="bench$$"
WORK=$(mktemp -d /var/tmp/dockroute-bench.XXXXXX)
chmod 755 "$WORK"
cleanup() { scripts/lab.sh destroy "$P" || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/lab.sh create "$P"
: >"$WORK/config.toml"
export DOCKROUTE_STATE_DIR=$WORK/state
H=(ip netns exec "$P-host")
DR="$BIN --config $WORK/config.toml"
UP="$DR up --vm-ip 192.168.99.100 --dns off --firewall off"
DOWN="$DR down"
REPLACE="ip route replace 172.17.0.0/16 via 192.168.99.100 dev vboxnet0"
DEL="ip route del 172.17.0.0/16"

# Run one of the command lines above in the lab's host namespace, split at blanks as hyperfine -N
# splits it (the paths in them hold no blanks: $WORK is mktemp's, $BIN the build's).
lab() {
    local -a cmd
    read -r -a cmd <<<"$1"
    "${H[@]}" "${cmd[@]}"
}

# sample NAME CMD PREPARE RUNS: time CMD RUNS times (inside "${H[@]}"), append the times in ms to
# $WORK/NAME
sample() {
    local json=$WORK/out.json
    if ! "${H[@]}" hyperfine -N --style none --warmup 10 --runs "$4" \
        --prepare "$3" --export-json "$json" "$2" >/dev/null 2>"$WORK/err"; then
        cat "$WORK/err" >&2
        exit 1
    fi
    tr -d ' \n' <"$json" | grep -o '"times":\[[^]]*\]' | tr -d '"times:[]' | tr , '\n' |
        awk '{ printf "%.6f\n", $1 * 1000 }' >>"$WORK/$1"
}
# of NAME: the median of its samples, in ms
of() { sort -g "$WORK/$1" | awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# median CMD PREPARE -> milliseconds, all runs in one go
median() {
    rm -f "$WORK/one"
    sample one "$1" "$2" "$RUNS"
    of one
}

# Part 1 compares dockroute with ip, so their runs alternate: 20 rounds, each timing every command
# RUNS/20 times. Load from elsewhere on the machine then falls on both sides alike.
ROUNDS=20
PER=$(((RUNS + ROUNDS - 1) / ROUNDS))
for _ in $(seq "$ROUNDS"); do
    sample up "$UP" "$DOWN" "$PER"
    sample down "$DOWN" "$UP" "$PER"
    lab "$UP" >/dev/null
    sample up_again "$UP" "$UP" "$PER"
    lab "$DOWN" >/dev/null
    lab "$REPLACE" # so that the first "prepare" delete has something to delete
    sample replace "$REPLACE" "$DEL" "$PER"
    sample del "$DEL" "$REPLACE" "$PER" # the last timed run deleted the route
done
up=$(of up)
down=$(of down)
up_again=$(of up_again)
replace=$(of replace)
del=$(of del)

# Part 2: the same host namespace, now with systemd-resolved and its stub as /etc/resolv.conf.
HOLDER=$(scripts/resolved-lab.sh start "$P")
H=(nsenter -t "$HOLDER" -m -n)
RESOLVECTL=$PWD/target/test-deps/systemd-resolved/usr/bin/resolvectl
UP_DNS="$DR up --vm-ip 192.168.99.100 --dns resolved --firewall off"
UP_ALL="$DR up --vm-ip 192.168.99.100"
up_dns=$(median "$UP_DNS" "$DOWN")
lab "$UP_DNS" >/dev/null
up_dns_again=$(median "$UP_DNS" "$UP_DNS")
lab "$DOWN" >/dev/null
up_all=$(median "$UP_ALL" "$DOWN")
r_dns=$(median "$RESOLVECTL dns vboxnet0 172.17.0.1" "$RESOLVECTL revert vboxnet0")
r_domain=$(median "$RESOLVECTL domain vboxnet0 ~docker" "$RESOLVECTL revert vboxnet0")
"${H[@]}" "$RESOLVECTL" revert vboxnet0

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
sum() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
cycle=$(sum "$up" "$down")
recipe=$(sum "$replace" "$del")
echo "dockroute bench: $RUNS runs each (part 1: $ROUNDS alternating rounds of $PER), medians (hyperfine -N), $(nproc) cores, kernel $(uname -r)"
printf '  %-44s %8s ms\n' "dockroute up (routes only: 5 routes and rules)" "$up"
printf '  %-44s %8s ms\n' "dockroute up, nothing to change" "$up_again"
printf '  %-44s %8s ms\n' "dockroute down" "$down"
printf '  %-44s %8s ms\n' "ip route replace (one route)" "$replace"
printf '  %-44s %8s ms\n' "ip route del (one route)" "$del"
printf '  %-44s %8s ms  vs recipe %s ms  ratio %s\n' "cycle up + down" "$cycle" "$recipe" "$(ratio "$cycle" "$recipe")"
printf '  %-44s %8s\n' "ratio up / ip route replace" "$(ratio "$up" "$replace")"
recipe_dns=$(awk -v a="$replace" -v b="$r_dns" -v c="$r_domain" 'BEGIN { printf "%.3f", a + b + c }')
echo "with systemd-resolved (--dns resolved):"
printf '  %-44s %8s ms\n' "dockroute up (routes + per-link DNS)" "$up_dns"
printf '  %-44s %8s ms\n' "dockroute up, nothing to change" "$up_dns_again"
printf '  %-44s %8s ms\n' "resolvectl dns vboxnet0 172.17.0.1" "$r_dns"
printf '  %-44s %8s ms\n' "resolvectl domain vboxnet0 ~docker" "$r_domain"
printf '  %-44s %8s ms  ratio %s\n' "recipe: ip route replace + the two resolvectl" "$recipe_dns" "$(ratio "$up_dns" "$recipe_dns")"
printf '  %-44s %8s ms\n' "dockroute up with defaults (+ firewall check)" "$up_all"
