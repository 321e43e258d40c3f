#!/usr/bin/env bash
# Before/after in one run: bash bench/compare.sh OLD_BINARY NEW_BINARY
# Same redis-server, same plugins, alternating binaries (old, new, old, new)
# so machine noise hits both alike. Prints hit-path and refresh rates.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1; NEW=$2; DURATION=${DURATION:-8s}
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
mkdir -p "$WORK/plugins"; cp plugins/synthetic.lua "$WORK/plugins/"
cat > "$WORK/refresh.lua" <<'LUA'
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args) counter = 0 end
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/data/synthetic/" .. prefix .. tid .. "x" .. counter .. "?start=2024-01-01&end=2024-02-09&refresh=true")
end
LUA
HIT="/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-24"
rps() { wrk "$@" | awk '/Requests\/sec/{print int($2)}'; }
round=0
for bin in "$OLD" "$NEW" "$OLD" "$NEW"; do
  round=$((round + 1))
  for log in warn info; do
    port=$(free_port)
    TICKERD_LOG=$log REDIS_URL="redis://127.0.0.1:$RPORT/0" "$bin" serve --listen "127.0.0.1:$port" \
      --plugins "$WORK/plugins" >/dev/null 2>&1 &
    pid=$!; PIDS+=($pid)
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
    curl -s "http://127.0.0.1:$port$HIT" >/dev/null
    wrk -t2 -c64 -d2s "http://127.0.0.1:$port$HIT" >/dev/null
    hit=$(rps -t2 -c64 -d"$DURATION" "http://127.0.0.1:$port$HIT")
    sed "s/prefix/\"R$round$log\"/" "$WORK/refresh.lua" > "$WORK/r.lua"
    ref=$(rps -t2 -c64 -d"$DURATION" -s "$WORK/r.lua" "http://127.0.0.1:$port")
    printf '%-4s %-40s log=%-5s hit %8s req/s   refresh %7s calls/s\n' "$round" "$(basename "$(dirname "$(dirname "$bin")")")/$(basename "$bin")" "$log" "$hit" "$ref"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
