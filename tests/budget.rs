//! Upstream budgets (README "Rate limits") on a real redis-server, real daemons and the
//! mock upstream: the fleet-wide sliding window, 429 + Retry-After when no
//! turn comes in time, stale beating 429, and the fleet-wide cool-down after
//! an upstream 429.

mod common;

use std::time::{Duration, Instant};

use common::mock_upstream::{Canned, MockUpstream};
use common::{Daemon, DaemonBuilder, RedisServer, expect_metric as metric, unique, wait_for};
use serde_json::Value;

/// A plugin that asks the mock for `/q/<TICKER>` and answers one bar on the
/// asked start date. A 429 answer makes it fail with a plain error: the
/// refusal is recognised by the host, not by the plugin.
fn plugin(extra: &str) -> String {
    format!(
        r#"return {{
  description = "budget test plugin",
  env = {{ "MOCK_BASE" }},
  {extra}
  fetch = function(req)
    local res = http.get(env.get("MOCK_BASE") .. "/q/" .. req.ticker)
    if res.status ~= 200 then error("mock answered " .. res.status) end
    return {{ bars = {{ {{ date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5, volume = 10 }} }} }}
  end,
}}
"#
    )
}

fn ok_answer() -> Canned {
    Canned::json(200, "{}")
}

/// `[redis]` for daemons that must share one budget: same URL, same prefix.
fn shared_redis(redis: &RedisServer, prefix: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\nop_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\nbackoff = \"300ms\"\n",
        redis.url()
    )
}

async fn start(redis_toml: &str, mock: &MockUpstream, plugin_src: &str, extra_config: &str) -> Daemon {
    DaemonBuilder::new("redis://unused")
        .plugin("counted", plugin_src)
        .env("MOCK_BASE", &mock.base)
        .config(extra_config)
        .config(redis_toml)
        .start()
        .await
}

fn today() -> String {
    chrono::Utc::now().date_naive().format("%Y-%m-%d").to_string()
}

fn path(ticker: &str) -> String {
    let d = today();
    format!("/v1/data/counted/{ticker}?start={d}&end={d}")
}

/// The largest number of `arrivals` inside any window of `win` starting at one of them.
fn busiest_window(arrivals: &[Instant], win: Duration) -> usize {
    arrivals
        .iter()
        .map(|&t| arrivals.iter().filter(|&&a| a >= t && a < t + win).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_never_exceed_a_shared_budget() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", ok_answer());
    let redis = RedisServer::start();
    let shared = shared_redis(&redis, &unique("b"));
    let src = plugin("rate_limit = \"10/s\",\n  timeout = \"20s\",");
    let a = start(&shared, &mock, &src, "").await;
    let b = start(&shared, &mock, &src, "").await;

    // 60 distinct tickers at once, half to each daemon: no cache can help.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let d = if i % 2 == 0 { a.http.clone() } else { b.http.clone() };
        let url = if i % 2 == 0 {
            a.url(&path(&format!("T{i}")))
        } else {
            b.url(&path(&format!("T{i}")))
        };
        tasks.push(tokio::spawn(async move {
            let r = d.get(url).send().await.expect("GET");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "every call gets a turn within max_wait: {body}");
    }
    let took = started.elapsed();

    let arrivals = mock.arrivals("/q/");
    assert_eq!(arrivals.len(), 60);
    let busiest = busiest_window(&arrivals, Duration::from_secs(1));
    assert!(
        busiest <= 10,
        "the upstream saw {busiest} calls within one second (limit 10/s)"
    );
    // 60 calls at 10 per (guarded) second cannot take less than ~5 s: the
    // budget spread them rather than refusing or serialising them.
    assert!(took >= Duration::from_secs(5), "60 calls took only {took:?}");
    assert!(took < Duration::from_secs(15), "60 calls took {took:?}");

    let waited: f64 = [a.metrics().await, b.metrics().await]
        .iter()
        .map(|m| metric(m, "upstream_wait_seconds_count", &[("plugin", "counted")]))
        .sum();
    assert_eq!(waited, 60.0, "every admitted call is observed in upstream_wait_seconds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_turn_in_time_is_a_429_with_retry_after_answered_at_once() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", ok_answer());
    let redis = RedisServer::start();
    let shared = shared_redis(&redis, &unique("b"));
    let src = plugin("rate_limit = \"1/min\",\n  timeout = \"3s\",");
    let d = start(&shared, &mock, &src, "").await;

    let (s, x, body) = d.data(&path("AAA")).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");

    let asked = Instant::now();
    let r = d.get(&path("BBB")).await;
    let took = asked.elapsed();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After of whole seconds");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        (50..=62).contains(&retry),
        "the next turn is about a minute away: {retry}"
    );
    // max_wait defaults to the timeout (3 s), and a turn a minute away is
    // refused at once rather than after waiting.
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(
        mock.arrivals("/q/").len(),
        1,
        "the refused call never reached the upstream"
    );

    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            "upstream_rate_limited_total",
            &[("plugin", "counted"), ("reason", "budget")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "stock_requests_failure_total",
            &[("plugin", "counted"), ("reason", "rate_limited")]
        ),
        1.0
    );
    let (_, info) = d.get_json("/v1/plugins/counted").await;
    assert_eq!(info["rate_limit"], serde_json::json!(["1/min"]), "{info}");
    assert_eq!(info["cooldown_until"], Value::Null, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_its_turn_within_max_wait() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", ok_answer());
    let redis = RedisServer::start();
    let shared = shared_redis(&redis, &unique("b"));
    let src = plugin("rate_limit = \"1/s\",\n  max_wait = \"5s\",");
    let d = start(&shared, &mock, &src, "").await;

    let (p1, p2) = (path("AAA"), path("BBB"));
    let (r1, r2) = tokio::join!(d.data(&p1), d.data(&p2));
    assert_eq!((r1.0, r2.0), (200, 200), "{} {}", r1.2, r2.2);
    let arrivals = mock.arrivals("/q/");
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1].duration_since(arrivals[0]);
    assert!(
        gap >= Duration::from_millis(950),
        "the second call waited for its turn: {gap:?}"
    );
    let m = d.metrics().await;
    assert_eq!(metric(&m, "upstream_wait_seconds_count", &[("plugin", "counted")]), 2.0);
    assert!(metric(&m, "upstream_wait_seconds_sum", &[("plugin", "counted")]) >= 0.9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_beats_429() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", ok_answer());
    let redis = RedisServer::start();
    let shared = shared_redis(&redis, &unique("b"));
    let src = plugin("rate_limit = \"1/min\",\n  ttl = \"1s\",\n  max_wait = \"200ms\",");
    let d = start(&shared, &mock, &src, "[cache]\nstale_if_error = \"1h\"\n").await;

    let (s, x, body) = d.data(&path("AAA")).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    // Once the entry is past its 1 s TTL the refetch has no turn: the stale copy is served.
    let (s, x, body) = wait_for("the cached entry to expire", Duration::from_secs(15), || {
        let d = &d;
        async move {
            let got = d.data(&path("AAA")).await;
            (got.1 != "HIT").then_some(got)
        }
    })
    .await;
    assert_eq!((s, x.as_str()), (200, "STALE"), "{body}");
    assert_eq!(body["cache"]["status"], "stale");
    assert_eq!(mock.arrivals("/q/").len(), 1);

    // A ticker with nothing cached gets the 429.
    let (s, _, body) = d.data(&path("BBB")).await;
    assert_eq!(s, 429, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_429_stops_both_daemons_for_its_retry_after() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", Canned::too_many_requests(3));
    let redis = RedisServer::start();
    let shared = shared_redis(&redis, &unique("b"));
    // A generous budget: only the upstream's refusal can stop these calls.
    let src = plugin("rate_limit = \"100/s\",");
    let a = start(&shared, &mock, &src, "").await;
    let b = start(&shared, &mock, &src, "").await;

    let r = a.get(&path("AAA")).await;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("429"), "{body}");
    let refused_at = mock.arrivals("/q/")[0];

    // The other daemon does not call the upstream while the plugin cools down.
    mock.on("/q/*", ok_answer());
    let (s, _, body) = b.data(&path("BBB")).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(
        mock.arrivals("/q/").len(),
        1,
        "no call started anywhere during the cool-down"
    );
    let (_, info) = b.get_json("/v1/plugins/counted").await;
    assert!(info["cooldown_until"].is_string(), "{info}");
    assert!(metric(&a.metrics().await, "plugin_cooldown_seconds", &[("plugin", "counted")]) > 0.0);
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "upstream_rate_limited_total",
            &[("plugin", "counted"), ("reason", "upstream")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &b.metrics().await,
            "upstream_rate_limited_total",
            &[("plugin", "counted"), ("reason", "cooldown")]
        ),
        1.0
    );

    // Both resume after the Retry-After.
    for (d, t) in [(&b, "BBB"), (&a, "AAA")] {
        wait_for("the cool-down to end", Duration::from_secs(15), || async move {
            (d.data(&path(t)).await.0 == 200).then_some(())
        })
        .await;
    }
    let arrivals = mock.arrivals("/q/");
    assert_eq!(arrivals.len(), 3, "one refused call, then one call per daemon");
    let resumed_after = arrivals[1].duration_since(refused_at);
    assert!(
        resumed_after >= Duration::from_millis(2900),
        "a call started {resumed_after:?} after a Retry-After of 3 s"
    );
    assert!(a.log().contains("cools down fleet-wide"), "{}", a.log());
    wait_for(
        "the end of the cool-down to be logged",
        Duration::from_secs(10),
        || async { a.log().contains("cool-down over").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_each_daemon_keeps_the_limit_alone() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", ok_answer());
    let src = plugin("rate_limit = \"2/s\",\n  max_wait = \"200ms\",");
    let d = DaemonBuilder::new(&common::daemon::dead_redis_url())
        .plugin("counted", &src)
        .env("MOCK_BASE", &mock.base)
        .start()
        .await;
    let mut statuses = Vec::new();
    for t in ["A1", "A2", "A3"] {
        statuses.push(d.data(&path(t)).await.0);
    }
    assert_eq!(statuses, [200, 200, 429], "the third call within a second has no turn");
    assert_eq!(mock.arrivals("/q/").len(), 2);
    assert!(
        d.log().contains("each daemon keeps its plugins' rate_limit alone"),
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ndjson_streams_one_line_per_ticker_with_a_failing_one_among_them() {
    let mock = MockUpstream::start().await;
    // Each answer takes 200 ms, so calls in flight overlap at the upstream.
    mock.on("/q/*", ok_answer().delayed(Duration::from_millis(200)));
    mock.on("/q/BAD", Canned::text(500, "boom"));
    let redis = RedisServer::start();
    let shared = shared_redis(&redis, &unique("b"));
    let src = plugin("rate_limit = \"50/s\",\n  max_concurrency = 4,");
    let d = start(&shared, &mock, &src, "").await;
    let day = today();

    let tickers: Vec<String> = (0..20).map(|i| format!("T{i}")).chain(["BAD".into()]).collect();
    let url = d.url(&format!(
        "/v1/data/counted?tickers={}&start={day}&end={day}",
        tickers.join(",").to_lowercase()
    ));
    let r = d.http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 21, "{text}");
    let mut seen: Vec<String> = lines.iter().map(|l| l["ticker"].as_str().unwrap().to_owned()).collect();
    seen.sort();
    let mut want = tickers.clone();
    want.sort();
    assert_eq!(seen, want, "one line per ticker, upper-cased");
    for l in &lines {
        if l["ticker"] == "BAD" {
            assert_eq!(l["error"]["code"], "plugin_error", "{l}");
            assert!(l["error"]["message"].as_str().unwrap().contains("500"), "{l}");
        } else {
            assert_eq!(l["plugin"], "counted", "{l}");
            assert_eq!(l["bars"][0]["date"], day.as_str(), "{l}");
            assert_eq!(l["cache"]["status"], "miss", "{l}");
        }
    }
    // Within max_concurrency: a fifth call can only start once one of four
    // (each 200 ms long) is over, so no 150 ms holds more than 4 arrivals.
    let arrivals = mock.arrivals("/q/");
    assert_eq!(arrivals.len(), 21);
    let busiest = busiest_window(&arrivals, Duration::from_millis(150));
    assert!(
        busiest <= 4,
        "{busiest} calls started within 150 ms (max_concurrency 4)"
    );

    // Bad input is a 400 naming it, before anything streams.
    let (s, body) = d
        .get_json(&format!(
            "/v1/data/counted?tickers=AAPL,NOT%20ONE&start={day}&end={day}"
        ))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["field"], "tickers");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("\"NOT ONE\""),
        "{body}"
    );
    let many: Vec<String> = (0..1001).map(|i| format!("X{i}")).collect();
    let (s, body) = d
        .get_json(&format!("/v1/data/counted?tickers={}", many.join(",")))
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("1000"), "{body}");
    let (s, body) = d.get_json("/v1/data/nosuch?tickers=AAPL").await;
    assert_eq!((s, body["error"]["code"].as_str()), (404, Some("plugin_not_found")));

    // A second pass is served from the cache (same pipeline, same cache).
    let text = d.http.get(&url).send().await.unwrap().text().await.unwrap();
    let hits = text.lines().filter(|l| l.contains("\"status\":\"hit\"")).count();
    assert_eq!(hits, 20, "{text}");
}
