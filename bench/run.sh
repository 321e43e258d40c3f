#!/usr/bin/env bash
# Benchmarks tickerd on loopback against the same machine's raw Redis.
# Starts its own redis-server and release builds on free ports, prints a table.
# Usage: bash bench/run.sh            (DURATION=10s by default; e.g. DURATION=30s)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10s}
LOAD_REQUESTS=${LOAD_REQUESTS:-1000000}

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! have wrk; then as_root apt-get update -qq && as_root apt-get install -y -qq wrk >/dev/null; fi
have redis-server || { as_root apt-get update -qq && as_root apt-get install -y -qq redis-server >/dev/null; }

echo "building release binaries..." >&2
cargo build --release --quiet --bin tickerd --example loadgen
BIN=$ROOT/target/release/tickerd
LOADGEN=$ROOT/target/release/examples/loadgen

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
metric() { # metric URL NAME LABEL-SUBSTRING
  curl -s "$1/metrics" | awk -v n="$2" -v l="$3" 'index($0, n)==1 && index($0, l) {s+=$2} END {printf "%d", s}'
}
wait_ready() { for _ in $(seq 200); do curl -sf "$1/readyz" >/dev/null && return 0; sleep 0.05; done; echo "tickerd did not get ready" >&2; exit 1; }

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

PLUGINS=$WORK/plugins
mkdir -p "$PLUGINS"
cp plugins/synthetic.lua "$PLUGINS/"
cat > "$PLUGINS/storm.lua" <<'LUA'
-- 100 ms of work per fetch, no I/O: the miss storm's "plugin latency".
return {
  ttl = "1h",
  max_concurrency = 1024,
  fetch = function(req)
    local t = os.clock()
    while os.clock() - t < 0.1 do end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5, volume = 1 } } }
  end,
}
LUA
cp bench/plugins/flat30.lua "$PLUGINS/"
cat > "$WORK/reload.lua.template" <<'LUA'
return {
  ttl = "1h",
  fetch = function(req)
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 } }, meta = { v = "MARKER" } }
  end,
}
LUA
sed 's/MARKER/initial/' "$WORK/reload.lua.template" > "$PLUGINS/reload.lua"

start_daemon() { # start_daemon CONFIG-TOML -> sets DPID, DURL
  local port; port=$(free_port)
  printf '%s\n' "$1" > "$WORK/config.toml"
  TICKERD_LOG=${TICKERD_LOG:-info} REDIS_URL="redis://127.0.0.1:$RPORT/0" \
    "$BIN" serve --listen "127.0.0.1:$port" --plugins "$PLUGINS" --config "$WORK/config.toml" \
    >"$WORK/tickerd.log" 2>&1 &
  DPID=$!; PIDS+=($DPID)
  DURL="http://127.0.0.1:$port"
  wait_ready "$DURL"
}
stop_daemon() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; }
wrk_rps() { wrk "$@" | awk '/Requests\/sec/{print int($2)}'; }

# ~2 KB cached answer: 18 bars of synthetic AAPL.
HIT_PATH="/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-24"

# --- raw Redis GET of the same size ---------------------------------------
start_daemon "[redis]
key_prefix = \"bench\""
curl -s "$DURL$HIT_PATH" >/dev/null
SIZE=$(curl -s "$DURL$HIT_PATH" | wc -c)
redis-cli -p "$RPORT" set key:__rand_int__ "$(head -c "$SIZE" /dev/zero | tr '\0' x)" >/dev/null
REDIS_RPS=$(redis-benchmark -p "$RPORT" -t get -c 64 -d "$SIZE" -n 400000 --csv 2>/dev/null | awk -F'"' '/^"GET"/{print int($4)}')

# --- hit path, no L1 (every hit is a Redis GET) ------------------------------
wrk -t2 -c64 -d2s "$DURL$HIT_PATH" >/dev/null
HIT_RPS=$(wrk_rps -t2 -c64 -d"$DURATION" "$DURL$HIT_PATH")
HIT_RPS_QUIET=0
stop_daemon
TICKERD_LOG=warn start_daemon "[redis]
key_prefix = \"bench\""
curl -s "$DURL$HIT_PATH" >/dev/null
wrk -t2 -c64 -d2s "$DURL$HIT_PATH" >/dev/null
HIT_RPS_QUIET=$(wrk_rps -t2 -c64 -d"$DURATION" "$DURL$HIT_PATH")
stop_daemon

# --- hit path with the L1 -----------------------------------------------------
start_daemon "[redis]
key_prefix = \"bench\"
[cache]
l1_ttl = \"1s\""
for _ in $(seq 100); do curl -s "$DURL/v1/stats" | grep -q '"l1":"active"' && break; sleep 0.05; done
curl -s "$DURL$HIT_PATH" >/dev/null
wrk -t2 -c64 -d2s "$DURL$HIT_PATH" >/dev/null
L1_RPS=$(wrk_rps -t2 -c64 -d"$DURATION" "$DURL$HIT_PATH")
stop_daemon

# --- miss storm, plugin overhead, reload, memory (L1 off) ----------------------
start_daemon "[redis]
key_prefix = \"bench\""
# One storm on another cold key warms the daemon (1000 connections, thread
# caches), as the hit-path figures are taken after a warm-up too; then three
# measured storms, each on its own cold key.
"$LOADGEN" storm "$DURL/v1/data/storm/WARM?start=2024-01-02&end=2024-01-02" 1000 >/dev/null
CALLS0=$(metric "$DURL" plugin_fetch_duration_seconds_count 'plugin="storm"')
fetch_sum() { curl -s "$DURL/metrics" | awk '/^plugin_fetch_duration_seconds_sum\{plugin="storm"\}/{print $2}'; }
STORMS=()
for i in 1 2 3; do
  # Each storm beside its own fetch time: the plugin's busy loop counts
  # process CPU time (os.clock), so its wall time varies with the load.
  before=$(fetch_sum)
  out=$("$LOADGEN" storm "$DURL/v1/data/storm/COLD$i?start=2024-01-02&end=2024-01-02" 1000)
  own=$(python3 -c "print(f'{($(fetch_sum)-$before)*1000:.1f}')")
  STORMS+=("$out fetch_ms=$own")
done
STORM_CALLS=$(( $(metric "$DURL" plugin_fetch_duration_seconds_count 'plugin="storm"') - CALLS0 ))

calls_per_s() { # calls_per_s PLUGIN TICKER-PREFIX END: refresh=true on new keys for DURATION
  # A new key per request and per wrk thread (threads share no counter), so
  # no two requests coalesce and every request is one plugin call.
  local before after t0 t1
  before=$(metric "$DURL" plugin_fetch_duration_seconds_count "plugin=\"$1\"")
  t0=$(date +%s.%N)
  REFRESH_PLUGIN=$1 REFRESH_PREFIX=$2 REFRESH_END=$3 \
    wrk -t2 -c64 -d"$DURATION" -s bench/wrk/refresh.lua "$DURL" >/dev/null
  t1=$(date +%s.%N)
  after=$(metric "$DURL" plugin_fetch_duration_seconds_count "plugin=\"$1\"")
  python3 -c "print(int(($after-$before)/($t1-$t0)))"
}
CALLS_PER_S=$(calls_per_s synthetic R 2024-02-09)
FLAT_PER_S=$(calls_per_s flat30 F 2024-01-30)
BARS=$(curl -s "$DURL/v1/data/synthetic/R0x1?start=2024-01-01&end=2024-02-09" | python3 -c 'import json,sys;print(len(json.load(sys.stdin)["bars"]))')

cp "$WORK/reload.lua.template" "$PLUGINS/reload.lua"
RELOAD=$("$LOADGEN" reload "$PLUGINS/reload.lua" "$DURL/v1/data/reload/AAPL?start=2024-01-02&end=2024-01-02&refresh=true" 20 2>&1 | tail -1)

cat > "$WORK/keys.lua" <<'LUA'
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/data/synthetic/K" .. math.random(1, 100000) .. "?start=2024-01-01&end=2024-01-12")
end
LUA
BEFORE=$(metric "$DURL" stock_requests_total 'plugin="synthetic"')
RSS_BEFORE_LOAD=$(rss_kib "$DPID")
while :; do
  wrk -t2 -c64 -d10s -s "$WORK/keys.lua" "$DURL" >/dev/null
  DONE=$(( $(metric "$DURL" stock_requests_total 'plugin="synthetic"') - BEFORE ))
  [ "$DONE" -ge "$LOAD_REQUESTS" ] && break
done
RSS_AFTER_LOAD=$(rss_kib "$DPID")
MEM_ENTRIES=$(curl -s "$DURL/v1/stats" | python3 -c 'import json,sys;print(json.load(sys.stdin)["memory_entries"])')
stop_daemon

# --- the Redis side of a refresh alone -------------------------------------------
# Lock, write with its stale copy, index sets, release, through tickerd's own
# cache code with no HTTP and no Lua: the ceiling the plugin-overhead figure
# cannot pass on this machine. Its keys are dropped afterwards (~1 GB).
CEILING=$("$LOADGEN" cache-writes "redis://127.0.0.1:$RPORT/0" 8 | awk -F= '/calls_per_s/{print $NF}')
redis-cli -p "$RPORT" flushall >/dev/null

# --- idle RSS with the bundled plugins only -------------------------------------
mkdir -p "$WORK/bundled"; cp plugins/*.lua "$WORK/bundled/"
PORT=$(free_port)
REDIS_URL="redis://127.0.0.1:$RPORT/0" "$BIN" serve --listen "127.0.0.1:$PORT" --plugins "$WORK/bundled" >/dev/null 2>&1 &
IPID=$!; PIDS+=($IPID)
wait_ready "http://127.0.0.1:$PORT"
sleep 1
IDLE_RSS=$(rss_kib "$IPID")
kill "$IPID"

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
echo
echo "tickerd benchmark  ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), wrk -t2 -c64 -d$DURATION, answer $SIZE bytes)"
printf '%-44s %14s %14s %8s\n' "measure" "tickerd" "raw redis" "ratio"
printf '%-44s %14s %14s %8s\n' "hit path, req/s (access log on)" "$HIT_RPS" "$REDIS_RPS" "$(ratio "$HIT_RPS" "$REDIS_RPS")"
printf '%-44s %14s %14s %8s\n' "hit path, req/s (TICKERD_LOG=warn)" "$HIT_RPS_QUIET" "$REDIS_RPS" "$(ratio "$HIT_RPS_QUIET" "$REDIS_RPS")"
printf '%-44s %14s %14s %8s\n' "hit path with L1 (l1_ttl=1s), req/s" "$L1_RPS" "$REDIS_RPS" "$(ratio "$L1_RPS" "$REDIS_RPS")"
for s in "${STORMS[@]}"; do printf '%-44s %14s\n' "miss storm: 1000 concurrent, one cold key" "$s"; done
printf "%-44s %14s   (3 storms; fetch_ms: that storm's one plugin call)\n" "miss storm: plugin calls" "$STORM_CALLS"
printf '%-44s %14s   (flat30: 30 bars, no I/O, refresh=true)\n' "plugin overhead: calls/s" "$FLAT_PER_S"
printf '%-44s %14s %14s %8s   (Redis side of a refresh alone: loadgen cache-writes)\n' "plugin overhead vs its Redis-side ceiling" "$FLAT_PER_S" "$CEILING" "$(ratio "$FLAT_PER_S" "$CEILING")"
printf '%-44s %14s   (synthetic: %s bars computed per call)\n' "synthetic plugin, refresh: calls/s" "$CALLS_PER_S" "$BARS"
printf '%-44s %s\n' "reload: save to serve" "$RELOAD"
printf '%-44s %11s KiB\n' "idle RSS, bundled plugins" "$IDLE_RSS"
printf '%-44s %11s KiB -> %s KiB  (%s memory entries, bound 10000)\n' "RSS before/after ${LOAD_REQUESTS} req over 100k keys" "$RSS_BEFORE_LOAD" "$RSS_AFTER_LOAD" "$MEM_ENTRIES"
