#!/usr/bin/env bash
# Checks bench/lib.sh's wrk parsers against wrk outputs captured on this kind
# of machine (bench/fixtures/). Run by tests/bench_scripts.rs, so `cargo test`
# and CI run it too. Prints one line per check; exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")"
# shellcheck source=bench/lib.sh
. ./lib.sh
FAILS=0
check() { # check WHAT EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "ok   $1 = $3"; else echo "FAIL $1: expected $2, got $3"; FAILS=$((FAILS + 1)); fi
}
F=fixtures
# A clean run: no error lines at all.
check "clean: requests" 52133 "$(wrk_requests $F/wrk-clean.txt)"
check "clean: req/s" 16693 "$(wrk_rps $F/wrk-clean.txt)"
check "clean: socket errors" 0 "$(wrk_socket_errors $F/wrk-clean.txt)"
check "clean: non-2xx" 0 "$(wrk_non2xx $F/wrk-clean.txt)"
check "clean: failures" 0 "$(wrk_failures $F/wrk-clean.txt)"
# A server that died mid-run: read 9, write 11107, timeout 2; 5 answers of 503.
check "server died: socket errors" 11118 "$(wrk_socket_errors $F/wrk-socket-errors.txt)"
check "server died: non-2xx" 5 "$(wrk_non2xx $F/wrk-socket-errors.txt)"
check "server died: failures" 11123 "$(wrk_failures $F/wrk-socket-errors.txt)"
check "server died: req/s" 3 "$(wrk_rps $F/wrk-socket-errors.txt)"
# A slow server past wrk's --timeout: timeout 20; 29 answers of 503.
check "timeouts: socket errors" 20 "$(wrk_socket_errors $F/wrk-timeouts-non2xx.txt)"
check "timeouts: failures" 49 "$(wrk_failures $F/wrk-timeouts-non2xx.txt)"
# Output the parsers do not recognise is an error, never a silent 0.
TMP=$(mktemp); trap 'rm -f "$TMP"' EXIT
sed 's/write 11107/write lots/' $F/wrk-socket-errors.txt > "$TMP"
check "garbled socket line: status" 2 "$(wrk_socket_errors "$TMP" >/dev/null 2>&1; echo $?)"
check "garbled socket line: failures status" 2 "$(wrk_failures "$TMP" >/dev/null 2>&1; echo $?)"
: > "$TMP"
check "empty output: req/s status" 2 "$(wrk_rps "$TMP" >/dev/null 2>&1; echo $?)"
check "empty output: requests status" 2 "$(wrk_requests "$TMP" >/dev/null 2>&1; echo $?)"
[ "$FAILS" = 0 ] || { echo "$FAILS parser check(s) failed"; exit 1; }
echo "all parser checks passed"
