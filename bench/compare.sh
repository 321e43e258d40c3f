#!/usr/bin/env bash
# Before/after in one run: bash bench/compare.sh OLD_BINARY NEW_BINARY
# Same redis-server, same plugins, alternating binaries (old, new, old, new)
# so machine noise hits both alike. Prints the hit-path rate and the refresh
# rates of synthetic and of bench/plugins/flat30.lua (the plugin-overhead figure).
# LOGS="warn info" by default; LOGS=warn halves the run.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1; NEW=$2; DURATION=${DURATION:-8s}; LOGS=${LOGS:-warn info}
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
mkdir -p "$WORK/plugins"; cp plugins/synthetic.lua bench/plugins/flat30.lua "$WORK/plugins/"
HIT="/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-24"
rps() { wrk "$@" | awk '/Requests\/sec/{print int($2)}'; }
round=0
for bin in "$OLD" "$NEW" "$OLD" "$NEW"; do
  round=$((round + 1))
  for log in $LOGS; do
    port=$(free_port)
    TICKERD_LOG=$log REDIS_URL="redis://127.0.0.1:$RPORT/0" "$bin" serve --listen "127.0.0.1:$port" \
      --plugins "$WORK/plugins" >/dev/null 2>&1 &
    pid=$!; PIDS+=($pid)
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
    curl -s "http://127.0.0.1:$port$HIT" >/dev/null
    wrk -t2 -c64 -d2s "http://127.0.0.1:$port$HIT" >/dev/null
    hit=$(rps -t2 -c64 -d"$DURATION" "http://127.0.0.1:$port$HIT")
    refresh() { # refresh PLUGIN: calls/s with a new key per request
      REFRESH_PLUGIN=$1 REFRESH_PREFIX=R$round$log REFRESH_END=2024-02-09 \
        rps -t2 -c64 -d"$DURATION" -s bench/wrk/refresh.lua "http://127.0.0.1:$port"
    }
    syn=$(refresh synthetic); flat=$(refresh flat30)
    printf '%-4s %-36s log=%-5s hit %7s req/s  synthetic %6s/s  flat30 %6s/s\n' "$round" "$(basename "$(dirname "$(dirname "$bin")")")/$(basename "$bin")" "$log" "$hit" "$syn" "$flat"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
