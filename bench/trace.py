#!/usr/bin/env python3
"""The overlapping-trace replay of bench/run.sh (issue 13).

240 daily-bar requests over 8 tickers, as users ask them: dashboards opening
the 1M, 3M and 1Y windows of a ticker (twice a day), backtests re-run from
other start dates, and a one-month window sliding by one day. The trace is
fixed (seeded), so every run and every binary replays the same requests.

  trace.py upstream PORT_FILE
      A counting upstream on 127.0.0.1 (port written to PORT_FILE): GET
      /bars?ticker=&start=&end= answers business-day bars; GET /counts gives
      {"calls": N, "days": D}, the calls made and the calendar days asked.
  trace.py replay DAEMON_URL UPSTREAM_URL PLUGIN MODE
      Replays the trace one request at a time against tickerd (plugin PLUGIN,
      bench/plugins/trace.lua) and prints what the upstream was asked,
      against the union of the days requested. MODE `range` asks as users do;
      MODE `answer` gives every distinct (ticker, start, end) its own ticker
      name, which turns any cache into a per-answer cache (an exact repeat is
      a hit, nothing else is shared): the baseline of issue 13. Every answer
      must be 200 with exactly the business days of its range; exits 1 if not.
  trace.py print
      Prints the trace.
"""

import datetime as dt
import json
import os
import random
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

TICKERS = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "SPY"]
# The dashboards' "today": fixed, so the trace does not depend on the day it
# runs, and settled (far past tickerd's `settle`), like most history asked.
TODAY = dt.date(2025, 6, 30)
DAY = dt.timedelta(days=1)


def trace():
    """[(ticker, start, end)] in replay order."""
    rng = random.Random(13)
    sessions = []
    for t in TICKERS:
        dashboard = [(t, TODAY - dt.timedelta(days=d), TODAY) for d in (30, 91, 365)]
        sessions.append(list(dashboard))  # morning
        sessions.append(list(dashboard))  # afternoon: the same three windows again
        starts = [dt.date(2023, 1, 2), dt.date(2023, 4, 3), dt.date(2023, 7, 3),
                  dt.date(2023, 10, 2), dt.date(2024, 1, 2), dt.date(2024, 3, 1)]
        rng.shuffle(starts)
        sessions.append([(t, s, TODAY) for s in starts])  # backtests
        first_end = TODAY - 17 * DAY
        sessions.append([(t, first_end + k * DAY - 30 * DAY, first_end + k * DAY)
                         for k in range(18)])  # a one-month window, one day further each time
    # Sessions interleave: each step continues a random unfinished session, so
    # requests of one session keep their order (the window slides forward).
    out = []
    live = [list(s) for s in sessions]
    while live:
        s = rng.choice(live)
        out.append(s.pop(0))
        if not s:
            live.remove(s)
    return out


def business_days(start, end):
    d, out = start, []
    while d <= end:
        if d.weekday() < 5:
            out.append(d)
        d += DAY
    return out


def bar(ticker, d):
    h = sum(ticker.encode()) % 400 + 20 + d.toordinal() % 17
    return {"date": d.isoformat(), "open": h, "high": h + 1, "low": h - 1,
            "close": h + 0.5, "volume": 1000 + d.toordinal() % 1000}


def upstream(port_file):
    counts = {"calls": 0, "days": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, status, doc):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/counts":
                with lock:
                    return self.answer(200, dict(counts))
            if url.path != "/bars":
                return self.answer(404, {"error": "no such path: " + url.path})
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            try:
                start = dt.date.fromisoformat(q["start"])
                end = dt.date.fromisoformat(q["end"])
                ticker = q["ticker"]
            except (KeyError, ValueError) as e:
                return self.answer(400, {"error": "bad query: %r" % e})
            if end < start:
                return self.answer(400, {"error": "end before start"})
            with lock:
                counts["calls"] += 1
                counts["days"] += (end - start).days + 1
            self.answer(200, {"bars": [bar(ticker, d) for d in business_days(start, end)]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place so a reader never sees a half-written port.
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


def get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def replay(daemon, up, plugin, mode):
    if mode not in ("range", "answer"):
        sys.exit("mode must be `range` or `answer`, not %r" % mode)
    requests = trace()
    union = {}
    for t, s, e in requests:
        union.setdefault(t, set()).update(s + k * DAY for k in range((e - s).days + 1))
    union_days = sum(len(v) for v in union.values())
    status, before = get_json(up + "/counts")
    if status != 200:
        sys.exit("upstream /counts answered %s" % status)
    bad = 0
    for t, s, e in requests:
        ticker = t if mode == "range" else "%s.%s%s" % (t, s.strftime("%Y%m%d"), e.strftime("%Y%m%d"))
        url = "%s/v1/data/%s/%s?%s" % (daemon, plugin, ticker, urlencode({"start": s, "end": e}))
        status, doc = get_json(url)
        want = [d.isoformat() for d in business_days(s, e)]
        got = [b.get("date") for b in doc.get("bars", [])] if isinstance(doc, dict) else None
        if status != 200 or got != want:
            bad += 1
            if bad <= 5:
                print("trace: %s answered %s with %s bars, expected %d (%s..%s)"
                      % (url, status, len(got) if got is not None else doc, len(want), want[0], want[-1]),
                      file=sys.stderr)
    status, after = get_json(up + "/counts")
    calls = after["calls"] - before["calls"]
    days = after["days"] - before["days"]
    n = len(requests)
    print("mode=%s requests=%d calls=%d days_asked=%d union_days=%d calls_ratio=%.2f days_ratio=%.2f bad=%d"
          % (mode, n, calls, days, union_days, calls / n, days / union_days, bad))
    if bad:
        sys.exit("trace: %d of %d answers were wrong" % (bad, n))


def main(argv):
    if len(argv) == 3 and argv[1] == "upstream":
        upstream(argv[2])
    elif len(argv) == 6 and argv[1] == "replay":
        replay(*argv[2:])
    elif len(argv) == 2 and argv[1] == "print":
        for t, s, e in trace():
            print(t, s, e, (e - s).days + 1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
