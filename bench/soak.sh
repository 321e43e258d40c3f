#!/usr/bin/env bash
# Soak: mixed load on loopback for SOAK_SECONDS (default 600) while Redis is
# restarted every RESTART_EVERY seconds (default 60) and a ticker invalidated
# every 5 s. Prints requests, failures and RSS at start and end (must stay
# flat). Exits 1 on any failure: a non-2xx answer, a wrk socket error
# (connect, read, write, timeout), a failed invalidation, a daemon that died.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh
SOAK_SECONDS=${SOAK_SECONDS:-600}
RESTART_EVERY=${RESTART_EVERY:-60}

have wrk || apt_install wrk
# BENCH_BIN_DIR=target/debug checks the script quickly with a binary built there.
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN=$(cd "$BENCH_BIN_DIR" && pwd)/tickerd
else
  cargo build --release --quiet --bin tickerd
  BIN=$ROOT/target/release/tickerd
fi

WORK=$(mktemp -d)
RPID=""; TPID=""
cleanup() { [ -n "$TPID" ] && kill "$TPID" 2>/dev/null; [ -n "$RPID" ] && kill "$RPID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
start_redis() {
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
  RPID=$!
  wait_for redis-server "$RPID" "$WORK/redis.log" redis-cli -p "$RPORT" ping
}

RPORT=$(free_port); PORT=$(free_port)
start_redis
mkdir -p "$WORK/plugins"; cp plugins/synthetic.lua "$WORK/plugins/"
printf '[redis]\nop_timeout = "100ms"\nbackoff = "500ms"\n[cache]\nmemory_max_entries = 5000\n' > "$WORK/config.toml"
TICKERD_LOG=warn REDIS_URL="redis://127.0.0.1:$RPORT/0" "$BIN" serve --listen "127.0.0.1:$PORT" \
  --plugins "$WORK/plugins" --config "$WORK/config.toml" >"$WORK/tickerd.log" 2>&1 &
TPID=$!
wait_for tickerd "$TPID" "$WORK/tickerd.log" curl -sf "http://127.0.0.1:$PORT/readyz"
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
wrk -t2 -c32 -d10s -s "$WORK/mixed.lua" "$BASE" > "$WORK/warmup.txt"
WARMUP_FAILURES=$(wrk_failures "$WORK/warmup.txt")
RSS_START=$(rss_kib "$TPID")

wrk -t2 -c32 -d"${SOAK_SECONDS}s" --timeout 5s -s "$WORK/mixed.lua" "$BASE" > "$WORK/wrk.txt" &
WRK=$!
START=$(date +%s); RESTARTS=0; INVALIDATIONS=0; FAILED_INVALIDATIONS=0; RSS_SERIES=""; NEXT_SAMPLE=0
while kill -0 "$WRK" 2>/dev/null; do
  sleep 5
  if curl -sf -m 5 -X DELETE "$BASE/v1/cache?ticker=H$((RANDOM % 2000 + 1))" >/dev/null; then
    INVALIDATIONS=$((INVALIDATIONS + 1))
  else
    FAILED_INVALIDATIONS=$((FAILED_INVALIDATIONS + 1))
  fi
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
WRK_STATUS=0; wait "$WRK" || WRK_STATUS=$?
kill -0 "$TPID" 2>/dev/null || { tail -n 20 "$WORK/tickerd.log" >&2; bench_die "tickerd died during the soak"; }
RSS_END=$(rss_kib "$TPID")

REQUESTS=$(wrk_requests "$WORK/wrk.txt")
NON2XX=$(wrk_non2xx "$WORK/wrk.txt")
SOCKET=$(wrk_socket_errors "$WORK/wrk.txt")
FAILURES=$((NON2XX + SOCKET + FAILED_INVALIDATIONS + WARMUP_FAILURES))
echo
echo "soak: ${SOAK_SECONDS}s mixed load (80% hits / 15% new keys / 5% refresh), $RESTARTS redis restarts, $INVALIDATIONS invalidations"
echo "requests:  $REQUESTS"
echo "failures:  $FAILURES  (non-2xx $NON2XX, socket errors $SOCKET, failed invalidations $FAILED_INVALIDATIONS, warm-up $WARMUP_FAILURES)"
grep -m1 'Socket errors' "$WORK/wrk.txt" || true
echo "RSS:       start ${RSS_START} KiB, end ${RSS_END} KiB"
echo "RSS MiB each minute:${RSS_SERIES}"
grep -E "Latency|Requests/sec" "$WORK/wrk.txt"
[ "$WRK_STATUS" = 0 ] || bench_die "wrk exited with status $WRK_STATUS"
if [ "$FAILURES" -gt 0 ]; then
  echo "soak FAILED: $FAILURES failures" >&2
  exit 1
fi
