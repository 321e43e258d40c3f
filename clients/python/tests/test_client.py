"""tickerd_client against the real daemon (see conftest.py)."""

from __future__ import annotations

import socket
import sys
import threading
import urllib.request
from datetime import date
from typing import List

import pytest

import tickerd_client
from tickerd_client import Client, TickerdError

from conftest import TOKEN


def test_get_stock_data_is_the_old_call_without_the_callback(tickerd, monkeypatch):
    monkeypatch.setenv("TICKERD_URL", tickerd)
    first = tickerd_client.get_stock_data("aapl", "2024-01-01", "2024-01-31")
    assert first["ticker"] == "AAPL"
    assert first["plugin"] == "synthetic"
    assert (first["start"], first["end"]) == ("2024-01-01", "2024-01-31")
    bar = first["bars"][0]
    assert set(bar) >= {"date", "open", "high", "low", "close", "volume"}
    assert bar["date"] == "2024-01-01"
    assert len(first["bars"]) == 23  # business days of January 2024
    again = tickerd_client.get_stock_data("AAPL", date(2024, 1, 1), date(2024, 1, 31))
    assert again["cache"]["status"] == "hit"
    assert again["bars"] == first["bars"]
    fresh = tickerd_client.get_stock_data("AAPL", "2024-01-01", "2024-01-31", refresh=True)
    assert fresh["cache"]["status"] == "bypass"


def test_errors_carry_the_daemons_code_and_message(tickerd):
    c = Client(tickerd)
    with pytest.raises(TickerdError) as e:
        c.get_stock_data("AAPL", "2024-01-01", "2024-01-31", plugin="nosuch")
    assert (e.value.code, e.value.status) == ("plugin_not_found", 404)
    assert "nosuch" in e.value.message
    with pytest.raises(TickerdError) as e:
        c.get_stock_data("AAPL", "2024-02-30", "2024-03-01")
    assert e.value.status == 400
    assert "start" in e.value.message
    with pytest.raises(TickerdError) as e:
        c.get_stock_data("FAIL", "2024-01-01", "2024-01-02", plugin="picky")
    assert (e.value.code, e.value.status) == ("upstream_error", 502)


def test_invalidate_cache_sends_the_admin_token(tickerd, monkeypatch):
    c = Client(tickerd, token=TOKEN)
    c.get_stock_data("MSFT", "2024-03-01", "2024-03-08")
    assert c.invalidate_cache(ticker="MSFT", plugin="synthetic") >= 1
    assert c.get_stock_data("MSFT", "2024-03-01", "2024-03-08")["cache"]["status"] == "miss"
    monkeypatch.setenv("TICKERD_URL", tickerd)
    monkeypatch.setenv("TICKERD_ADMIN_TOKEN", TOKEN)
    assert tickerd_client.invalidate_cache(ticker="MSFT", start="2024-03-01", end="2024-03-08") >= 1
    monkeypatch.delenv("TICKERD_ADMIN_TOKEN")
    with pytest.raises(TickerdError) as e:
        tickerd_client.invalidate_cache(ticker="MSFT")
    assert e.value.status == 401
    with pytest.raises(ValueError):
        c.invalidate_cache()
    with pytest.raises(ValueError):
        c.invalidate_cache(ticker="MSFT", start="2024-01-01")


def _bulk_route_exists(base: str) -> bool:
    try:
        urllib.request.urlopen(base + "/v1/data/synthetic?tickers=AAPL&start=2024-01-02&end=2024-01-02", timeout=10)
        return True
    except urllib.error.HTTPError as e:
        return e.code not in (404, 405)


def test_get_many_over_the_bulk_route(tickerd):
    if not _bulk_route_exists(tickerd):
        pytest.skip("this tickerd has no bulk route GET /v1/data/{plugin}?tickers= yet (SPEC §7)")
    c = Client(tickerd)
    got = c.get_many(["msft", "AAPL", "MSFT"], "2024-01-01", "2024-01-31")
    assert list(got) == ["MSFT", "AAPL"], "input order, duplicates once"
    for t, answer in got.items():
        assert not isinstance(answer, TickerdError), answer
        assert answer["ticker"] == t
        assert answer["bars"] == c.get_stock_data(t, "2024-01-01", "2024-01-31")["bars"]
    mixed = c.get_many(["OK", "FAIL"], "2024-01-02", "2024-01-02", plugin="picky")
    assert mixed["OK"]["bars"][0]["close"] == 1.5
    err = mixed["FAIL"]
    assert isinstance(err, TickerdError)
    assert err.code == "upstream_error" and err.ticker == "FAIL"
    with pytest.raises(TickerdError) as e:
        c.get_many(["AAPL", "not a ticker!"])
    assert e.value.status == 400
    assert c.get_many([]) == {}


def test_get_stock_frame_is_indexed_by_date(tickerd):
    pd = pytest.importorskip("pandas", reason="pandas is optional; get_stock_frame needs it")
    frame = Client(tickerd).get_stock_frame("AAPL", "2024-01-01", "2024-01-31")
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert frame.index.name == "date"
    assert list(frame.columns[:5]) == ["open", "high", "low", "close", "volume"]
    assert len(frame) == 23
    assert frame.index[0] == pd.Timestamp("2024-01-01")
    assert frame.attrs["tickerd"]["ticker"] == "AAPL"


def test_get_stock_frame_without_pandas_says_how_to_install_it(tickerd, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"tickerd-client\[pandas\]"):
        Client(tickerd).get_stock_frame("AAPL", "2024-01-01", "2024-01-05")


class _Dropper:
    """A loopback listener that accepts connections and answers nothing:
    closes each at once (`hang=False`) or holds it open (`hang=True`)."""

    def __init__(self, hang: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: List[socket.socket] = []
        self.hang = hang
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(65536)
            if self.hang:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_dropped_connection_is_tried_once_more_then_raises():
    d = _Dropper(hang=False)
    try:
        with pytest.raises(TickerdError) as e:
            Client(f"http://127.0.0.1:{d.port}", timeout=5).get_stock_data("AAPL", "2024-01-01", "2024-01-02")
        assert e.value.code == "connection_error"
        assert d.accepted == 2, "one retry"
    finally:
        d.close()


def test_a_timeout_raises_without_sending_again():
    d = _Dropper(hang=True)
    try:
        with pytest.raises(TickerdError) as e:
            Client(f"http://127.0.0.1:{d.port}", timeout=0.5).get_stock_data("AAPL", "2024-01-01", "2024-01-02")
        assert e.value.code == "timeout"
        assert d.accepted == 1
    finally:
        d.close()


def test_nothing_listening_is_a_connection_error_naming_tickerd_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TickerdError) as e:
        Client(f"http://127.0.0.1:{port}", timeout=2, retry_delay=0.01).get_stock_data("AAPL")
    assert e.value.code == "connection_error"
    assert "TICKERD_URL" in e.value.message


def test_a_bad_url_is_refused_at_once(monkeypatch):
    monkeypatch.setenv("TICKERD_URL", "localhost:8000")
    with pytest.raises(ValueError, match="TICKERD_URL"):
        tickerd_client.get_stock_data("AAPL")


def test_get_many_reads_the_spec_ndjson_format():
    """The bulk answer as SPEC §7 writes it (one line per ticker, in
    completion order, an error object for a failed ticker), served by a
    stand-in on loopback: runs whether or not the daemon has the route yet,
    and pins the request the client sends."""
    import http.server
    import json as _json

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen["path"] = self.path
            seen["accept"] = self.headers.get("Accept")
            lines = [
                {"ticker": "FAIL", "error": {"code": "upstream_error", "message": "refused"}},
                {"plugin": "picky", "ticker": "OK", "start": "2024-01-02", "end": "2024-01-02",
                 "bars": [{"date": "2024-01-02", "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 10}],
                 "meta": {}, "fetched_at": "2026-01-01T00:00:00Z", "cache": {"status": "miss"}},
            ]
            body = "".join(_json.dumps(x) + "\n" for x in lines).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        got = Client(f"http://127.0.0.1:{srv.server_port}").get_many(
            ["ok", "FAIL", "MISSING"], "2024-01-02", "2024-01-02", plugin="picky"
        )
    finally:
        srv.shutdown()
    assert seen["path"] == "/v1/data/picky?tickers=OK%2CFAIL%2CMISSING&start=2024-01-02&end=2024-01-02"
    assert seen["accept"] == "application/x-ndjson"
    assert list(got) == ["OK", "FAIL", "MISSING"], "input order, not completion order"
    assert got["OK"]["bars"][0]["close"] == 1.5
    assert isinstance(got["FAIL"], TickerdError) and got["FAIL"].code == "upstream_error"
    assert isinstance(got["MISSING"], TickerdError) and got["MISSING"].code == "bad_response"
