# syntax=docker/dockerfile:1
#
# tickerd container image.
#
#   docker build -t tickerd .
#   docker run --rm -p 8000:8000 tickerd            # bundled synthetic plugin, in-process cache
#   docker compose up                               # with Redis, Prometheus and Grafana
#
# Two stages: a Rust builder (dependencies cached in their own layer, so editing
# src/ rebuilds only tickerd) and a small Debian runtime that runs as a non-root
# user.

############################################################################
# Builder
############################################################################
FROM rust:1.95-slim-bookworm AS builder

# mlua's vendored Lua 5.4, ring, jemalloc and librdkafka (the Kafka sink,
# bundled by rdkafka: configure + make) are C built here. librdkafka's TLS and
# SASL SCRAM use Debian's OpenSSL (rdkafka feature "ssl"), found through
# pkg-config; tickerd's own TLS (Redis, plugin HTTPS) is rustls + ring.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# 1. Dependencies only: the real manifest and lock file with a placeholder
#    main. This layer is reused until Cargo.toml or Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && cargo build --release --locked \
 && rm -rf src

# 2. The real sources. COPY keeps the build context's modification times, which
#    can be older than the placeholder build above: touch them so cargo is sure
#    to rebuild tickerd itself instead of keeping the placeholder binary.
COPY src ./src
RUN find src -type f -exec touch {} + \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/tickerd /out/tickerd

############################################################################
# Runtime
############################################################################
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="tickerd" \
      org.opencontainers.image.description="Hosts Lua market-data fetcher plugins behind one shared Redis cache" \
      org.opencontainers.image.licenses="MIT"

# ca-certificates: plugins fetch over HTTPS. curl: the HEALTHCHECK below.
# libssl3: the OpenSSL librdkafka is linked against (Kafka over TLS/SASL).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tickerd \
 && useradd --system --uid 10001 --gid tickerd --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tickerd

COPY --from=builder /out/tickerd /usr/local/bin/tickerd
# Plugins stay owned by root: tickerd only reads them. docker-compose.yml mounts
# ./plugins over this directory (read-only) for hot reload.
COPY plugins/ /plugins/

ENV TICKERD_PLUGINS_DIR=/plugins \
    TICKERD_LISTEN=0.0.0.0:8000

# Numeric ids so Kubernetes' runAsNonRoot can verify them (10001 = tickerd).
USER 10001:10001
EXPOSE 8000

# Liveness only (/readyz reports Redis and plugin state). The port is taken
# from TICKERD_LISTEN; if you pass --listen instead, override this check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${TICKERD_LISTEN##*:}/healthz" || exit 1

# Exec form, no shell wrapper: tickerd is PID 1 and receives SIGTERM itself,
# drains requests in flight (drain_timeout, 30s by default) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tickerd"]
CMD ["serve"]
