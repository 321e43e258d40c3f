#!/usr/bin/env bash
# Benchmarks tickerd on loopback beside the tools users would pick instead,
# in one run, and prints a table of figures and ratios:
#   - redis-benchmark GET of a value the size of the answer (the Redis ceiling),
#   - nginx serving the same answer as a static file (the HTTP ceiling),
#   - Varnish serving it from its cache (in front of that nginx),
#   - nginx with the Lua module building the same 30 bars per request in a
#     content_by_lua_block (the scripted-fetch peer, OpenResty-style),
# plus the overlapping-trace replay (bench/trace.py): upstream calls and days
# asked, range-aware against a per-answer cache.
# Starts its own redis-server, release build, nginx and varnishd on free
# loopback ports with their own config and temp dirs, and stops them by PID.
# Installs wrk, nginx-light, libnginx-mod-http-lua, lua-cjson and varnish with
# apt-get when missing (root or sudo). A run that had any failure (non-2xx
# answer, socket error, wrong trace answer) prints FAILED instead of its
# figure, and the script exits 1.
# Usage: bash bench/run.sh     (DURATION=10s LOAD_REQUESTS=1000000 by default;
#        BENCH_TSV=FILE appends the table's rows to FILE, tab-separated)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh
DURATION=${DURATION:-10s}
LOAD_REQUESTS=${LOAD_REQUESTS:-1000000}
NGINX_MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}

have wrk || apt_install wrk
have redis-server || apt_install redis-server
have redis-benchmark || apt_install redis-tools
have nginx || apt_install nginx-light
[ -f "$NGINX_MODULES/ngx_http_lua_module.so" ] || apt_install libnginx-mod-http-lua
dpkg -s lua-cjson >/dev/null 2>&1 || apt_install lua-cjson
have varnishd || apt_install varnish

# BENCH_BIN_DIR=target/debug (with DURATION=1s LOAD_REQUESTS=1000) checks the
# script itself quickly, with binaries already built there; its figures mean nothing.
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN_DIR=$(cd "$BENCH_BIN_DIR" && pwd)
else
  echo "building release binaries..." >&2
  cargo build --release --quiet --bin tickerd --example loadgen
  BIN_DIR=$ROOT/target/release
fi
BIN=$BIN_DIR/tickerd
LOADGEN=$BIN_DIR/examples/loadgen

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
metric() { # metric URL NAME LABEL-SUBSTRING
  curl -sf "$1/metrics" | awk -v n="$2" -v l="$3" 'index($0, n)==1 && index($0, l) {s+=$2} END {printf "%d", s}'
}

# --- failures -----------------------------------------------------------------
# A figure from a run with failures is no figure: it prints FAILED, the
# reasons are listed after the table, and the script exits 1.
FAILED=()
# measure VAR LABEL WRK-ARGS...: runs wrk; sets VAR to its req/s, or FAILED.
measure() {
  local var=$1 label=$2 out failures status=0
  shift 2
  out="$WORK/wrk-$var.txt"
  wrk "$@" >"$out" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    FAILED+=("$label: wrk exited with status $status: $(tail -n 1 "$out")")
    printf -v "$var" FAILED
    return
  fi
  failures=$(wrk_failures "$out") || bench_die "$label: could not read wrk's output ($out)"
  if [ "$failures" -gt 0 ]; then
    FAILED+=("$label: $(wrk_failure_text "$out")")
    printf -v "$var" FAILED
  else
    printf -v "$var" %s "$(wrk_rps "$out")"
  fi
}
# warm LABEL WRK-ARGS...: a short unmeasured run before LABEL; its failures count too.
warm() { local label=$1; shift; measure WARM_RPS "warm-up of $label" -t2 -c64 -d2s "$@"; }

# --- redis and the daemon --------------------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
RPID=$!; PIDS+=("$RPID")
wait_for redis-server "$RPID" "$WORK/redis.log" redis-cli -p "$RPORT" ping

PLUGINS=$WORK/plugins
mkdir -p "$PLUGINS"
cp plugins/synthetic.lua bench/plugins/flat30.lua bench/plugins/trace.lua "$PLUGINS/"
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
cat > "$WORK/reload.lua.template" <<'LUA'
return {
  ttl = "1h",
  fetch = function(req)
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 } }, meta = { v = "MARKER" } }
  end,
}
LUA
sed 's/MARKER/initial/' "$WORK/reload.lua.template" > "$PLUGINS/reload.lua"

# The trace's counting upstream (bench/trace.py), for bench/plugins/trace.lua.
python3 bench/trace.py upstream "$WORK/trace.port" >"$WORK/trace-upstream.log" 2>&1 &
UPID=$!; PIDS+=("$UPID")
wait_for "trace upstream" "$UPID" "$WORK/trace-upstream.log" test -s "$WORK/trace.port"
export TRACE_UPSTREAM="http://127.0.0.1:$(cat "$WORK/trace.port")"

start_daemon() { # start_daemon CONFIG-TOML -> sets DPID, DURL
  local port; port=$(free_port)
  printf '%s\n' "$1" > "$WORK/config.toml"
  TICKERD_LOG=${TICKERD_LOG:-info} REDIS_URL="redis://127.0.0.1:$RPORT/0" \
    "$BIN" serve --listen "127.0.0.1:$port" --plugins "$PLUGINS" --config "$WORK/config.toml" \
    >"$WORK/tickerd.log" 2>&1 &
  DPID=$!; PIDS+=("$DPID")
  DURL="http://127.0.0.1:$port"
  wait_for tickerd "$DPID" "$WORK/tickerd.log" curl -sf "$DURL/readyz"
}
stop_daemon() { stop_pid "$DPID"; }

# --- the peers: nginx (static, Lua) and Varnish ------------------------------------
# start_nginx NAME PROBE-PATH SERVER-BLOCK [MODULE...] -> sets NPID, NURL.
# Its own prefix, pid file, logs and temp dirs under $WORK; two workers (one
# per core, as tickerd's http_threads); access log on, buffered 64 KiB as
# tickerd's; keep-alive without a per-connection request limit (wrk's
# connections stay open, as they do with tickerd).
start_nginx() {
  local name=$1 probe=$2 server=$3 dir port m
  shift 3
  dir=$WORK/nginx-$name; port=$(free_port)
  mkdir -p "$dir/logs" "$dir/tmp" "$dir/root"
  {
    for m in "$@"; do echo "load_module $NGINX_MODULES/$m;"; done
    [ "$(id -u)" = 0 ] && echo "user root root;"
    cat <<NGINX
worker_processes $(nproc);
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log $dir/logs/access.log combined buffer=64k;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  open_file_cache max=16;
  server {
    listen 127.0.0.1:$port;
    root $dir/root;
    $server
  }
}
NGINX
  } > "$dir/nginx.conf"
  [ -f "$WORK/answer.json" ] && cp "$WORK/answer.json" "$dir/root/answer.json"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" >"$dir/logs/stderr.log" 2>&1 &
  NPID=$!; PIDS+=("$NPID")
  NURL="http://127.0.0.1:$port"
  wait_for "nginx ($name)" "$NPID" "$dir/logs/error.log" curl -sf "$NURL$probe"
}

# The scripted-fetch peer builds what bench/plugins/flat30.lua builds (30 bars
# from the request's start date) and answers it as JSON (lua-cjson), on the
# same paths as tickerd so bench/wrk/refresh.lua drives both.
LUA_SERVER='location /v1/data/ {
      default_type application/json;
      content_by_lua_block {
        local cjson = require "cjson"
        local y, m, d = (ngx.var.arg_start or ""):match("^(%d+)-(%d+)-(%d+)$")
        if not y then return ngx.exit(400) end
        local t0 = os.time({ year = tonumber(y), month = tonumber(m), day = tonumber(d), hour = 12 })
        local bars = {}
        for i = 0, 29 do
          local p = 100 + i
          bars[i + 1] = { date = os.date("%Y-%m-%d", t0 + i * 86400), open = p, high = p + 1, low = p - 1, close = p + 0.5, volume = 1000 + i }
        end
        ngx.say(cjson.encode({ plugin = "flat30", ticker = ngx.var.uri:match("([^/]+)$"), start = ngx.var.arg_start, ["end"] = ngx.var.arg_end, bars = bars }))
      }
    }'

# --- hit path, no L1 (every hit is a Redis GET), beside redis-benchmark --------------
# ~2 KB cached answer: 18 bars of synthetic AAPL.
HIT_PATH="/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-24"
start_daemon "[redis]
key_prefix = \"bench\""
curl -sf "$DURL$HIT_PATH" >/dev/null
curl -sf "$DURL$HIT_PATH" > "$WORK/answer.json"
SIZE=$(wc -c < "$WORK/answer.json")
redis-cli -p "$RPORT" set key:__rand_int__ "$(head -c "$SIZE" /dev/zero | tr '\0' x)" >/dev/null
REDIS_RPS=$(redis-benchmark -p "$RPORT" -t get -c 64 -d "$SIZE" -n 400000 --csv 2>/dev/null | awk -F'"' '/^"GET"/{print int($4)}')
[ -n "$REDIS_RPS" ] && [ "$REDIS_RPS" -gt 0 ] || { FAILED+=("redis-benchmark GET: no figure"); REDIS_RPS=FAILED; }
redis-cli -p "$RPORT" del key:__rand_int__ >/dev/null

warm "hit (Redis)" "$DURL$HIT_PATH"
measure HIT_RPS "hit (Redis)" -t2 -c64 -d"$DURATION" "$DURL$HIT_PATH"

# --- covered sub-range: random 24-day windows inside a year fetched once ---------------
curl -sf "$DURL/v1/data/synthetic/COV?start=2024-01-01&end=2024-12-31" >/dev/null
export SUBRANGE_PLUGIN=synthetic SUBRANGE_TICKER=COV
warm "covered sub-range" -s bench/wrk/subrange.lua "$DURL"
measure SUB_RPS "covered sub-range" -t2 -c64 -d"$DURATION" -s bench/wrk/subrange.lua "$DURL"

# --- partial: each request's last day is not stored yet ------------------------------
export PARTIAL_PLUGIN=synthetic PARTIAL_PREFIX=PW
warm "partial" -s bench/wrk/partial.lua "$DURL"
export PARTIAL_PREFIX=P
CALLS0=$(metric "$DURL" plugin_fetch_duration_seconds_count 'plugin="synthetic"')
measure PARTIAL_RPS "partial (one missing day)" -t2 -c64 -d"$DURATION" -s bench/wrk/partial.lua "$DURL"
PARTIAL_CALLS=$(($(metric "$DURL" plugin_fetch_duration_seconds_count 'plugin="synthetic"') - CALLS0))
PARTIAL_REQS=$(wrk_requests "$WORK/wrk-PARTIAL_RPS.txt" 2>/dev/null || echo 0)
# What these rows are, by one sample each: a window of the stored year never
# asked before, and a window one day later than a stored one.
xcache() { curl -sf -D - -o /dev/null "$DURL$1" | awk 'tolower($1) == "x-cache:" {print $2}' | tr -d '\r'; }
SAMPLE_SUB=$(xcache "/v1/data/synthetic/COV?start=2024-03-03&end=2024-03-20")
curl -sf "$DURL/v1/data/synthetic/PS?start=2024-01-01&end=2024-01-24" >/dev/null
SAMPLE_PARTIAL=$(xcache "/v1/data/synthetic/PS?start=2024-01-02&end=2024-01-25")
stop_daemon

TICKERD_LOG=warn start_daemon "[redis]
key_prefix = \"bench\""
curl -sf "$DURL$HIT_PATH" >/dev/null
warm "hit (Redis), quiet" "$DURL$HIT_PATH"
measure HIT_RPS_QUIET "hit (Redis), TICKERD_LOG=warn" -t2 -c64 -d"$DURATION" "$DURL$HIT_PATH"
stop_daemon

# --- hit path with the L1, beside nginx (static file) and Varnish --------------------
start_daemon "[redis]
key_prefix = \"bench\"
[cache]
l1_ttl = \"1s\""
for _ in $(seq 100); do curl -sf "$DURL/v1/stats" | grep -q '"l1":"active"' && break; sleep 0.05; done
curl -sf "$DURL$HIT_PATH" >/dev/null
warm "hit (L1)" "$DURL$HIT_PATH"
measure L1_RPS "hit (L1)" -t2 -c64 -d"$DURATION" "$DURL$HIT_PATH"
stop_daemon

start_nginx static /answer.json 'location = /answer.json { default_type application/json; }'
STATIC_PID=$NPID; STATIC_URL=$NURL
warm "nginx static" "$STATIC_URL/answer.json"
measure NGINX_RPS "nginx static file" -t2 -c64 -d"$DURATION" "$STATIC_URL/answer.json"

# Varnish in front of that nginx: every measured request is a cache hit (the
# object stays fresh for an hour, -t 3600). Its own working dir (-n), no
# management port (-T none), no privilege-dropping jail (-j none).
VPORT=$(free_port)
mkdir -p "$WORK/varnish"
varnishd -F -j none -n "$WORK/varnish" -a "127.0.0.1:$VPORT" -b "127.0.0.1:${STATIC_URL##*:}" \
  -s malloc,64m -t 3600 -T none >"$WORK/varnish.log" 2>&1 &
VPID=$!; PIDS+=("$VPID")
wait_for varnishd "$VPID" "$WORK/varnish.log" curl -sf "http://127.0.0.1:$VPORT/answer.json"
curl -sf -D - -o /dev/null "http://127.0.0.1:$VPORT/answer.json" | grep -qi '^x-varnish: [0-9]* [0-9]*' \
  || FAILED+=("Varnish: the second request of the answer was not a cache hit")
warm "Varnish" "http://127.0.0.1:$VPORT/answer.json"
measure VARNISH_RPS "Varnish cache hit" -t2 -c64 -d"$DURATION" "http://127.0.0.1:$VPORT/answer.json"
stop_pid "$VPID"
stop_pid "$STATIC_PID"

# --- miss storm, refresh (plugin overhead) beside nginx+Lua, reload, memory (L1 off) --
start_daemon "[redis]
key_prefix = \"bench\""
# One storm on another cold key warms the daemon (1000 connections, thread
# caches), as the hit-path figures are taken after a warm-up too; then three
# measured storms, each on its own cold key.
"$LOADGEN" storm "$DURL/v1/data/storm/WARM?start=2024-01-02&end=2024-01-02" 1000 >/dev/null
CALLS0=$(metric "$DURL" plugin_fetch_duration_seconds_count 'plugin="storm"')
fetch_sum() { curl -sf "$DURL/metrics" | awk '/^plugin_fetch_duration_seconds_sum\{plugin="storm"\}/{print $2}'; }
STORMS=()
for i in 1 2 3; do
  # Each storm beside its own fetch time: the plugin's busy loop counts
  # process CPU time (os.clock), so its wall time varies with the load.
  before=$(fetch_sum)
  out=$("$LOADGEN" storm "$DURL/v1/data/storm/COLD$i?start=2024-01-02&end=2024-01-02" 1000)
  own=$(python3 -c "print(f'{($(fetch_sum)-$before)*1000:.1f}')")
  case $out in *" ok=1000 "*) ;; *) FAILED+=("miss storm $i: not every request answered 200: $out") ;; esac
  STORMS+=("$out fetch_ms=$own")
done
STORM_CALLS=$(($(metric "$DURL" plugin_fetch_duration_seconds_count 'plugin="storm"') - CALLS0))

calls_per_s() { # calls_per_s VAR LABEL PLUGIN TICKER-PREFIX END: refresh=true on new keys for DURATION
  # A new key per request and per wrk thread (threads share no counter), so
  # no two requests coalesce and every request is one plugin call.
  local var=$1 label=$2 before after t0 t1
  before=$(metric "$DURL" plugin_fetch_duration_seconds_count "plugin=\"$3\"")
  export REFRESH_PLUGIN=$3 REFRESH_PREFIX=$4 REFRESH_END=$5
  t0=$(date +%s.%N)
  measure "$var" "$label" -t2 -c64 -d"$DURATION" -s bench/wrk/refresh.lua "$DURL"
  t1=$(date +%s.%N)
  after=$(metric "$DURL" plugin_fetch_duration_seconds_count "plugin=\"$3\"")
  [ "${!var}" = FAILED ] || printf -v "$var" %s "$(python3 -c "print(int(($after-$before)/($t1-$t0)))")"
}
calls_per_s CALLS_PER_S "synthetic refresh" synthetic R 2024-02-09
calls_per_s FLAT_PER_S "refresh of 30 bars (flat30)" flat30 F 2024-01-30
BARS=$(curl -sf "$DURL/v1/data/synthetic/R0x1?start=2024-01-01&end=2024-02-09" | python3 -c 'import json,sys;print(len(json.load(sys.stdin)["bars"]))')

start_nginx lua "/v1/data/flat30/PROBE?start=2024-01-01&end=2024-01-30&refresh=true" "$LUA_SERVER" \
  ndk_http_module.so ngx_http_lua_module.so
export REFRESH_PLUGIN=flat30 REFRESH_PREFIX=N REFRESH_END=2024-01-30
warm "nginx+Lua" -s bench/wrk/refresh.lua "$NURL"
measure LUA_RPS "nginx+Lua, 30 bars" -t2 -c64 -d"$DURATION" -s bench/wrk/refresh.lua "$NURL"
stop_pid "$NPID"

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
  measure LOAD_RPS "memory load over 100k keys" -t2 -c64 -d10s -s "$WORK/keys.lua" "$DURL"
  [ "$LOAD_RPS" != FAILED ] || break
  DONE=$(($(metric "$DURL" stock_requests_total 'plugin="synthetic"') - BEFORE))
  [ "$DONE" -ge "$LOAD_REQUESTS" ] && break
done
RSS_AFTER_LOAD=$(rss_kib "$DPID")
MEM_ENTRIES=$(curl -sf "$DURL/v1/stats" | python3 -c 'import json,sys;print(json.load(sys.stdin)["memory_entries"])')
stop_daemon

# --- the overlapping trace: upstream calls and days asked -------------------------------
# One request at a time (bench/trace.py), on a fresh key prefix, L1 off. The
# per-answer run gives every distinct range its own ticker name, so nothing is
# shared between ranges: the cache keyed by exact answer that issue 13 replaced.
start_daemon "[redis]
key_prefix = \"trace\""
TRACE_RANGE=$(python3 bench/trace.py replay "$DURL" "$TRACE_UPSTREAM" trace range) \
  || { FAILED+=("trace (range-aware): wrong answers, see above"); TRACE_RANGE="mode=range FAILED"; }
TRACE_ANSWER=$(python3 bench/trace.py replay "$DURL" "$TRACE_UPSTREAM" trace answer) \
  || { FAILED+=("trace (per-answer): wrong answers, see above"); TRACE_ANSWER="mode=answer FAILED"; }
TRACE_PLUGIN_CALLS=$(metric "$DURL" plugin_fetch_duration_seconds_count 'plugin="trace"')
stop_daemon
field() { # field LINE NAME
  printf '%s\n' "$1" | tr ' ' '\n' | awk -F= -v n="$2" '$1 == n {print $2; f=1} END {if (!f) print "FAILED"}'
}

# --- the Redis side of a refresh alone -------------------------------------------
# Lock, write with its stale copy, index sets, release, through tickerd's own
# cache code with no HTTP and no Lua: the ceiling the plugin-overhead figure
# cannot pass on this machine. Its keys are dropped afterwards (~1 GB).
# (Optional: "-" when this loadgen has no cache-writes mode.)
CEILING=$({ "$LOADGEN" cache-writes "redis://127.0.0.1:$RPORT/0" 8 2>"$WORK/cache-writes.log" || true; } | awk -F= '/calls_per_s/{print $NF}')
CEILING=${CEILING:--}
redis-cli -p "$RPORT" flushall >/dev/null

# --- idle RSS with the bundled plugins only -------------------------------------
mkdir -p "$WORK/bundled"; cp plugins/*.lua "$WORK/bundled/"
PORT=$(free_port)
REDIS_URL="redis://127.0.0.1:$RPORT/0" "$BIN" serve --listen "127.0.0.1:$PORT" --plugins "$WORK/bundled" >"$WORK/idle.log" 2>&1 &
IPID=$!; PIDS+=("$IPID")
wait_for "tickerd (bundled plugins)" "$IPID" "$WORK/idle.log" curl -sf "http://127.0.0.1:$PORT/readyz"
sleep 1
IDLE_RSS=$(rss_kib "$IPID")
stop_pid "$IPID"

# --- the table ----------------------------------------------------------------------
ratio() { # ratio A B: A/B, or "-" when either is not a figure
  case "$1$2" in *[!0-9.]* | "") echo "-" ;; *) python3 -c "print(f'{$1/$2:.2f}x')" ;; esac
}
row() { # row LABEL TICKERD PEER-NAME PEER RATIO TARGET; also tab-separated into $BENCH_TSV when set
  printf '%-40s %11s   %-22s %11s %7s   %s\n' "$@"
  [ -z "${BENCH_TSV:-}" ] || { local IFS=$'\t'; echo "$*" >> "$BENCH_TSV"; }
}
echo
echo "tickerd benchmark  ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), wrk -t2 -c64 -d$DURATION, answer $SIZE bytes)"
row "row" "tickerd" "peer" "peer" "ratio" "target"
row "hit (Redis), req/s, access log on" "$HIT_RPS" "redis-benchmark GET" "$REDIS_RPS" "$(ratio "$HIT_RPS" "$REDIS_RPS")" ">= 0.8x"
row "hit (Redis), req/s, TICKERD_LOG=warn" "$HIT_RPS_QUIET" "redis-benchmark GET" "$REDIS_RPS" "$(ratio "$HIT_RPS_QUIET" "$REDIS_RPS")" ">= 0.8x"
row "covered sub-range (Redis), req/s" "$SUB_RPS" "redis-benchmark GET" "$REDIS_RPS" "$(ratio "$SUB_RPS" "$REDIS_RPS")" ">= 0.8x"
row "hit (L1, l1_ttl=1s), req/s" "$L1_RPS" "nginx static file" "$NGINX_RPS" "$(ratio "$L1_RPS" "$NGINX_RPS")" ">= 1.0x"
row "" "" "Varnish cache hit" "$VARNISH_RPS" "$(ratio "$L1_RPS" "$VARNISH_RPS")" ">= 1.5x"
row "refresh of 30 bars (flat30), calls/s" "$FLAT_PER_S" "nginx+Lua, 30 bars" "$LUA_RPS" "$(ratio "$FLAT_PER_S" "$LUA_RPS")" ">= 0.5x"
row "partial (one missing day), req/s" "$PARTIAL_RPS" "nginx+Lua, 30 bars" "$LUA_RPS" "$(ratio "$PARTIAL_RPS" "$LUA_RPS")" \
  "$PARTIAL_CALLS plugin calls for $PARTIAL_REQS requests"
TR_REQ=$(field "$TRACE_RANGE" requests)
row "trace: upstream calls / requests" "$(field "$TRACE_RANGE" calls)/$TR_REQ" "per-answer cache" \
  "$(field "$TRACE_ANSWER" calls)/$(field "$TRACE_ANSWER" requests)" \
  "$(field "$TRACE_RANGE" calls_ratio)x" "<= 0.55x (per-answer: $(field "$TRACE_ANSWER" calls_ratio)x)"
row "trace: days asked / union of days" "$(field "$TRACE_RANGE" days_asked)/$(field "$TRACE_RANGE" union_days)" "per-answer cache" \
  "$(field "$TRACE_ANSWER" days_asked)/$(field "$TRACE_ANSWER" union_days)" \
  "$(field "$TRACE_RANGE" days_ratio)x" "<= 1.2x (per-answer: $(field "$TRACE_ANSWER" days_ratio)x)"
echo "(one sample each: a new window inside the stored year answered X-Cache: ${SAMPLE_SUB:-?}; a window one day past a stored one: ${SAMPLE_PARTIAL:-?})"
echo
for s in "${STORMS[@]}"; do printf '%-44s %14s\n' "miss storm: 1000 concurrent, one cold key" "$s"; done
printf "%-44s %14s   (3 storms; fetch_ms: that storm's one plugin call)\n" "miss storm: plugin calls" "$STORM_CALLS"
printf '%-44s %14s %14s %8s   (Redis side of a refresh alone: loadgen cache-writes)\n' "plugin overhead vs its Redis-side ceiling" "$FLAT_PER_S" "$CEILING" "$(ratio "$FLAT_PER_S" "$CEILING")"
printf '%-44s %14s   (synthetic: %s bars computed per call)\n' "synthetic plugin, refresh: calls/s" "$CALLS_PER_S" "$BARS"
printf '%-44s %s\n' "reload: save to serve" "$RELOAD"
printf '%-44s %11s KiB\n' "idle RSS, bundled plugins" "$IDLE_RSS"
printf '%-44s %11s KiB -> %s KiB  (%s memory entries, bound 10000)\n' "RSS before/after ${LOAD_REQUESTS} req over 100k keys" "$RSS_BEFORE_LOAD" "$RSS_AFTER_LOAD" "$MEM_ENTRIES"
printf '%-44s %s plugin calls (both trace runs; one upstream call each)\n' "trace: plugin calls" "$TRACE_PLUGIN_CALLS"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo
  echo "FAILED: these runs had failures, so their figures are not printed:" >&2
  printf '  - %s\n' "${FAILED[@]}" >&2
  exit 1
fi
