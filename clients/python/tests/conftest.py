"""Fixtures: the real tickerd binary (debug build from cargo) against a
private redis-server, both on free loopback ports and stopped by their PIDs.

The binary is $TICKERD_BIN, else <repo>/target/debug/tickerd (built by
`cargo build` or `cargo test`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[3]
TOKEN = "client-test-token"

PICKY_PLUGIN = """
return {
  description = "one fixed bar; fails for the ticker FAIL (for bulk error lines)",
  ttl = "1h",
  timeout = "5s",
  fetch = function(req)
    if req.ticker == "FAIL" then errors.upstream("the test upstream refuses FAIL") end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5, volume = 10 } } }
  end,
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, timeout: float, check) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def tickerd_binary() -> Path:
    p = Path(os.environ.get("TICKERD_BIN") or REPO / "target" / "debug" / "tickerd")
    if not p.is_file():
        pytest.skip(f"tickerd binary not found at {p}: run `cargo build` first (or set TICKERD_BIN)")
    return p


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_until("redis-server to answer PING", 20, ping)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def tickerd(redis_url: str) -> Iterator[str]:
    """Base URL of a running `tickerd serve` with the synthetic and picky plugins."""
    binary = tickerd_binary()
    work = Path(tempfile.mkdtemp(prefix="tickerd-client-"))
    plugins = work / "plugins"
    plugins.mkdir()
    shutil.copy(REPO / "plugins" / "synthetic.lua", plugins / "synthetic.lua")
    (plugins / "picky.lua").write_text(PICKY_PLUGIN)
    config = work / "tickerd.toml"
    prefix = f"pyclient{os.getpid()}"
    config.write_text(f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{prefix}"\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKERD_", "REDIS_"))}
    env["TICKERD_ADMIN_TOKEN"] = TOKEN
    log = open(work / "tickerd.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--plugins", str(plugins), "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"tickerd exited with {proc.returncode}: {(work / 'tickerd.log').read_text()}")
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                return r.status == 200

        wait_until("tickerd /readyz", 30, ready)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)
