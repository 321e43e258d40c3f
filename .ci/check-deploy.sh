#!/usr/bin/env bash
# Validate the deployment files without a Docker engine:
#   Dockerfile, .dockerignore, docker-compose.yml, tickerd.env.example,
#   prometheus.yml, deploy/grafana/** (provisioning and the tickerd dashboard).
#
#   bash .ci/check-deploy.sh
#
# What it does:
#   - parses every YAML file with PyYAML and docker-compose.yml's services and
#     keys against what the README promises (and that each bind-mounted path exists),
#     including the optional `kafka` profile (broker + tickerd-producer and its
#     config deploy/kafka/tickerd.toml; tickerd itself loads that file in
#     `cargo test --lib`);
#   - parses the Dockerfile with the `dockerfile` package (BuildKit's own parser),
#     or a small fallback parser, and checks stages, layer order, exec-form
#     ENTRYPOINT/CMD, a non-root USER, HEALTHCHECK and ENV;
#   - checks the Grafana dashboard: JSON, datasource and PromQL target on every
#     panel, metric names against those registered in src/metrics/mod.rs;
#   - runs `promtool check config prometheus.yml`, and `promtool check rules`
#     over the dashboard's queries so every PromQL expression is parsed by
#     Prometheus itself. promtool comes from Debian's `prometheus` package
#     (only the promtool binary is unpacked; no daemon is installed or started).
#
# Idempotent: tools are installed only when missing (apt-get as root, or
# through sudo). Exit 0 when every check passed, 1 otherwise; a tool that is
# missing and cannot be installed (promtool, PyYAML) is a failure, not a skip.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

have_py_module() { "$1" -c "import $2" >/dev/null 2>&1; }
# apt-get needs root: run it directly as root, otherwise through sudo (as .ci/run does).
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
        apt_updated=1
    fi
}

section "tools"
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    log "FAIL: python3 is required"
    exit 1
fi
if ! have_py_module "$PY" yaml; then
    log "PyYAML missing: pip install pyyaml"
    "$PY" -m pip install -q --disable-pip-version-check pyyaml >/dev/null 2>&1 || true
fi
if ! have_py_module "$PY" yaml; then
    log "pip could not install PyYAML: apt-get install python3-yaml"
    apt_update_once
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null 2>&1 || true
    if ! have_py_module "$PY" yaml && have_py_module /usr/bin/python3 yaml; then
        PY=/usr/bin/python3
    fi
fi
if ! have_py_module "$PY" yaml; then
    log "FAIL: PyYAML is not available (pip install pyyaml, or apt-get install python3-yaml)"
    exit 1
fi
log "python: $("$PY" --version 2>&1), PyYAML $("$PY" -c 'import yaml; print(yaml.__version__)')"

# The Dockerfile parser used by BuildKit, as a Python package (wheel with the Go
# parser inside). Optional: without it a simpler built-in parser is used.
if ! have_py_module "$PY" dockerfile; then
    "$PY" -m pip install -q --disable-pip-version-check dockerfile >/dev/null 2>&1 || true
fi
if have_py_module "$PY" dockerfile; then
    log "Dockerfile parser: dockerfile (BuildKit's parser)"
else
    log "Dockerfile parser: built-in fallback (pip package 'dockerfile' not available)"
fi

# promtool: on PATH, or unpacked from Debian's prometheus package. Installing
# that package would also start a Prometheus daemon from its postinst, so only
# the promtool binary is extracted from the .deb.
PROMTOOL=$(command -v promtool 2>/dev/null || true)
CACHE_BIN=${XDG_CACHE_HOME:-$HOME/.cache}/tickerd-ci/bin
if [ -z "$PROMTOOL" ] && [ -x "$CACHE_BIN/promtool" ]; then
    PROMTOOL=$CACHE_BIN/promtool
fi
if [ -z "$PROMTOOL" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    log "promtool missing: unpacking it from Debian's prometheus package"
    mkdir -p "$WORK/deb"
    chmod 0777 "$WORK/deb"
    if ! (cd "$WORK/deb" && apt-get download -qq prometheus >/dev/null 2>&1); then
        apt_update_once
        (cd "$WORK/deb" && apt-get download -qq prometheus >/dev/null 2>&1) || true
    fi
    deb=$(find "$WORK/deb" -maxdepth 1 -name 'prometheus_*.deb' | head -n1)
    if [ -n "$deb" ]; then
        mkdir -p "$WORK/x"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK/x" ./usr/bin/promtool 2>/dev/null || true
        if [ -x "$WORK/x/usr/bin/promtool" ]; then
            if [ -w /usr/local/bin ]; then
                install -m 0755 "$WORK/x/usr/bin/promtool" /usr/local/bin/promtool
                PROMTOOL=/usr/local/bin/promtool
            else
                mkdir -p "$CACHE_BIN"
                install -m 0755 "$WORK/x/usr/bin/promtool" "$CACHE_BIN/promtool"
                PROMTOOL=$CACHE_BIN/promtool
            fi
        fi
    fi
fi
if [ -n "$PROMTOOL" ]; then
    log "promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n1))"
else
    log "promtool: not available (apt-get download prometheus failed); the promtool checks will FAIL"
fi

section "static checks (docker-compose.yml, Dockerfile, prometheus.yml, Grafana)"
RULES_FILE="$WORK/dashboard-queries.rules.yml"
export RULES_FILE
set +e
"$PY" - <<'PY'
import json
import os
import re
import shlex
import sys

import yaml

failures = []
passed = 0


def check(cond, what):
    global passed
    if cond:
        passed += 1
        print(f"ok    {what}")
    else:
        failures.append(what)
        print(f"FAIL  {what}")
    return cond


def load_yaml(path):
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        check(False, f"{path} exists")
    except yaml.YAMLError as e:
        check(False, f"{path} is valid YAML: {e}")
    return None


def seconds(v):
    m = re.fullmatch(r"\s*(?:(\d+)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", str(v))
    if not m or not any(m.groups()):
        return None
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)


# ---------------------------------------------------------------- Dockerfile
def parse_dockerfile(path):
    """[(cmd, flags, is_json, value)] using BuildKit's parser when installed."""
    try:
        import dockerfile  # type: ignore
        return [(c.cmd.upper(), tuple(c.flags), bool(c.json), tuple(c.value))
                for c in dockerfile.parse_file(path)]
    except ImportError:
        pass
    out, buf = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        buf = ""
        cmd, rest = word.upper(), rest.strip()
        flags = []
        while cmd in ("COPY", "ADD", "RUN", "FROM", "HEALTHCHECK") and rest.startswith("--"):
            f, _, rest = rest.partition(" ")
            flags.append(f)
            rest = rest.strip()
        is_json, value = False, None
        if cmd in ("ENTRYPOINT", "CMD", "RUN", "SHELL") and rest.startswith("["):
            try:
                value, is_json = tuple(json.loads(rest)), True
            except ValueError:
                pass
        if value is None:
            if cmd == "ENV":
                parts = shlex.split(rest)
                if parts and "=" not in parts[0]:
                    value = (parts[0], " ".join(parts[1:]))
                else:
                    value = tuple(x for p in parts for x in p.split("=", 1))
            elif cmd == "HEALTHCHECK":
                kind, _, r = rest.partition(" ")
                value = (kind.upper(), r.strip()) if r else (kind.upper(),)
            elif cmd in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
                value = (rest,)
            else:
                value = tuple(shlex.split(rest))
        out.append((cmd, tuple(flags), is_json, value))
    return out


print("-- Dockerfile")
instrs = []
try:
    instrs = parse_dockerfile("Dockerfile")
    check(True, "Dockerfile parses")
except Exception as e:  # noqa: BLE001
    check(False, f"Dockerfile parses: {e}")

stages = []
for ins in instrs:
    if ins[0] == "FROM":
        stages.append([ins])
    elif stages:
        stages[-1].append(ins)
check(len(stages) >= 2, f"multi-stage build ({len(stages)} stages)")
if len(stages) >= 2:
    builder, runtime = stages[0], stages[-1]
    fv = builder[0][3]
    check(fv[0] == "rust:1.95-slim-bookworm" and len(fv) == 3 and fv[1].upper() == "AS",
          f"builder stage FROM rust:1.95-slim-bookworm AS <name> (got {' '.join(fv)})")
    builder_name = fv[2] if len(fv) == 3 else None
    check(runtime[0][3][0] == "debian:bookworm-slim",
          f"runtime stage FROM debian:bookworm-slim (got {' '.join(runtime[0][3])})")

    # dependency-caching layer order in the builder
    def idx(stage, pred):
        for i, ins in enumerate(stage):
            if pred(ins):
                return i
        return -1

    copy_manifest = idx(builder, lambda i: i[0] == "COPY" and "Cargo.toml" in i[3] and "Cargo.lock" in i[3])
    builds = [i for i, ins in enumerate(builder)
              if ins[0] == "RUN" and "cargo build" in " ".join(ins[3]) and "--release" in " ".join(ins[3])]
    copy_src = idx(builder, lambda i: i[0] == "COPY" and i[3] and i[3][0].rstrip("/") == "src")
    check(copy_manifest >= 0, "builder copies Cargo.toml and Cargo.lock on their own")
    check(copy_src >= 0, "builder copies src/")
    check(len(builds) >= 2 and copy_manifest < builds[0] < copy_src < builds[-1],
          "dependency layer: cargo build --release after the manifest copy and again after COPY src")
    check(any("--locked" in " ".join(builder[i][3]) for i in builds), "cargo build uses --locked")
    dummy = " ".join(builder[builds[0]][3]) if builds else ""
    check("fn main" in dummy and "src/main.rs" in dummy, "dependency layer builds a placeholder main")

    # librdkafka is built with OpenSSL (rdkafka feature "ssl", Kafka over
    # TLS/SASL): the builder needs its headers and pkg-config, the runtime
    # the shared library.
    builder_runs = " ".join(" ".join(i[3]) for i in builder if i[0] == "RUN")
    for pkg in ("pkg-config", "libssl-dev"):
        check(re.search(rf"apt-get install[^&;]*(?<![\w-]){re.escape(pkg)}(?![\w-])", builder_runs) is not None,
              f"builder installs {pkg} (librdkafka's OpenSSL)")
    runs = " ".join(" ".join(i[3]) for i in runtime if i[0] == "RUN")
    check(re.search(r"apt-get install[^&;]*\bca-certificates\b", runs) is not None
          and re.search(r"apt-get install[^&;]*\bcurl\b", runs) is not None,
          "runtime installs ca-certificates and curl")
    check(re.search(r"apt-get install[^&;]*\blibssl3\b", runs) is not None,
          "runtime installs libssl3 (tickerd links librdkafka's OpenSSL)")
    check("rm -rf /var/lib/apt/lists" in runs, "runtime cleans apt lists")
    check(re.search(r"useradd\b[^&;]*\btickerd\b", runs) is not None, "runtime creates user tickerd")

    users = [i[3][0] for i in runtime if i[0] == "USER"]
    last_user = users[-1] if users else None
    check(last_user is not None and last_user.split(":")[0] not in ("root", "0", ""),
          f"final USER is not root (USER {last_user})")
    if last_user and last_user.split(":")[0].isdigit():
        uid = last_user.split(":")[0]
        check(re.search(rf"useradd\b[^&;]*--uid {uid}\b[^&;]*\btickerd\b", runs) is not None,
              f"numeric USER {uid} is the tickerd user created in the image")

    copies = [i for i in runtime if i[0] == "COPY"]
    check(any(f"--from={builder_name}" in i[1] and i[3][-1] == "/usr/local/bin/tickerd" for i in copies),
          "binary copied from the builder to /usr/local/bin/tickerd")
    check(any(i[3][0].rstrip("/") == "plugins" and i[3][-1].rstrip("/") == "/plugins" for i in copies),
          "plugins copied to /plugins")

    env = {}
    for i in runtime:
        if i[0] == "ENV":
            v = i[3]
            env.update({v[k]: v[k + 1] for k in range(0, len(v) - 1, 2)})
    check(env.get("TICKERD_PLUGINS_DIR") == "/plugins", "ENV TICKERD_PLUGINS_DIR=/plugins")
    check(env.get("TICKERD_LISTEN") == "0.0.0.0:8000", "ENV TICKERD_LISTEN=0.0.0.0:8000")
    exposed = [p for i in runtime if i[0] == "EXPOSE" for p in i[3]]
    check("8000" in exposed or "8000/tcp" in exposed, "EXPOSE 8000")

    hc = [i for i in runtime if i[0] == "HEALTHCHECK"]
    check(len(hc) == 1 and hc[0][3][0].upper() == "CMD" and "/healthz" in " ".join(hc[0][3])
          and "curl" in " ".join(hc[0][3]),
          "HEALTHCHECK curls /healthz")

    eps = [i for i in runtime if i[0] == "ENTRYPOINT"]
    cmds = [i for i in runtime if i[0] == "CMD"]
    check(len(eps) == 1 and eps[0][2] and list(eps[0][3]) == ["/usr/local/bin/tickerd"],
          'exec-form ENTRYPOINT ["/usr/local/bin/tickerd"] (SIGTERM reaches tickerd, no shell)')
    check(len(cmds) == 1 and cmds[0][2] and list(cmds[0][3]) == ["serve"], 'exec-form CMD ["serve"]')
    sig = [i[3][0] for i in runtime if i[0] == "STOPSIGNAL"]
    check(not sig or sig[-1] in ("SIGTERM", "15"), "stop signal is SIGTERM")

print("-- .dockerignore and build context")
ignore = []
try:
    ignore = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
except FileNotFoundError:
    pass
norm = {p.strip("/") for p in ignore}
check({"target", ".git"} <= norm, ".dockerignore excludes target/ and .git/")
for needed in ("Cargo.toml", "Cargo.lock", "src", "plugins"):
    check(os.path.exists(needed) and needed not in norm,
          f"build context has {needed} (exists, not in .dockerignore)")
check(any(f.endswith(".lua") for f in os.listdir("plugins")) if os.path.isdir("plugins") else False,
      "plugins/ holds at least one *.lua")

# ---------------------------------------------------------- docker-compose.yml
print("-- docker-compose.yml")
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota",
    "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts",
    "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform",
    "ports", "privileged", "profiles", "pull_policy", "read_only", "restart", "runtime", "scale",
    "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
    "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts", "volumes",
    "volumes_from", "working_dir",
}


def env_of(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) if "=" in x else (x, None) for x in e)
    return {k: (None if v is None else str(v)) for k, v in e.items()}


def mounts(svc):
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else None, "ro" in parts[2:]))
        elif isinstance(v, dict):
            out.append((v.get("source"), v.get("target"), bool(v.get("read_only"))))
    return out


def ports(svc):
    out = set()
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.add(f"{p.get('published')}:{p.get('target')}")
        else:
            out.add(str(p))
    return out


compose = load_yaml("docker-compose.yml") or {}
services = compose.get("services") or {}
check("version" not in compose, "no obsolete top-level 'version' key")
for name in ("redis", "tickerd", "prometheus", "grafana"):
    check(name in services, f"service {name} defined")
for name, svc in services.items():
    unknown = sorted(set(svc or {}) - SERVICE_KEYS)
    check(not unknown, f"service {name}: only Compose-spec keys" + (f" (unknown: {unknown})" if unknown else ""))
    for src, target, _ in mounts(svc or {}):
        if src and (src.startswith("./") or src.startswith("../")):
            check(os.path.exists(src), f"service {name}: bind-mounted {src} exists")

redis = services.get("redis") or {}
check(str(redis.get("image", "")).startswith("redis:7"), f"redis image redis:7-* ({redis.get('image')})")
test = (redis.get("healthcheck") or {}).get("test")
test_s = " ".join(test) if isinstance(test, list) else str(test)
check("redis-cli" in test_s and "ping" in test_s, "redis healthcheck runs redis-cli ping")

t = services.get("tickerd") or {}
build = t.get("build")
check(build == "." or (isinstance(build, dict) and build.get("context") in (".", "./")), "tickerd builds from .")
check(("./plugins", "/plugins", True) in mounts(t), "tickerd mounts ./plugins:/plugins:ro")
te = env_of(t)
check(te.get("REDIS_HOST") == "redis", "tickerd REDIS_HOST=redis")
check(te.get("TICKERD_LISTEN") == "0.0.0.0:8000", "tickerd TICKERD_LISTEN=0.0.0.0:8000")
ef = t.get("env_file")
ef = [ef] if isinstance(ef, (str, dict)) else (ef or [])
ef_paths = [e if isinstance(e, str) else e.get("path") for e in ef]
check(any(p in ("tickerd.env", "./tickerd.env") for p in ef_paths), "tickerd env_file tickerd.env")
try:
    example = open("tickerd.env.example").read()
except FileNotFoundError:
    example = ""
check(re.search(r"^TICKERD_ADMIN_TOKEN=\S+", example, re.M) is not None,
      "tickerd.env.example sets a TICKERD_ADMIN_TOKEN placeholder")
check(re.search(r"cp tickerd\.env\.example tickerd\.env", example) is not None,
      "tickerd.env.example says to copy it to tickerd.env")
dep = t.get("depends_on") or {}
check(isinstance(dep, dict) and (dep.get("redis") or {}).get("condition") == "service_healthy",
      "tickerd depends_on redis: service_healthy")
check("8000:8000" in ports(t), "tickerd publishes 8000:8000")
grace = seconds(t.get("stop_grace_period", ""))
check(grace is not None and grace >= 35, f"tickerd stop_grace_period >= 35s ({t.get('stop_grace_period')})")

# the optional Kafka profile: a broker and a tickerd that publishes to it
print("-- docker-compose.yml: profile kafka")
k = services.get("kafka") or {}
check(k.get("profiles") == ["kafka"], f"kafka service only under profile kafka ({k.get('profiles')})")
check(str(k.get("image", "")).startswith("apache/kafka:"), f"kafka image apache/kafka ({k.get('image')})")
ke = env_of(k)
adv = ke.get("KAFKA_ADVERTISED_LISTENERS") or ""
check("PLAINTEXT://kafka:9092" in adv, f"kafka advertises PLAINTEXT://kafka:9092 to the other services ({adv})")
check("broker" in (ke.get("KAFKA_PROCESS_ROLES") or "") and "controller" in (ke.get("KAFKA_PROCESS_ROLES") or ""),
      "kafka runs single-node KRaft (broker,controller)")
check(ke.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "1", "kafka offsets topic replication 1 (one node)")
ktest = (k.get("healthcheck") or {}).get("test")
ktest_s = " ".join(ktest) if isinstance(ktest, list) else str(ktest)
check("kafka-broker-api-versions" in ktest_s or "kafka-topics" in ktest_s, "kafka healthcheck asks the broker")
kp = services.get("tickerd-producer") or {}
check(kp.get("profiles") == ["kafka"], f"tickerd-producer only under profile kafka ({kp.get('profiles')})")
check(kp.get("image") == t.get("image") and (kp.get("build") in (".", "./") or isinstance(kp.get("build"), dict)),
      "tickerd-producer is the tickerd image")
kdep = kp.get("depends_on") or {}
check(isinstance(kdep, dict) and all((kdep.get(n) or {}).get("condition") == "service_healthy"
                                      for n in ("redis", "kafka")),
      "tickerd-producer depends_on redis and kafka: service_healthy")
check(not kp.get("ports"), "tickerd-producer publishes no port (tickerd owns 8000 on the host)")
kcmd = kp.get("command") or []
cfg_target = kcmd[kcmd.index("--config") + 1] if "--config" in kcmd[:-1] else None
kmounts = {target: src for src, target, _ in mounts(kp)}
cfg_src = kmounts.get(cfg_target)
check(cfg_src is not None, f"tickerd-producer --config {cfg_target} is a bind-mounted file ({cfg_src})")
check(env_of(kp).get("REDIS_HOST") == "redis", "tickerd-producer REDIS_HOST=redis (the shared cache)")
if cfg_src and os.path.exists(cfg_src):
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        tomllib = None
    if tomllib is None:
        print(f"skip  {cfg_src} TOML checks (Python < 3.11 has no tomllib)")
    else:
        try:
            tc = tomllib.load(open(cfg_src, "rb"))
            check(True, f"{cfg_src} parses as TOML")
        except Exception as e:  # noqa: BLE001
            tc = {}
            check(False, f"{cfg_src} parses as TOML: {e}")
        watches = tc.get("watch") or []
        check(any(w.get("sink") == "kafka" for w in watches), f"{cfg_src} has a [[watch]] with sink = \"kafka\"")
        brokers = (tc.get("kafka") or {}).get("brokers", "")
        check(brokers.split(",")[0] == adv.replace("PLAINTEXT://", "").split(",")[0],
              f"{cfg_src} brokers ({brokers}) = the kafka service's advertised listener")
        plugins = {w.get("plugin") for w in watches}
        check(all(os.path.exists(f"plugins/{p}.lua") for p in plugins),
              f"{cfg_src} watches bundled plugins ({sorted(plugins)})")

p = services.get("prometheus") or {}
check(str(p.get("image", "")).startswith("prom/prometheus"), f"prometheus image prom/prometheus ({p.get('image')})")
check(("./prometheus.yml", "/etc/prometheus/prometheus.yml", True) in mounts(p)
      or ("./prometheus.yml", "/etc/prometheus/prometheus.yml", False) in mounts(p),
      "prometheus mounts ./prometheus.yml at /etc/prometheus/prometheus.yml")
check("9090:9090" in ports(p), "prometheus publishes 9090:9090")

g = services.get("grafana") or {}
check(str(g.get("image", "")).startswith("grafana/grafana"), f"grafana image grafana/grafana ({g.get('image')})")
check("3000:3000" in ports(g), "grafana publishes 3000:3000")
ge = env_of(g)
check(str(ge.get("GF_AUTH_ANONYMOUS_ENABLED")).lower() == "true"
      and ge.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer", "grafana anonymous access as Viewer")
gm = {src: target for src, target, _ in mounts(g)}
check(gm.get("./deploy/grafana/provisioning") == "/etc/grafana/provisioning",
      "grafana mounts ./deploy/grafana/provisioning at /etc/grafana/provisioning")
dash_dir = gm.get("./deploy/grafana/dashboards")
check(dash_dir is not None, f"grafana mounts ./deploy/grafana/dashboards ({dash_dir})")
home = ge.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
if home:
    check(dash_dir and home.startswith(dash_dir + "/")
          and os.path.exists(os.path.join("deploy/grafana/dashboards", home[len(dash_dir) + 1:])),
          f"grafana home dashboard {home} is a mounted file")

# ------------------------------------------------------------- prometheus.yml
print("-- prometheus.yml")
prom = load_yaml("prometheus.yml") or {}
jobs = {j.get("job_name"): j for j in prom.get("scrape_configs") or []}


def targets(job):
    return [x for sc in (job or {}).get("static_configs") or [] for x in sc.get("targets") or []]


tj = jobs.get("tickerd")
check(tj is not None and "tickerd:8000" in targets(tj), "job tickerd scrapes tickerd:8000")
check(tj is not None and seconds(tj.get("scrape_interval", "")) == 5, "job tickerd scrape_interval 5s")
check(tj is not None and tj.get("metrics_path", "/metrics") == "/metrics", "job tickerd metrics_path /metrics")
check("prometheus" in jobs and "localhost:9090" in targets(jobs["prometheus"]), "job prometheus scrapes itself")

# ------------------------------------------------------ Grafana provisioning
print("-- Grafana provisioning")
ds_file = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml") or {}
dss = ds_file.get("datasources") or []
ds = next((d for d in dss if d.get("type") == "prometheus"), {})
check(ds.get("uid") == "prometheus", "datasource uid prometheus")
check(ds.get("url") == "http://prometheus:9090", "datasource url http://prometheus:9090")
check(ds.get("isDefault") is True, "datasource is the default")
check(sum(1 for d in dss if d.get("isDefault")) <= 1, "at most one default datasource")
prov = load_yaml("deploy/grafana/provisioning/dashboards/tickerd.yml") or {}
provider = next(iter(prov.get("providers") or []), {})
ppath = (provider.get("options") or {}).get("path")
check(provider.get("type") == "file" and ppath == "/var/lib/grafana/dashboards",
      f"dashboard provider: file, path /var/lib/grafana/dashboards ({ppath})")
check(ppath is not None and ppath == dash_dir, "dashboard provider path is where compose mounts the dashboards")

# ----------------------------------------------------------------- dashboard
print("-- deploy/grafana/dashboards/tickerd.json")
dash = {}
try:
    dash = json.load(open("deploy/grafana/dashboards/tickerd.json"))
    check(True, "dashboard JSON parses")
except (OSError, ValueError) as e:
    check(False, f"dashboard JSON parses: {e}")
check(dash.get("schemaVersion") == 39, f"schemaVersion 39 ({dash.get('schemaVersion')})")
check(bool(dash.get("uid")) and bool(dash.get("title")), "dashboard has uid and title")
tvars = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
pv = tvars.get("plugin") or {}
q = pv.get("query")
qs = q.get("query") if isinstance(q, dict) else q
check(pv.get("type") == "query" and re.sub(r"\s", "", qs or "") == "label_values(stock_requests_total,plugin)",
      "template variable plugin = label_values(stock_requests_total, plugin)")


def all_panels(ps):
    for p in ps or []:
        if p.get("type") == "row":
            yield from all_panels(p.get("panels"))
        else:
            yield p


panels = list(all_panels(dash.get("panels")))
check(len(panels) > 0, f"dashboard has panels ({len(panels)})")
ids = [p.get("id") for p in panels]
check(len(ids) == len(set(ids)) and None not in ids, "panel ids are unique")
ds_uid = ds.get("uid")
exprs = []
for p in panels:
    title = p.get("title", f"panel {p.get('id')}")
    pds = p.get("datasource") or {}
    tds = [t.get("datasource") or pds for t in p.get("targets") or []]
    ok_ds = (bool(pds) or (tds and all(tds))) and all(
        isinstance(d, dict) and d.get("uid") in (ds_uid, "${datasource}", "$datasource") for d in (tds or [pds]))
    t_exprs = [t.get("expr") for t in p.get("targets") or [] if (t.get("expr") or "").strip()]
    gp = p.get("gridPos") or {}
    ok_grid = all(k in gp for k in "xywh") and 0 <= gp["x"] and gp["x"] + gp["w"] <= 24
    check(ok_ds and t_exprs and ok_grid and p.get("type") in ("timeseries", "stat", "gauge", "table",
                                                                  "bargauge", "heatmap", "text"),
          f"panel '{title}' ({p.get('type')}): datasource {ds_uid}, {len(t_exprs)} PromQL target(s), gridPos")
    exprs += [(title, e) for e in t_exprs]

# metric names the dashboard uses vs. those tickerd registers
src = open("src/metrics/mod.rs").read() if os.path.exists("src/metrics/mod.rs") else ""
known = {"up"}
for kind, name in re.findall(r"\b(counter|histogram|gauge)(?:_vec)?\(\s*&\w+,\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"", src):
    known.add(name)
    if kind == "histogram":
        known |= {name + "_bucket", name + "_sum", name + "_count"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in KEYWORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue
        names.add(m.group(0))
    return names


used = set()
for _, e in exprs:
    used |= metric_names(e)
if len(known) > 1:
    unknown = sorted(used - known)
    check(not unknown, "every metric on the dashboard is registered in src/metrics/mod.rs"
          + (f" (unknown: {unknown})" if unknown else ""))
else:
    print("skip  metric names vs src/metrics/mod.rs (no registrations found there)")
expected = ["cache_hits_total", "cache_misses_total", "cache_lookup_duration_seconds_bucket",
            "stock_requests_total", "stock_requests_success_total", "stock_requests_failure_total",
            "plugin_fetch_duration_seconds_bucket", "plugin_reloads_total", "plugins_loaded", "redis_up",
            "cache_stale_served_total", "fetch_coalesced_total", "stream_published_total"]
missing = [m for m in expected if m not in used]
check(not missing, "dashboard charts every SPEC §5 metric" + (f" (missing: {missing})" if missing else ""))
all_text = "\n".join(e for _, e in exprs)
for q_ in ("0.5", "0.99"):
    for h in ("cache_lookup_duration_seconds_bucket", "plugin_fetch_duration_seconds_bucket"):
        check(re.search(rf"histogram_quantile\(\s*{re.escape(q_)}\s*,[^;]*?{h}", all_text) is not None,
              f"histogram_quantile({q_}) over {h}")
check(re.search(r"cache_hits_total[^\n]*/[^\n]*cache_misses_total", all_text) is not None,
      "cache hit ratio = hits / (hits + misses)")

# every expression becomes a recording rule so promtool parses it as PromQL
def concrete(e):
    return (e.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
             .replace("${plugin}", ".*").replace("$plugin", ".*"))


rules = {"groups": [{"name": "tickerd-dashboard-queries", "rules": [
    {"record": f"dashboard:query_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]}]}
rules["groups"][0]["rules"].append(
    {"record": "dashboard:variable_plugin", "expr": "group by (plugin) (stock_requests_total)"})
with open(os.environ["RULES_FILE"], "w") as f:
    yaml.safe_dump(rules, f, sort_keys=False)

print(f"static checks: {passed} ok, {len(failures)} failing")
sys.exit(1 if failures else 0)
PY
static_rc=$?
set -e

section "promtool"
prom_rc=0
if [ -n "$PROMTOOL" ]; then
    if "$PROMTOOL" check config prometheus.yml; then
        log "ok    promtool check config prometheus.yml"
    else
        log "FAIL  promtool check config prometheus.yml"
        prom_rc=1
    fi
    if [ -s "$RULES_FILE" ]; then
        if out=$("$PROMTOOL" check rules "$RULES_FILE" 2>&1); then
            log "ok    promtool parsed every dashboard query ($(grep -o 'SUCCESS: [0-9]* rules found' <<<"$out" || echo "$out"))"
        else
            log "$out"
            log "FAIL  promtool check rules over the dashboard queries"
            prom_rc=1
        fi
    fi
else
    log "FAIL  promtool check config prometheus.yml: promtool is not installed and could not be unpacked from Debian's prometheus package (install promtool, or put it on PATH)"
    log "FAIL  PromQL parse of the dashboard queries: promtool not available"
    prom_rc=1
fi

section "result"
if [ "$static_rc" -ne 0 ] || [ "$prom_rc" -ne 0 ]; then
    log "check-deploy: FAILED"
    exit 1
fi
log "check-deploy: OK"
