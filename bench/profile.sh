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
MODE=${1:-refresh}; SECS=${2:-10}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v perf >/dev/null || { as_root apt-get update -qq && as_root apt-get install -y -qq linux-perf >/dev/null; }
command -v wrk >/dev/null || { as_root apt-get update -qq && as_root apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin tickerd
BIN=$PWD/target/release/tickerd
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RPORT=$(free_port); PORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
mkdir -p "$WORK/plugins"; cp plugins/synthetic.lua bench/plugins/flat30.lua "$WORK/plugins/"
if [ "$MODE" = l1 ]; then printf '[cache]\nl1_ttl = "1s"\n' > "$WORK/config.toml"; else : > "$WORK/config.toml"; fi
TICKERD_LOG=warn REDIS_URL="redis://127.0.0.1:$RPORT/0" "$BIN" serve --listen "127.0.0.1:$PORT" \
  --plugins "$WORK/plugins" --config "$WORK/config.toml" >/dev/null 2>&1 & DPID=$!; PIDS+=($DPID)
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
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
grep 'Requests/sec' "$WORK/wrk.txt"
report() { perf report -q -i "$OUT" --no-children --stdio -g none "$@" 2>/dev/null | grep '%' | sed 's/ *-* *-* *$//'; }
echo "--- share of samples per thread"
report --sort comm | head -20
echo "--- top symbols (self)"
report --sort comm,symbol | head -"${TOP:-60}"
