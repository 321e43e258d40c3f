#!/usr/bin/env bash
# Profiles one hot path of the release build with perf (cpu-clock sampling,
# which works on VMs without hardware counters) and prints where time goes:
# per thread, then the top symbols.
# Usage: bash bench/profile.sh [refresh|hit|l1] [SECONDS]   (default: refresh 10)
#   refresh: flat30 with refresh=true and a new key per request (plugin overhead)
#   hit:     one cached ~2 KB answer (hit path, no L1)
#   l1:      the same answer served from the in-process L1 (l1_ttl = 1s)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
MODE=${1:-refresh}; SECS=${2:-10}
have perf || apt_install linux-perf
have wrk || apt_install wrk
cargo build --release --quiet --bin tickerd
BIN=$PWD/target/release/tickerd
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
RPORT=$(free_port); PORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 & RPID=$!; PIDS+=($RPID)
wait_for redis-server "$RPID" "$WORK/redis.log" redis-cli -p "$RPORT" ping
mkdir -p "$WORK/plugins"; cp plugins/synthetic.lua bench/plugins/flat30.lua "$WORK/plugins/"
if [ "$MODE" = l1 ]; then printf '[cache]\nl1_ttl = "1s"\n' > "$WORK/config.toml"; else : > "$WORK/config.toml"; fi
TICKERD_LOG=warn REDIS_URL="redis://127.0.0.1:$RPORT/0" "$BIN" serve --listen "127.0.0.1:$PORT" \
  --plugins "$WORK/plugins" --config "$WORK/config.toml" >"$WORK/tickerd.log" 2>&1 & DPID=$!; PIDS+=($DPID)
wait_for tickerd "$DPID" "$WORK/tickerd.log" curl -sf "http://127.0.0.1:$PORT/readyz"
URL="http://127.0.0.1:$PORT"
case $MODE in
  refresh) export REFRESH_PLUGIN=flat30 REFRESH_PREFIX=P; ARGS=(-s bench/wrk/refresh.lua "$URL") ;;
  hit|l1) [ "$MODE" = hit ] || for _ in $(seq 100); do curl -s "$URL/v1/stats" | grep -q '"l1":"active"' && break; sleep 0.05; done
       curl -s "$URL/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-24" >/dev/null
       ARGS=("$URL/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-24") ;;
  *) echo "usage: $0 [refresh|hit|l1] [SECONDS]" >&2; exit 2 ;;
esac
wrk -t2 -c64 -d2s "${ARGS[@]}" >/dev/null
wrk -t2 -c64 -d"$((SECS + 2))s" "${ARGS[@]}" > "$WORK/wrk.txt" &
WPID=$!; PIDS+=($WPID)
sleep 1
OUT=${PERF_OUT:-$WORK/perf.data}
perf record -q -e cpu-clock -F 1999 -g -o "$OUT" -p "$DPID" -- sleep "$SECS" 2>/dev/null
wait "$WPID" || true
FAILURES=$(wrk_failures "$WORK/wrk.txt")
[ "$FAILURES" = 0 ] || echo "the profiled run had failures ($(wrk_failure_text "$WORK/wrk.txt")): the profile shows an error path" >&2
grep 'Requests/sec' "$WORK/wrk.txt"
report() { perf report -q -i "$OUT" --no-children --stdio -g none "$@" 2>/dev/null | grep '%' | sed 's/ *-* *-* *$//'; }
echo "--- share of samples per thread"
report --sort comm | head -20
echo "--- top symbols (self)"
report --sort comm,symbol | head -"${TOP:-60}"
