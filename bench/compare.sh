#!/usr/bin/env bash
# Before/after in one run: bash bench/compare.sh OLD_BINARY NEW_BINARY
# Same redis-server, same plugins, alternating binaries (old, new, old, new)
# so machine noise hits both alike. Prints the hit-path rate and the refresh
# rates of synthetic and of bench/plugins/flat30.lua (the plugin-overhead figure).
# LOGS="warn info" by default; LOGS=warn halves the run. A figure from a wrk
# run with failures (non-2xx answers, socket errors) prints as FAILED, and the
# script exits 1 at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
OLD=$1; NEW=$2; DURATION=${DURATION:-8s}; LOGS=${LOGS:-warn info}
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 & RPID=$!; PIDS+=($RPID)
wait_for redis-server "$RPID" "$WORK/redis.log" redis-cli -p "$RPORT" ping
mkdir -p "$WORK/plugins"; cp plugins/synthetic.lua bench/plugins/flat30.lua "$WORK/plugins/"
HIT="/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-24"
FAILED=0
rps() { # req/s of one wrk run, or FAILED (and the reason on stderr)
  local out failures
  out=$(mktemp -p "$WORK")
  wrk "$@" >"$out" 2>&1 || { echo "wrk failed: $(tail -n 1 "$out")" >&2; echo FAILED; return; }
  failures=$(wrk_failures "$out") || { echo FAILED; return; }
  if [ "$failures" -gt 0 ]; then echo "$(wrk_failure_text "$out")" >&2; echo FAILED; else wrk_rps "$out"; fi
}
round=0
for bin in "$OLD" "$NEW" "$OLD" "$NEW"; do
  round=$((round + 1))
  for log in $LOGS; do
    port=$(free_port)
    TICKERD_LOG=$log REDIS_URL="redis://127.0.0.1:$RPORT/0" "$bin" serve --listen "127.0.0.1:$port" \
      --plugins "$WORK/plugins" >"$WORK/tickerd.log" 2>&1 &
    pid=$!; PIDS+=($pid)
    wait_for "$bin" "$pid" "$WORK/tickerd.log" curl -sf "http://127.0.0.1:$port/readyz"
    curl -s "http://127.0.0.1:$port$HIT" >/dev/null
    wrk -t2 -c64 -d2s "http://127.0.0.1:$port$HIT" >/dev/null
    hit=$(rps -t2 -c64 -d"$DURATION" "http://127.0.0.1:$port$HIT")
    refresh() { # refresh PLUGIN: calls/s with a new key per request
      REFRESH_PLUGIN=$1 REFRESH_PREFIX=R$round$log REFRESH_END=2024-02-09 \
        rps -t2 -c64 -d"$DURATION" -s bench/wrk/refresh.lua "http://127.0.0.1:$port"
    }
    syn=$(refresh synthetic); flat=$(refresh flat30)
    printf '%-4s %-36s log=%-5s hit %7s req/s  synthetic %6s/s  flat30 %6s/s\n' "$round" "$(basename "$(dirname "$(dirname "$bin")")")/$(basename "$bin")" "$log" "$hit" "$syn" "$flat"
    case "$hit $syn $flat" in *FAILED*) FAILED=$((FAILED + 1)) ;; esac
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
[ "$FAILED" = 0 ] || bench_die "$FAILED rounds had failed runs (FAILED above); their figures are not figures"
