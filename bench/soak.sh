#!/usr/bin/env bash
# Soak: mixed load on loopback for SOAK_SECONDS (default 600) while Redis is
# restarted every RESTART_EVERY seconds (default 60). Prints requests,
# failures (must be 0) and RSS at start and end (must stay flat).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SOAK_SECONDS=${SOAK_SECONDS:-600}
RESTART_EVERY=${RESTART_EVERY:-60}

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
have wrk || { as_root apt-get update -qq && as_root apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin tickerd
BIN=$ROOT/target/release/tickerd

WORK=$(mktemp -d)
RPID=""; TPID=""
cleanup() { [ -n "$TPID" ] && kill "$TPID" 2>/dev/null; [ -n "$RPID" ] && kill "$RPID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
start_redis() {
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  RPID=$!
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
}

RPORT=$(free_port); PORT=$(free_port)
start_redis
mkdir -p "$WORK/plugins"; cp plugins/synthetic.lua "$WORK/plugins/"
printf '[redis]\nop_timeout = "100ms"\nbackoff = "500ms"\n[cache]\nmemory_max_entries = 5000\n' > "$WORK/config.toml"
TICKERD_LOG=warn REDIS_URL="redis://127.0.0.1:$RPORT/0" "$BIN" serve --listen "127.0.0.1:$PORT" \
  --plugins "$WORK/plugins" --config "$WORK/config.toml" >"$WORK/tickerd.log" 2>&1 &
TPID=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
BASE="http://127.0.0.1:$PORT"

# Mixed load: mostly hits over 2000 keys, some new keys, some refreshes.
cat > "$WORK/mixed.lua" <<'LUA'
math.randomseed(7)
local n = 0
request = function()
  n = n + 1
  local r = math.random(100)
  local path
  if r <= 80 then
    path = "/v1/data/synthetic/H" .. math.random(1, 2000) .. "?start=2024-01-01&end=2024-01-31"
  elseif r <= 95 then
    path = "/v1/data/synthetic/N" .. n .. "?start=2024-03-01&end=2024-03-10"
  else
    path = "/v1/data/synthetic/H" .. math.random(1, 2000) .. "?start=2024-01-01&end=2024-01-31&refresh=true"
  end
  return wrk.format("GET", path)
end
LUA

# Warm up, then take the starting RSS.
wrk -t2 -c32 -d10s -s "$WORK/mixed.lua" "$BASE" >/dev/null
RSS_START=$(rss_kib "$TPID")

wrk -t2 -c32 -d"${SOAK_SECONDS}s" --timeout 5s -s "$WORK/mixed.lua" "$BASE" > "$WORK/wrk.txt" &
WRK=$!
START=$(date +%s); RESTARTS=0; INVALIDATIONS=0; RSS_SERIES=""; NEXT_SAMPLE=0
while kill -0 "$WRK" 2>/dev/null; do
  sleep 5
  curl -s -X DELETE "$BASE/v1/cache?ticker=H$((RANDOM % 2000 + 1))" >/dev/null && INVALIDATIONS=$((INVALIDATIONS + 1))
  NOW=$(date +%s)
  if [ $((NOW - START)) -ge "$NEXT_SAMPLE" ]; then
    RSS_SERIES="$RSS_SERIES $(( $(rss_kib "$TPID") / 1024 ))"
    NEXT_SAMPLE=$((NEXT_SAMPLE + 60))
  fi
  if [ $(( (NOW - START) / RESTART_EVERY )) -gt "$RESTARTS" ] && [ $((NOW - START)) -lt $((SOAK_SECONDS - 10)) ]; then
    kill "$RPID"; wait "$RPID" 2>/dev/null || true
    sleep 2
    start_redis
    RESTARTS=$((RESTARTS + 1))
  fi
done
wait "$WRK" || true
RSS_END=$(rss_kib "$TPID")

REQUESTS=$(awk '/requests in/{print $1}' "$WORK/wrk.txt")
NON2XX=$(awk '/Non-2xx/{print $NF}' "$WORK/wrk.txt"); NON2XX=${NON2XX:-0}
SOCKET=$(awk -F'[ ,]+' '/Socket errors/{print $4+$6+$8+$10}' "$WORK/wrk.txt"); SOCKET=${SOCKET:-0}
echo
echo "soak: ${SOAK_SECONDS}s mixed load (80% hits / 15% new keys / 5% refresh), $RESTARTS redis restarts, $INVALIDATIONS invalidations"
echo "requests:  $REQUESTS"
echo "failures:  $((NON2XX + SOCKET))  (non-2xx $NON2XX, socket errors $SOCKET)"
echo "RSS:       start ${RSS_START} KiB, end ${RSS_END} KiB"
echo "RSS MiB each minute:${RSS_SERIES}"
grep -E "Latency|Requests/sec" "$WORK/wrk.txt"
