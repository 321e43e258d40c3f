"""Python client for tickerd (standard library only; pandas optional).

The call the old module offered, without the callback (the plugin fetches)::

    from tickerd_client import get_stock_data
    answer = get_stock_data("AAPL", "2024-01-01", "2024-01-31")
    answer["bars"][0]   # {"date": "2024-01-02", "open": ..., "close": ..., "volume": ...}

The daemon is found at ``TICKERD_URL`` (default ``http://127.0.0.1:8000``);
admin calls send ``TICKERD_ADMIN_TOKEN`` as a bearer token when it is set.
Every call has a timeout, and a call that could not connect (or whose
connection dropped before an answer) is tried once more. An error answer
raises :class:`TickerdError` with the daemon's ``code`` and ``message``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    import pandas

__all__ = [
    "Client",
    "TickerdError",
    "get_stock_data",
    "get_stock_frame",
    "get_many",
    "invalidate_cache",
]

__version__ = "0.1.0"

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0

DateLike = Union[str, date, None]


class TickerdError(Exception):
    """An error answer from tickerd, or no answer at all.

    ``code`` is the daemon's error code (``no_data``, ``plugin_not_found``,
    ``upstream_error``, ``rate_limited``, ...), or ``connection_error`` /
    ``timeout`` / ``bad_response`` when the daemon could not be reached or
    answered something that is not tickerd's JSON. ``status`` is the HTTP
    status (0 without an answer); ``retry_after`` the seconds from a
    ``Retry-After`` header, when there was one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 0,
        retry_after: Optional[int] = None,
        ticker: Optional[str] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.ticker = ticker

    def __repr__(self) -> str:
        return f"TickerdError(code={self.code!r}, message={self.message!r}, status={self.status})"


def _day(d: DateLike, name: str) -> Optional[str]:
    if d is None:
        return None
    if isinstance(d, date):
        return d.isoformat()
    if isinstance(d, str):
        return d
    raise TypeError(f"{name}: expected 'YYYY-MM-DD', a datetime.date or None, got {type(d).__name__}")


def _error_from(status: int, body: bytes, headers: Mapping[str, str]) -> TickerdError:
    retry = headers.get("Retry-After")
    retry_after = int(retry) if retry and retry.strip().isdigit() else None
    try:
        err = json.loads(body.decode("utf-8"))["error"]
        return TickerdError(str(err["code"]), str(err["message"]), status, retry_after)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return TickerdError("bad_response", f"HTTP {status}: {text or 'no body'}", status, retry_after)


class Client:
    """A connection to one tickerd daemon.

    ``base_url`` defaults to ``$TICKERD_URL`` (else ``http://127.0.0.1:8000``),
    ``token`` to ``$TICKERD_ADMIN_TOKEN``. ``timeout`` bounds each HTTP call
    (seconds); ``retries`` is how many more times a call that could not
    connect is tried (default once more, after ``retry_delay`` seconds).
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
        retry_delay: float = 0.2,
    ) -> None:
        url = base_url or os.environ.get("TICKERD_URL") or DEFAULT_URL
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"TICKERD_URL: expected http://host:port, got {url!r}")
        self.base_url = url.rstrip("/")
        self.token = token if token is not None else (os.environ.get("TICKERD_ADMIN_TOKEN") or None)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.retry_delay = retry_delay

    # -- HTTP -------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Optional[str]],
        admin: bool = False,
        accept: str = "application/json",
    ) -> bytes:
        q = {k: v for k, v in query.items() if v is not None}
        url = self.base_url + path + ("?" + urllib.parse.urlencode(q) if q else "")
        headers = {"Accept": accept, "User-Agent": f"tickerd-client/{__version__}"}
        if admin and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            req = urllib.request.Request(url, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.read()
            except urllib.error.HTTPError as e:
                body = e.read() if e.fp is not None else b""
                raise _error_from(e.code, body, e.headers or {}) from None
            except (socket.timeout, TimeoutError):
                # Sent, but no answer in time: the daemon has the request, and
                # sending it again could double the work behind a slow upstream.
                raise TickerdError(
                    "timeout", f"{method} {url}: no answer within {self.timeout}s"
                ) from None
            except (urllib.error.URLError, ConnectionError) as e:
                # Could not connect (URLError wraps connect and send errors),
                # or the connection dropped before an answer: safe to retry.
                reason = getattr(e, "reason", e)
                if attempt >= self.retries:
                    raise TickerdError(
                        "connection_error",
                        f"{method} {url}: {reason} (is tickerd running? set TICKERD_URL)",
                    ) from None
                attempt += 1
                time.sleep(self.retry_delay)

    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise TickerdError("bad_response", f"not JSON: {body[:200]!r}") from None

    # -- the API ------------------------------------------------------------

    def get_stock_data(
        self,
        ticker: str,
        start: DateLike = None,
        end: DateLike = None,
        plugin: str = "synthetic",
        refresh: bool = False,
    ) -> Dict[str, Any]:
        """The data answer for one ticker: ``plugin``, ``ticker``, ``start``,
        ``end``, ``bars`` (list of ``{date, open, high, low, close, volume}``),
        ``meta``, ``fetched_at`` and ``cache``. ``refresh=True`` skips the
        cache read and fetches anew."""
        path = "/v1/data/{}/{}".format(
            urllib.parse.quote(plugin, safe=""), urllib.parse.quote(ticker, safe="")
        )
        query = {
            "start": _day(start, "start"),
            "end": _day(end, "end"),
            "refresh": "true" if refresh else None,
        }
        answer = self._json(self._request("GET", path, query))
        if not isinstance(answer, dict) or "bars" not in answer:
            raise TickerdError("bad_response", f"expected a data answer, got {str(answer)[:200]}")
        return answer

    def get_stock_frame(
        self,
        ticker: str,
        start: DateLike = None,
        end: DateLike = None,
        plugin: str = "synthetic",
        refresh: bool = False,
    ) -> "pandas.DataFrame":
        """The bars as a pandas DataFrame indexed by date (a
        ``DatetimeIndex`` named ``date``); needs pandas installed."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "get_stock_frame needs pandas: pip install 'tickerd-client[pandas]'"
            ) from None
        answer = self.get_stock_data(ticker, start, end, plugin=plugin, refresh=refresh)
        columns = ["date", "open", "high", "low", "close", "volume"]
        frame = pd.DataFrame(answer["bars"])
        if frame.empty:
            frame = pd.DataFrame(columns=columns)
        frame["date"] = pd.to_datetime(frame["date"])
        frame = frame.set_index("date").sort_index()
        frame.attrs["tickerd"] = {k: v for k, v in answer.items() if k != "bars"}
        return frame

    def get_many(
        self,
        tickers: Iterable[str],
        start: DateLike = None,
        end: DateLike = None,
        plugin: str = "synthetic",
    ) -> Dict[str, Union[Dict[str, Any], TickerdError]]:
        """Many tickers in one call over the bulk route
        (``GET /v1/data/{plugin}?tickers=...``, NDJSON). Returns a dict in
        the order the tickers were given: each ticker's data answer, or a
        :class:`TickerdError` for a ticker that failed (the others are kept).
        A request the daemon refuses as a whole (a malformed ticker, an
        unknown plugin) raises."""
        wanted: List[str] = []
        for t in tickers:
            if not isinstance(t, str) or not t:
                raise TypeError(f"tickers: expected non-empty strings, got {t!r}")
            if t.upper() not in wanted:
                wanted.append(t.upper())
        if not wanted:
            return {}
        path = "/v1/data/{}".format(urllib.parse.quote(plugin, safe=""))
        query = {"tickers": ",".join(wanted), "start": _day(start, "start"), "end": _day(end, "end")}
        body = self._request("GET", path, query, accept="application/x-ndjson")
        got: Dict[str, Union[Dict[str, Any], TickerdError]] = {}
        for line in body.decode("utf-8").splitlines():
            if not line.strip():
                continue
            item = self._json(line.encode("utf-8"))
            if not isinstance(item, dict) or "ticker" not in item:
                raise TickerdError("bad_response", f"unexpected NDJSON line: {line[:200]}")
            ticker = str(item["ticker"]).upper()
            err = item.get("error")
            if isinstance(err, dict):
                got[ticker] = TickerdError(
                    str(err.get("code", "error")), str(err.get("message", "")), ticker=ticker
                )
            else:
                got[ticker] = item
        missing = [t for t in wanted if t not in got]
        for t in missing:
            got[t] = TickerdError("bad_response", "no line for this ticker in the answer", ticker=t)
        return {t: got[t] for t in wanted}

    def invalidate_cache(
        self,
        ticker: Optional[str] = None,
        start: DateLike = None,
        end: DateLike = None,
        plugin: Optional[str] = None,
    ) -> int:
        """Deletes cache entries (admin route); returns how many. Needs
        ``plugin`` or ``ticker``; ``start`` and ``end`` go together."""
        if ticker is None and plugin is None:
            raise ValueError("invalidate_cache: give a ticker or a plugin (or both)")
        if (start is None) != (end is None):
            raise ValueError("invalidate_cache: start and end go together")
        query = {
            "plugin": plugin,
            "ticker": ticker,
            "start": _day(start, "start"),
            "end": _day(end, "end"),
        }
        answer = self._json(self._request("DELETE", "/v1/cache", query, admin=True))
        try:
            return int(answer["deleted"])
        except (KeyError, TypeError, ValueError):
            raise TickerdError("bad_response", f"expected {{\"deleted\": N}}, got {answer!r}") from None


def _default() -> Client:
    # Read the environment at each call, so a test or a notebook that sets
    # TICKERD_URL after the import is honoured.
    return Client()


def get_stock_data(
    ticker: str,
    start: DateLike = None,
    end: DateLike = None,
    plugin: str = "synthetic",
    refresh: bool = False,
) -> Dict[str, Any]:
    """See :meth:`Client.get_stock_data`."""
    return _default().get_stock_data(ticker, start, end, plugin=plugin, refresh=refresh)


def get_stock_frame(
    ticker: str,
    start: DateLike = None,
    end: DateLike = None,
    plugin: str = "synthetic",
    refresh: bool = False,
) -> "pandas.DataFrame":
    """See :meth:`Client.get_stock_frame`."""
    return _default().get_stock_frame(ticker, start, end, plugin=plugin, refresh=refresh)


def get_many(
    tickers: Iterable[str],
    start: DateLike = None,
    end: DateLike = None,
    plugin: str = "synthetic",
) -> Dict[str, Union[Dict[str, Any], TickerdError]]:
    """See :meth:`Client.get_many`."""
    return _default().get_many(tickers, start, end, plugin=plugin)


def invalidate_cache(
    ticker: Optional[str] = None,
    start: DateLike = None,
    end: DateLike = None,
    plugin: Optional[str] = None,
) -> int:
    """See :meth:`Client.invalidate_cache`."""
    return _default().invalidate_cache(ticker, start, end, plugin=plugin)
