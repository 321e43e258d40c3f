//! The core pipeline end to end: the real binary, a real redis-server, real HTTP.

mod common;

use std::time::Duration;

use common::mock_upstream::{Canned, Gate, MockUpstream};
use common::{DaemonBuilder, RedisServer, expect_metric, metric, wait_for};
use serde_json::Value;

const JAN: &str = "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31";

async fn data(d: &common::Daemon, path: &str) -> (u16, String, Value) {
    d.data(path).await
}

fn redis_keys(r: &RedisServer, pattern: &str) -> Vec<String> {
    let mut c = r.conn();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
    keys.sort();
    keys
}

fn prefix_of(r: &RedisServer) -> String {
    // The harness gives each daemon a unique prefix; find it from the index set.
    let keys = redis_keys(r, "*:index:plugins");
    keys.first()
        .and_then(|k| k.strip_suffix(":index:plugins"))
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn miss_then_hit_from_redis_with_ttl_set_and_metrics_moving() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;

    let (s, x, body) = data(&d, JAN).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(x, "MISS");
    assert_eq!(body["cache"]["status"], "miss");
    assert_eq!(body["cache"]["layer"], "redis");
    assert_eq!(body["plugin"], "synthetic");
    assert_eq!(body["ticker"], "AAPL");
    let bars = body["bars"].as_array().unwrap();
    assert_eq!(bars.len(), 23, "January 2024 has 23 business days");
    for b in bars {
        let (o, h, l, c) = (
            b["open"].as_f64().unwrap(),
            b["high"].as_f64().unwrap(),
            b["low"].as_f64().unwrap(),
            b["close"].as_f64().unwrap(),
        );
        assert!(l <= o && o <= h && l <= c && c <= h, "{b}");
        assert!(b["volume"].as_u64().unwrap() > 0);
    }

    // The series is one hash in Redis (docs/ARCHITECTURE.md): a field per
    // date with a bar, the coverage and the meta; it lives for settled_ttl
    // (30 days) plus stale_if_error (1 day).
    let prefix = prefix_of(&redis);
    let key = format!("{prefix}:synthetic:1:{{AAPL}}");
    let mut c = redis.conn();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!(ttl > 31 * 86_400 - 100 && ttl <= 31 * 86_400, "TTL of {key} is {ttl}");
    let kind: String = redis::cmd("TYPE").arg(&key).query(&mut c).unwrap();
    assert_eq!(kind, "hash");
    let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query(&mut c).unwrap();
    assert_eq!(
        fields.len(),
        23 + 2,
        "one field per bar, plus coverage and meta: {fields:?}"
    );
    let bar: String = redis::cmd("HGET").arg(&key).arg("2024-01-01").query(&mut c).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&bar).unwrap(),
        bars[0],
        "the bar is stored once, as served"
    );
    // The plugin's namespace holds the series only (no second stale copy;
    // lock and index live under their own prefixes).
    assert_eq!(redis_keys(&redis, &format!("{prefix}:synthetic:*")), vec![key.clone()]);
    assert!(redis_keys(&redis, &format!("{prefix}:stale:*")).is_empty());

    let before = d.metrics().await;
    let (s, x, body2) = data(&d, JAN).await;
    assert_eq!((s, x.as_str()), (200, "HIT"));
    assert_eq!(body2["cache"]["status"], "hit");
    assert_eq!(body2["cache"]["layer"], "redis");
    assert_eq!(body2["bars"], body["bars"], "a hit serves the same bars");
    assert!(body2["cache"]["ttl_s"].as_u64().unwrap() <= 30 * 86_400);
    assert_eq!(body2["cache"]["fetched_days"], 0);
    assert_eq!(body["cache"]["fetched_days"], 31);
    let after = d.metrics().await;
    let hits = |t: &str| {
        expect_metric(
            t,
            "cache_hits_total",
            &[("plugin", "synthetic"), ("cache_type", "redis")],
        )
    };
    assert_eq!(hits(&after) - hits(&before), 1.0);
    assert_eq!(
        metric(&after, "cache_misses_total", &[("plugin", "synthetic")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&after, "stock_requests_total", &[("plugin", "synthetic")]),
        Some(2.0)
    );
    assert_eq!(
        metric(&after, "stock_requests_success_total", &[("plugin", "synthetic")]),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &after,
            "plugin_fetch_duration_seconds_count",
            &[("plugin", "synthetic")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &after,
            "cache_lookup_duration_seconds_count",
            &[("plugin", "synthetic")]
        ),
        Some(2.0)
    );
    assert_eq!(metric(&after, "redis_up", &[]), Some(1.0));
    assert_eq!(metric(&after, "redis_breaker_trips_total", &[]), Some(0.0));
    assert_eq!(metric(&after, "plugins_loaded", &[]), Some(1.0));

    let (s, stats) = d.get_json("/v1/stats").await;
    assert_eq!(s, 200);
    assert_eq!(stats["hits"]["redis"], 1);
    assert_eq!(stats["misses"], 1);
    assert_eq!(stats["hit_rate"], 0.5);
    assert_eq!(stats["redis"], "up");
}

#[tokio::test]
async fn csv_by_query_and_by_accept_header() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let r = d.get(&format!("{JAN}&format=csv")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert_eq!(r.headers()["x-cache"], "MISS");
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "date,open,high,low,close,volume");
    assert_eq!(lines.len(), 24);
    assert!(lines[1].starts_with("2024-01-01,"));

    let r = d
        .http
        .get(d.url(JAN))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.text().await.unwrap(), text);
}

#[tokio::test]
async fn each_bad_request_is_a_400_naming_the_field() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let cases = [
        (
            "/v1/data/synthetic/BAD:TICKER?start=2024-01-01&end=2024-01-02",
            "ticker",
        ),
        (
            &format!("/v1/data/synthetic/{}?start=2024-01-01", "A".repeat(33)),
            "ticker",
        ),
        ("/v1/data/synthetic/AAPL?start=2024-1-1&end=2024-01-02", "start"),
        ("/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-02-30", "end"),
        ("/v1/data/synthetic/AAPL?start=2024-02-01&end=2024-01-01", "start"),
        ("/v1/data/synthetic/AAPL?end=2024-01-01", "start"),
        (
            "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-02&refresh=perhaps",
            "refresh",
        ),
        (
            "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-02&format=xml",
            "format",
        ),
        (
            "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-02&colour=red",
            "colour",
        ),
    ];
    for (path, field) in cases {
        let (s, body) = d.get_json(path).await;
        assert_eq!(s, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{path}: message {msg:?} should name {field}");
    }
    let (s, body) = d.get_json("/v1/data/nosuch/AAPL").await;
    assert_eq!(s, 404);
    assert_eq!(body["error"]["code"], "plugin_not_found");
    let r = d
        .get(&format!("/v1/data/synthetic/AAPL?start={}", "9".repeat(9000)))
        .await;
    assert_eq!(r.status(), 414);
    let (s, body) = d.get_json("/v1/nosuch").await;
    assert_eq!((s, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let r = reqwest::Client::new()
        .post(d.url("/v1/data/synthetic/AAPL"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
}

/// Answers one bar on `req.start_date` whatever the day (synthetic has no
/// bars on weekends) and reports what it was asked in `meta` and in the
/// bar's `volume` (the number of days asked).
const ECHO: &str = r#"
return {
  ttl = "1h",
  fetch = function(req)
    local days = (date.parse(req.end_date) - date.parse(req.start_date)) // 86400 + 1
    return {
      bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1, volume = days } },
      meta = { ticker = req.ticker, start_date = req.start_date, end_date = req.end_date },
    }
  end,
}
"#;

#[tokio::test]
async fn no_dates_mean_yesterday_and_the_ticker_is_upper_cased() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).plugin("echo", ECHO).start().await;
    let yesterday = || (chrono::Utc::now().date_naive() - chrono::Days::new(1)).to_string();
    let before = yesterday();
    let (s, body) = d.get_json("/v1/data/echo/msft").await;
    let after = yesterday();
    assert_eq!(s, 200, "{body}");
    // Midnight UTC may pass during the request.
    let day = body["start"].as_str().unwrap_or("").to_owned();
    assert!(day == before || day == after, "start {day}, yesterday {before}");
    assert_eq!(body["end"], day.as_str(), "{body}");
    assert_eq!(body["ticker"], "MSFT", "{body}");
    assert_eq!(body["bars"][0]["date"], day.as_str(), "{body}");
    assert_eq!(body["bars"][0]["volume"], 1, "the plugin was asked one day: {body}");
    // What the plugin itself was given.
    assert_eq!(body["meta"]["ticker"], "MSFT", "{body}");
    assert_eq!(body["meta"]["start_date"], day.as_str(), "{body}");
    assert_eq!(body["meta"]["end_date"], day.as_str(), "{body}");

    // Only `start`: the range ends today.
    let today = chrono::Utc::now().date_naive();
    let start = today - chrono::Days::new(3);
    let (s, body) = d.get_json(&format!("/v1/data/echo/ibm?start={start}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["start"], start.to_string());
    let end = body["end"].as_str().unwrap_or("").to_owned();
    assert!(
        end == today.to_string() || end == (today + chrono::Days::new(1)).to_string(),
        "end {end}, today {today}"
    );
    assert_eq!(body["ticker"], "IBM");
}

#[tokio::test]
async fn invalidate_by_plugin_ticker_and_exact_range() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let paths = [
        "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31",
        "/v1/data/synthetic/AAPL?start=2024-02-01&end=2024-02-29",
        "/v1/data/synthetic/MSFT?start=2024-01-01&end=2024-01-31",
        "/v1/data/synthetic/IBM?start=2024-01-01&end=2024-01-31",
    ];
    for p in paths {
        assert_eq!(data(&d, p).await.1, "MISS");
    }
    for p in paths {
        assert_eq!(data(&d, p).await.1, "HIT");
    }
    let del = |q: &'static str| {
        let http = d.http.clone();
        let url = d.url(&format!("/v1/cache?{q}"));
        async move {
            let r = http.delete(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Exact range: only those dates of that series (counted per series).
    let (s, b) = del("ticker=aapl&start=2024-02-01&end=2024-02-29").await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(data(&d, paths[1]).await.1, "MISS");
    assert_eq!(data(&d, paths[0]).await.1, "HIT");
    // Only part of a range: the rest stays cached, the removed days are asked again.
    let (s, b) = del("ticker=aapl&start=2024-01-20&end=2024-01-31").await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(data(&d, paths[0]).await.1, "PARTIAL");
    // Ticker: the AAPL series, nothing else.
    let (s, b) = del("plugin=synthetic&ticker=AAPL").await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(data(&d, paths[2]).await.1, "HIT");
    assert_eq!(data(&d, paths[0]).await.1, "MISS");
    // Plugin: everything of the plugin (AAPL x1 re-cached, MSFT, IBM).
    let (s, b) = del("plugin=synthetic").await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(3)), "{b}");
    for p in &paths[2..] {
        assert_eq!(data(&d, p).await.1, "MISS");
    }
    // Rules: need plugin or ticker; start and end together.
    assert_eq!(del("start=2024-01-01&end=2024-01-31").await.0, 400);
    assert_eq!(del("ticker=AAPL&start=2024-01-01").await.0, 400);
    // Nothing left to delete is 0, not an error.
    assert_eq!(del("ticker=ZZZZ").await.1["deleted"], 0);

    // The CLI deletes through the same index.
    let prefix = prefix_of(&redis);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cfg.path(),
        format!("[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n", redis.url()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickerd"))
        .args(["invalidate", "--ticker", "MSFT", "--config"])
        .arg(cfg.path())
        .arg("--plugins")
        .arg(&d.plugins_dir)
        .env_remove("TICKERD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert_eq!(data(&d, paths[2]).await.1, "MISS");
}

/// One bar whose prices are the mock's answer: the number of the call, so
/// every fetch gives a different bar.
const NUMBERED: &str = r#"
return {
  ttl = "1h",
  env = { "MOCK" },
  fetch = function(req)
    local res = http.get(env.get("MOCK") .. "/n", { query = { t = req.ticker } })
    if res.status ~= 200 then error("mock answered " .. res.status) end
    local n = tonumber(res.body)
    return { bars = { { date = req.start_date, open = n, high = n, low = n, close = n } } }
  end,
}
"#;

#[tokio::test]
async fn refresh_bypasses_the_read_and_overwrites() {
    let mock = MockUpstream::start().await;
    mock.on("/n", Canned::text(200, "{call}").numbered());
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("numbered", NUMBERED)
        .env("MOCK", &mock.base)
        .start()
        .await;
    let path = "/v1/data/numbered/AAPL?start=2024-01-02&end=2024-01-02";
    let (s, x, body) = data(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    assert_eq!(body["bars"][0]["close"], 1.0);
    let (s, x, body) = data(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "HIT"), "{body}");
    assert_eq!(body["bars"][0]["close"], 1.0);

    let (s, x, body) = data(&d, &format!("{path}&refresh=true")).await;
    assert_eq!((s, x.as_str()), (200, "BYPASS"), "{body}");
    assert_eq!(body["cache"]["status"], "bypass");
    assert_eq!(body["bars"][0]["close"], 2.0, "the refresh asked the plugin again");
    assert_eq!(mock.count("/n"), 2);

    let (s, x, body) = data(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "HIT"), "{body}");
    assert_eq!(body["bars"][0]["close"], 2.0, "the refresh overwrote the cached bar");
    assert_eq!(mock.count("/n"), 2, "the read after the refresh was a hit");
}

#[tokio::test]
async fn a_corrupt_value_is_a_miss_counted_as_an_error_then_overwritten() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    assert_eq!(data(&d, JAN).await.1, "MISS");
    let prefix = prefix_of(&redis);
    let key = format!("{prefix}:synthetic:1:{{AAPL}}");
    let mut c = redis.conn();
    // One damaged bar: that date is fetched again, the rest is served.
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("2024-01-10")
        .arg("{\"not\": \"ours\"")
        .query(&mut c)
        .unwrap();
    let (s, x, body) = data(&d, JAN).await;
    assert_eq!((s, x.as_str()), (200, "PARTIAL"), "{body}");
    assert_eq!(body["cache"]["fetched_days"], 1, "{body}");
    assert_eq!(
        metric(&d.metrics().await, "cache_errors_total", &[("plugin", "synthetic")]),
        Some(1.0)
    );
    let bar: String = redis::cmd("HGET").arg(&key).arg("2024-01-10").query(&mut c).unwrap();
    assert!(
        bar.starts_with("{\"date\":\"2024-01-10\""),
        "overwritten with a good bar: {bar}"
    );
    assert_eq!(data(&d, JAN).await.1, "HIT");

    // A key of the wrong type where the series belongs: a miss, counted,
    // never a 5xx, replaced by the next write.
    let _: () = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
    let _: () = redis::cmd("SADD").arg(&key).arg("garbage").query(&mut c).unwrap();
    let (s, x, body) = data(&d, JAN).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    assert_eq!(
        expect_metric(&d.metrics().await, "cache_errors_total", &[("plugin", "synthetic")]),
        2.0
    );
    let kind: String = redis::cmd("TYPE").arg(&key).query(&mut c).unwrap();
    assert_eq!(kind, "hash");
    assert_eq!(data(&d, JAN).await.1, "HIT");

    // Garbage coverage: dropped and rebuilt by the next write.
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("c")
        .arg("1:2:zz")
        .query(&mut c)
        .unwrap();
    let (s, x, _) = data(&d, JAN).await;
    assert_eq!((s, x.as_str()), (200, "MISS"));
    assert_eq!(data(&d, JAN).await.1, "HIT");
}

/// One bar, after the mock's `/gate` answers: a test holds the fetch there.
const GATED: &str = r#"
return {
  ttl = "1h",
  timeout = "60s",
  env = { "MOCK" },
  fetch = function(req)
    local res = http.get(env.get("MOCK") .. "/gate", { timeout = "60s" })
    if res.status ~= 200 then error("mock answered " .. res.status) end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5, volume = 10 } } }
  end,
}
"#;

/// A daemon with the gated plugin, its mock (holding every fetch on `gate`) and Redis.
async fn gated_daemon(gate: &Gate) -> (common::Daemon, MockUpstream, RedisServer) {
    let mock = MockUpstream::start().await;
    mock.on("/gate", Canned::text(200, "ok").gated(gate));
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("gated", GATED)
        .env("MOCK", &mock.base)
        .start()
        .await;
    (d, mock, redis)
}

/// Waits until `n` requests have reached the pipeline (`stock_requests_total`
/// counts a request as it arrives; `fetch_coalesced_total` only once the
/// fetch it waited for is over).
async fn wait_arrived(d: &common::Daemon, n: f64) {
    wait_for(&format!("{n} requests to arrive"), Duration::from_secs(30), || async {
        let m = d.metrics().await;
        (metric(&m, "stock_requests_total", &[("plugin", "gated")]) == Some(n)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_plugin_call() {
    let gate = Gate::new();
    let (d, mock, _redis) = gated_daemon(&gate).await;
    let path = "/v1/data/gated/AAPL?start=2024-01-02&end=2024-01-02";
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url) = (d.http.clone(), d.url(path));
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.headers()["x-cache"].to_str().unwrap().to_owned())
        }));
    }
    // Every request is in while the one fetch is held at the mock.
    wait_arrived(&d, 50.0).await;
    wait_for("the fetch to reach the mock", Duration::from_secs(30), || async {
        (mock.in_flight() >= 1).then_some(())
    })
    .await;
    assert_eq!(mock.count("/gate"), 1, "one plugin call while 49 wait");
    gate.open();
    for t in tasks {
        let (s, x) = t.await.unwrap();
        assert_eq!((s, x.as_str()), (200, "MISS"));
    }
    assert_eq!(mock.count("/gate"), 1, "one upstream call in all");
    let m = d.metrics().await;
    assert_eq!(metric(&m, "fetch_coalesced_total", &[("plugin", "gated")]), Some(49.0));
    assert_eq!(
        metric(&m, "plugin_fetch_duration_seconds_count", &[("plugin", "gated")]),
        Some(1.0),
        "one plugin call"
    );
}

#[tokio::test]
async fn requests_arriving_during_a_miss_wait_for_it_without_asking_redis() {
    let gate = Gate::new();
    let (d, mock, redis) = gated_daemon(&gate).await;
    let path = "/v1/data/gated/MSFT?start=2024-01-02&end=2024-01-02";
    let (http, url) = (d.http.clone(), d.url(path));
    let first = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    wait_for(
        "the first request's fetch to be held at the mock",
        Duration::from_secs(30),
        || async { (mock.in_flight() == 1).then_some(()) },
    )
    .await;
    let reads_before = redis.command_calls("hmget");
    let followers: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (d.http.clone(), d.url(path));
            tokio::spawn(async move {
                let r = http.get(url).send().await.expect("GET");
                let x = r.headers()["x-cache"].to_str().unwrap_or("").to_owned();
                (r.status().as_u16(), x, r.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    wait_arrived(&d, 21.0).await;
    gate.open();
    for f in followers {
        let (s, x, body) = f.await.unwrap();
        assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
        assert_eq!(body["bars"][0]["close"], 1.5);
    }
    assert_eq!(first.await.unwrap().unwrap(), 200);
    assert_eq!(
        redis.command_calls("hmget"),
        reads_before,
        "followers of a running miss read redis"
    );
    assert_eq!(mock.count("/gate"), 1);
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "plugin_fetch_duration_seconds_count", &[("plugin", "gated")]),
        Some(1.0)
    );
    assert_eq!(metric(&m, "fetch_coalesced_total", &[("plugin", "gated")]), Some(20.0));
    assert_eq!(metric(&m, "cache_misses_total", &[("plugin", "gated")]), Some(21.0));
}

#[tokio::test]
async fn redis_absent_from_the_start_serves_from_memory() {
    let url = common::daemon::dead_redis_url();
    let d = DaemonBuilder::new(&url).bundled("synthetic").start().await;
    let (s, ready) = d.get_json("/readyz").await;
    assert_eq!(s, 200);
    assert_eq!(ready["redis"], "down");
    let (s, x, body) = data(&d, JAN).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    assert_eq!(body["cache"]["layer"], "memory");
    let (s, x, body) = data(&d, JAN).await;
    assert_eq!((s, x.as_str()), (200, "HIT"));
    assert_eq!(body["cache"]["layer"], "memory");
    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cache_hits_total",
            &[("plugin", "synthetic"), ("cache_type", "memory")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "redis_up", &[]), Some(0.0));
    assert_eq!(d.get_json("/v1/stats").await.1["memory_entries"], 1);
}

#[tokio::test]
async fn redis_killed_mid_test_then_back() {
    let mut redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    assert_eq!(data(&d, JAN).await.1, "MISS");
    redis.kill();
    for i in 0..20 {
        let path = format!("/v1/data/synthetic/T{i}?start=2024-01-01&end=2024-01-05");
        let (s, _, body) = data(&d, &path).await;
        assert_eq!(s, 200, "request {i} with redis down: {body}");
    }
    // The entry fetched before the outage is still served, from memory.
    let (s, x, body) = data(&d, JAN).await;
    assert_eq!((s, x.as_str()), (200, "HIT"));
    assert_eq!(body["cache"]["layer"], "memory");
    let m = d.metrics().await;
    assert_eq!(metric(&m, "redis_up", &[]), Some(0.0));
    assert!(
        expect_metric(&m, "redis_breaker_trips_total", &[]) >= 1.0,
        "the outage opened the breaker"
    );

    redis.restart();
    wait_for("redis_up to return to 1", Duration::from_secs(10), || async {
        (metric(&d.metrics().await, "redis_up", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let (s, x, body) = data(&d, "/v1/data/synthetic/NEW?start=2024-01-01&end=2024-01-05").await;
    assert_eq!((s, x.as_str()), (200, "MISS"));
    assert_eq!(body["cache"]["layer"], "redis", "new entries land in redis again");
}

#[tokio::test]
async fn admin_routes_need_the_token_when_one_is_set() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .env("TICKERD_ADMIN_TOKEN", "s3cret")
        .start()
        .await;
    let url = d.url("/v1/cache?plugin=synthetic");
    let r = d.http.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = d.http.delete(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = d.http.delete(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = d.http.post(d.url("/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = d
        .http
        .post(d.url("/v1/reload"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_routes_without_a_token_refuse_a_non_loopback_listener() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .listen("0.0.0.0:0")
        .start()
        .await;
    let port = d.port;
    let r = d
        .http
        .delete(format!("http://127.0.0.1:{port}/v1/cache?plugin=synthetic"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TICKERD_ADMIN_TOKEN")
    );
}

#[tokio::test]
async fn plugins_routes_describe_each_plugin() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let (s, list) = d.get_json("/v1/plugins").await;
    assert_eq!(s, 200);
    let p = &list.as_array().unwrap()[0];
    assert_eq!(p["name"], "synthetic");
    assert_eq!(p["status"], "ok");
    assert_eq!(p["ttl_s"], 86400);
    assert_eq!(p["version"].as_str().unwrap().len(), 64);
    assert!(p["loaded_at"].is_string());
    assert!(p["last_error"].is_null());
    let (s, one) = d.get_json("/v1/plugins/synthetic").await;
    assert_eq!((s, &one), (200, p));
    assert_eq!(d.get_json("/v1/plugins/nosuch").await.0, 404);
    assert_eq!(d.get_json("/healthz").await.0, 200);
}

#[tokio::test]
async fn config_overrides_the_plugin_ttl() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config("[plugins.synthetic]\nttl = \"90s\"\nsettled_ttl = \"2h\"\n")
        .start()
        .await;
    // The live edge (today) is fresh for the plugin's ttl ...
    let today = chrono::Utc::now().date_naive();
    let week = format!(
        "/v1/data/synthetic/AAPL?start={}&end={today}",
        today - chrono::Days::new(6)
    );
    let (s, _, body) = data(&d, &week).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["cache"]["ttl_s"], 90, "{body}");
    // ... settled history for settled_ttl.
    let (_, _, body) = data(&d, JAN).await;
    assert_eq!(body["cache"]["ttl_s"], 7200, "{body}");
    let prefix = prefix_of(&redis);
    let mut c = redis.conn();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:synthetic:1:{{AAPL}}"))
        .query(&mut c)
        .unwrap();
    assert!(
        (86_400 + 7100..=86_400 + 7200).contains(&ttl),
        "settled_ttl + stale_if_error: {ttl}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let redis = RedisServer::start();
    let mut d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    assert_eq!(data(&d, JAN).await.0, 200);
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).await, Some(0));
}
