# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run): free ports, waits that fail
# loudly, wrk output parsing and failure counting. bench/test-parsers.sh
# checks the parsers against captured wrk outputs in bench/fixtures/.

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
bench_die() { echo "bench: $*" >&2; exit 1; }

# apt_install PKG...: for the tools a bench needs, as .ci/run does.
apt_install() {
  echo "bench: installing $* with apt-get" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || bench_die "could not install $* (needs root or sudo and Debian's apt); install them and run again"
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# wait_for WHAT PID LOG CMD...: runs CMD every 50 ms until it succeeds. Fails
# the script at once if process PID (a child of this shell) exited, with its
# exit status and the tail of LOG, or after WAIT_SECONDS (default 30).
wait_for() {
  local what=$1 pid=$2 log=$3 deadline rc
  shift 3
  deadline=$(($(date +%s) + ${WAIT_SECONDS:-30}))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0; wait "$pid" 2>/dev/null || rc=$?
      echo "bench: $what (pid $pid) exited with status $rc before it was ready" >&2
      [ -s "$log" ] && tail -n 20 "$log" | sed 's/^/  | /' >&2
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "bench: $what (pid $pid) not ready after ${WAIT_SECONDS:-30}s" >&2
      [ -s "$log" ] && tail -n 20 "$log" | sed 's/^/  | /' >&2
      exit 1
    fi
    sleep 0.05
  done
}

# --- wrk output -----------------------------------------------------------------
# wrk prints, when they happened:
#   "  Socket errors: connect N, read N, write N, timeout N"
#   "  Non-2xx or 3xx responses: N"      (wrk counts status >= 400 here)
# Each parser prints one integer or fails (status 2) naming what it expected.

wrk_requests() { # "  52133 requests in 3.12s, 111.72MB read"
  awk '$2 == "requests" && $3 == "in" { print $1; found = 1 }
       END { if (!found) { print "no \"N requests in\" line in wrk output" > "/dev/stderr"; exit 2 } }' "$1"
}

wrk_rps() { # "Requests/sec:  16693.61", as a whole number
  awk '$1 == "Requests/sec:" && $2 ~ /^[0-9.]+$/ { printf "%d\n", $2; found = 1 }
       END { if (!found) { print "no \"Requests/sec:\" line in wrk output" > "/dev/stderr"; exit 2 } }' "$1"
}

wrk_socket_errors() { # the sum of connect, read, write and timeout; 0 when the line is absent
  awk '$1 == "Socket" && $2 == "errors:" {
         n = 0
         for (i = 3; i < NF; i += 2) {
           v = $(i + 1); sub(/,$/, "", v)
           if ($i !~ /^(connect|read|write|timeout)$/ || v !~ /^[0-9]+$/) bad = 1
           sum += v; n++
         }
         if (n != 4) bad = 1
       }
       END {
         if (bad) { print "unrecognised \"Socket errors:\" line in wrk output" > "/dev/stderr"; exit 2 }
         print sum + 0
       }' "$1"
}

wrk_non2xx() { # 0 when the line is absent
  awk '/^ *Non-2xx or 3xx responses:/ { if ($NF !~ /^[0-9]+$/) bad = 1; sum += $NF }
       END {
         if (bad) { print "unrecognised \"Non-2xx\" line in wrk output" > "/dev/stderr"; exit 2 }
         print sum + 0
       }' "$1"
}

# wrk_failures FILE: "N" (socket errors + non-2xx answers), or fails.
wrk_failures() {
  local s n
  s=$(wrk_socket_errors "$1") || return 2
  n=$(wrk_non2xx "$1") || return 2
  echo $((s + n))
}

# wrk_failure_text FILE: a short account of a run's failures.
wrk_failure_text() {
  local detail
  detail=$(grep -m1 'Socket errors:' "$1" | sed 's/^ *Socket errors: */: /' || true)
  echo "$(wrk_non2xx "$1") non-2xx answers, $(wrk_socket_errors "$1") socket errors$detail, of $(wrk_requests "$1") requests"
}
