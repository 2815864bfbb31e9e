#!/usr/bin/env bash
# The keepers scripts/bench-watch.sh compares `dockroute watch` with, run in the lab's host
# namespace by scripts/bench_watch.py (argument: monitor | poll). Both keep the manual recipe's
# one route in main and check the kernel's route the way a person would (`ip route get`):
#   monitor  a shell loop driven by `ip monitor route`: every route event re-checks
#   poll     a check every 5 seconds (what `minikube tunnel` does)
set -u
ROUTE=(172.17.0.0/16 via 192.168.99.100 dev vboxnet0)
ok() { ip route get 172.17.0.2 2>/dev/null | grep -q "via 192.168.99.100 dev vboxnet0"; }
case ${1:-} in
monitor)
    ip route replace "${ROUTE[@]}"
    ip monitor route | while read -r _; do ok || ip route replace "${ROUTE[@]}"; done
    ;;
poll)
    while :; do
        ok || ip route replace "${ROUTE[@]}"
        sleep 5
    done
    ;;
*)
    echo "usage: bench-keepers.sh monitor|poll" >&2
    exit 2
    ;;
esac
