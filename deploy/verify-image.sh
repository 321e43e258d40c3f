#!/usr/bin/env bash
# Verify the container image for real, on a machine with no image registry:
#
#   sudo deploy/verify-image.sh            # binary: $TICKERD_BIN or target/debug/tickerd
#
# 1. starts a private Docker engine (Debian's docker.io `dockerd`, own socket,
#    data root, exec root, pidfile and bridge) that is stopped again at exit;
# 2. makes the base image the Dockerfile's runtime stage starts FROM:
#    `debootstrap --variant=minbase bookworm` then `docker import`
#    (debian:bookworm-slim cannot be pulled here; minbase is the same release);
# 3. builds the Dockerfile's runtime stage (taken from the Dockerfile as it is:
#    only FROM and the builder's COPY are replaced) with the tickerd binary
#    built on the host (same Debian release and glibc), so the release build of
#    the builder stage (30-40 min on 2 cores) is not repeated here;
# 4. runs it against a Redis (a redis-server started here, on the bridge) with
#    a bind-mounted plugins directory, and checks: /healthz through the
#    published port, /readyz with redis up, a data answer cached in Redis, the
#    process running as uid 10001 (read from /proc of its host PID), the
#    HEALTHCHECK reported healthy by `docker inspect`, a plugin edited in the
#    bind-mounted directory reloaded, and `docker stop` draining and exiting 0.
#
# Needs root, dockerd, debootstrap and network access to a Debian mirror (the
# runtime stage runs apt-get); VERIFY_ROOTFS=DIR reuses a minbase tree made
# by hand instead of running debootstrap again. Caches nothing: everything lives in one temp
# directory removed at exit. Exit 0 when every check passed, 1 when one
# failed, 3 when it cannot run here (no root, no dockerd, the engine does not
# start): the reason is printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BIN=${TICKERD_BIN:-target/debug/tickerd}
BASE_TAG=tickerd-verify-base:bookworm
IMAGE_TAG=tickerd:verify

log() { printf '%s\n' "$*"; }
cannot() { log "verify-image: SKIPPED: $*"; exit 3; }
fails=0
ok() { log "ok    $*"; }
fail() { log "FAIL  $*"; fails=$((fails + 1)); }

[ "$(id -u)" = 0 ] || cannot "needs root (dockerd, debootstrap)"
command -v dockerd >/dev/null || cannot "dockerd is not installed (apt-get install docker.io)"
command -v docker >/dev/null || cannot "the docker CLI is not installed (apt-get install docker.io)"
command -v debootstrap >/dev/null || cannot "debootstrap is not installed (apt-get install debootstrap)"
command -v redis-server >/dev/null || cannot "redis-server is not installed"
[ -x "$BIN" ] || cannot "no tickerd binary at $BIN (cargo build, or set TICKERD_BIN)"

# Short paths: dockerd's sockets under the exec root must fit in 108 bytes.
WORK=$(mktemp -d /tmp/tkv.XXXXXX)
BRIDGE="tkv$$"
BRIDGE_NET="172.31.$(( $$ % 200 + 20 )).1/24"
BRIDGE_IP=${BRIDGE_NET%/*}
export DOCKER_HOST="unix://$WORK/docker.sock"
CONTAINER=""
REDIS_PID=""

cleanup() {
    set +e
    [ -n "$CONTAINER" ] && docker rm -f "$CONTAINER" >/dev/null 2>&1
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null
    if [ -f "$WORK/docker.pid" ]; then
        local pid
        pid=$(cat "$WORK/docker.pid")
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    fi
    ip link del "$BRIDGE" 2>/dev/null
    # dockerd leaves its iptables rules behind: remove those naming our bridge.
    for table in nat filter; do
        iptables -t "$table" -S 2>/dev/null | grep -- "$BRIDGE" | sed 's/^-A /-D /' \
            | while read -r rule; do eval iptables -t "$table" "$rule" 2>/dev/null; done
    done
    # Leftover overlay or netns mounts of the engine, then the directory.
    grep -o " $WORK[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_until() { # what, seconds, command...
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

log "== private Docker engine"
ip link add "$BRIDGE" type bridge && ip addr add "$BRIDGE_NET" dev "$BRIDGE" && ip link set "$BRIDGE" up \
    || cannot "cannot create the bridge $BRIDGE (no CAP_NET_ADMIN?)"
mkdir -p "$WORK/data" "$WORK/exec"
dockerd --host "$DOCKER_HOST" --data-root "$WORK/data" --exec-root "$WORK/exec" \
    --pidfile "$WORK/docker.pid" --bridge "$BRIDGE" >"$WORK/dockerd.log" 2>&1 &
if ! wait_until "dockerd" 60 docker info; then
    tail -n 20 "$WORK/dockerd.log"
    cannot "dockerd did not start (log above)"
fi
log "dockerd $(docker version --format '{{.Server.Version}}' 2>/dev/null) on $DOCKER_HOST, bridge $BRIDGE ($BRIDGE_NET)"

log "== base image: debootstrap --variant=minbase bookworm"
t0=$SECONDS
if [ -n "${VERIFY_ROOTFS:-}" ] && [ -x "$VERIFY_ROOTFS/usr/bin/apt-get" ]; then
    # A minbase tree made earlier by hand (debootstrap takes minutes); used as is.
    ROOTFS=$VERIFY_ROOTFS
    log "using the debootstrap tree in $ROOTFS (VERIFY_ROOTFS)"
else
    ROOTFS="$WORK/rootfs"
    if ! debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK/debootstrap.log"
        cannot "debootstrap failed (log above; is $MIRROR reachable?)"
    fi
fi
tar -C "$ROOTFS" -c . | docker import - "$BASE_TAG" >/dev/null
[ "$ROOTFS" = "$WORK/rootfs" ] && rm -rf "$ROOTFS"
log "base image $BASE_TAG in $((SECONDS - t0))s"

log "== build the Dockerfile's runtime stage"
CTX="$WORK/ctx"
mkdir -p "$CTX"
# The runtime stage as written: from the last FROM to the end.
runtime_from=$(grep -n '^FROM ' Dockerfile | tail -n1 | cut -d: -f1)
tail -n +"$runtime_from" Dockerfile \
    | sed -e "1s|^FROM .*|FROM $BASE_TAG|" \
          -e 's|^COPY --from=[^ ]* /out/tickerd /usr/local/bin/tickerd$|COPY tickerd /usr/local/bin/tickerd|' \
    >"$CTX/Dockerfile"
grep -q '^COPY tickerd /usr/local/bin/tickerd$' "$CTX/Dockerfile" \
    || { fail "the runtime stage copies /out/tickerd from the builder (Dockerfile changed?)"; exit 1; }
cp "$BIN" "$CTX/tickerd"
strip --strip-debug "$CTX/tickerd" 2>/dev/null || true
cp -r plugins "$CTX/plugins"
t0=$SECONDS
# Host network for the build only: the runtime stage's apt-get reaches the mirror.
if docker build --network host -t "$IMAGE_TAG" "$CTX" >"$WORK/build.log" 2>&1; then
    ok "runtime stage built on $BASE_TAG in $((SECONDS - t0))s"
else
    tail -n 30 "$WORK/build.log"
    fail "docker build of the runtime stage"
    exit 1
fi

# The binary is linked against shared libraries (libssl3 for librdkafka's
# TLS among them): one missing in the runtime stage fails here, by name.
if out=$(docker run --rm --entrypoint /usr/local/bin/tickerd "$IMAGE_TAG" --version 2>&1); then
    ok "the binary starts in the image ($out: its shared libraries are installed)"
else
    fail "the binary starts in the image: $out"
    exit 1
fi

log "== run it against Redis"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
redis-server --bind "$BRIDGE_IP" --port "$RPORT" --protected-mode no --save '' --appendonly no \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
wait_until "redis-server" 20 redis-cli -h "$BRIDGE_IP" -p "$RPORT" ping || { fail "redis-server started"; exit 1; }
PLUGINS="$WORK/plugins"
mkdir -p "$PLUGINS"
cp plugins/synthetic.lua "$PLUGINS/"
probe() {
    cat >"$PLUGINS/probe.lua" <<EOF
return {
  description = "$1",
  ttl = "1h",
  fetch = function(req)
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1, volume = 1 } } }
  end,
}
EOF
}
probe "probe, first version"
chmod 0755 "$PLUGINS"
chmod 0644 "$PLUGINS"/*.lua
HPORT=$(free_port)
CONTAINER=$(docker run -d --name "tkv-$$" -p "127.0.0.1:$HPORT:8000" \
    -e "REDIS_URL=redis://$BRIDGE_IP:$RPORT/0" -e TICKERD_ADMIN_TOKEN=verify-token \
    -v "$PLUGINS:/plugins:ro" "$IMAGE_TAG")
BASE="http://127.0.0.1:$HPORT"

if wait_until "/healthz through the published port" 30 curl -fsS "$BASE/healthz"; then
    ok "/healthz answers 200 through the published port 127.0.0.1:$HPORT"
else
    fail "/healthz through the published port"
    docker logs "$CONTAINER" 2>&1 | tail -n 20
fi
ready=$(curl -fsS "$BASE/readyz" || true)
case "$ready" in
*'"redis":"up"'*) ok "/readyz: $ready" ;;
*) fail "/readyz reports redis up (got: $ready)" ;;
esac
q="/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31"
first=$(curl -fsS -o /dev/null -w '%{http_code}' -D - "$BASE$q" | tr -d '\r' | grep -i '^x-cache:' || true)
second=$(curl -fsS -o /dev/null -D - "$BASE$q" | tr -d '\r' | grep -i '^x-cache:' || true)
keys=$(redis-cli -h "$BRIDGE_IP" -p "$RPORT" --scan --pattern 'tickerd:*' | wc -l)
if [ "${first,,}" = "x-cache: miss" ] && [ "${second,,}" = "x-cache: hit" ] && [ "$keys" -gt 0 ]; then
    ok "data answer: MISS then HIT, $keys key(s) in Redis"
else
    fail "data answer cached in Redis (first '$first', second '$second', $keys keys)"
fi

hostpid=$(docker inspect -f '{{.State.Pid}}' "$CONTAINER")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$hostpid/status" 2>/dev/null || echo "?")
comm=$(cat "/proc/$hostpid/comm" 2>/dev/null || echo "?")
if [ "$uid" = 10001 ] && [ "$comm" = tickerd ]; then
    ok "PID 1 of the container is tickerd (host PID $hostpid) running as uid $uid"
else
    fail "the container's process is tickerd as uid 10001 (got $comm as uid $uid)"
fi

health() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER")" = healthy ]; }
if wait_until "HEALTHCHECK healthy" 90 health; then
    ok "HEALTHCHECK: docker inspect says healthy ($(docker inspect -f '{{(index .State.Health.Log 0).ExitCode}}' "$CONTAINER") = exit code of the first check)"
else
    fail "HEALTHCHECK healthy (status $(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER"))"
fi

version() { curl -fsS "$BASE/v1/plugins/probe" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["version"], d["description"])'; }
v1=$(version || echo "none")
probe "probe, edited on the host"
reloaded() { version | grep -q 'edited on the host'; }
if wait_until "the edited plugin reloaded" 30 reloaded; then
    ok "plugin edited in the bind-mounted directory reloaded (${v1%% *} -> $(version | cut -c1-12)...)"
else
    fail "plugin edited in the bind-mounted directory reloaded (still: $(version || true))"
fi

t0=$SECONDS
docker stop -t 40 "$CONTAINER" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
if [ "$code" = 0 ] && docker logs "$CONTAINER" 2>&1 | grep -q 'drained; bye'; then
    ok "docker stop: SIGTERM, drained, exit code 0 in $((SECONDS - t0))s"
else
    fail "docker stop drains and exits 0 (exit code $code)"
    docker logs "$CONTAINER" 2>&1 | tail -n 10
fi

if [ "$fails" -gt 0 ]; then
    log "verify-image: FAILED ($fails check(s))"
    exit 1
fi
log "verify-image: OK"
