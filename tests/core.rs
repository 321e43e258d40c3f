//! The core pipeline end to end: the real binary, a real redis-server, real HTTP.

mod common;

use std::time::Duration;

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
    // Defaults: no dates means yesterday..yesterday, lower-case ticker is upper-cased.
    let (s, body) = d.get_json("/v1/data/synthetic/msft").await;
    assert!(s == 200 || s == 404, "{body}");
    let yesterday = (chrono::Utc::now().date_naive() - chrono::Days::new(1)).to_string();
    if s == 200 {
        assert_eq!(body["start"], yesterday);
        assert_eq!(body["end"], yesterday);
        assert_eq!(body["ticker"], "MSFT");
    } else {
        assert_eq!(body["error"]["code"], "no_data", "a weekend yesterday has no bars");
    }
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

#[tokio::test]
async fn refresh_bypasses_the_read_and_overwrites() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    assert_eq!(data(&d, JAN).await.1, "MISS");
    let (s, x, body) = data(&d, &format!("{JAN}&refresh=true")).await;
    assert_eq!((s, x.as_str()), (200, "BYPASS"));
    assert_eq!(body["cache"]["status"], "bypass");
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "plugin_fetch_duration_seconds_count", &[("plugin", "synthetic")]),
        Some(2.0)
    );
    let (_, x, body2) = data(&d, JAN).await;
    assert_eq!(x, "HIT");
    assert_eq!(
        body2["fetched_at"], body["fetched_at"],
        "the refresh overwrote the entry"
    );
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

const SLOW_PLUGIN: &str = r#"
return {
  description = "busy for 300 ms, then one bar",
  ttl = "1h",
  fetch = function(req)
    local t = os.clock()
    while os.clock() - t < 0.3 do end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5, volume = 10 } } }
  end,
}
"#;

#[tokio::test]
async fn fifty_concurrent_misses_make_one_plugin_call() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("slow", SLOW_PLUGIN)
        .start()
        .await;
    let path = "/v1/data/slow/AAPL?start=2024-01-02&end=2024-01-02";
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url) = (d.http.clone(), d.url(path));
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.headers()["x-cache"].to_str().unwrap().to_owned())
        }));
    }
    let mut misses = 0;
    for t in tasks {
        let (s, x) = t.await.unwrap();
        assert_eq!(s, 200);
        misses += usize::from(x == "MISS");
    }
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "plugin_fetch_duration_seconds_count", &[("plugin", "slow")]),
        Some(1.0),
        "one plugin call"
    );
    let coalesced = expect_metric(&m, "fetch_coalesced_total", &[("plugin", "slow")]);
    assert_eq!(
        coalesced as usize + 1,
        misses,
        "every other miss waited for the one call"
    );
    assert!(misses >= 2, "the requests overlapped ({misses} misses)");
}

/// Calls of one Redis command so far (`INFO commandstats`).
fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let mut c = redis.conn();
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut c).expect("INFO");
    let tag = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&tag))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn requests_arriving_during_a_miss_wait_for_it_without_asking_redis() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("slow", SLOW_PLUGIN)
        .start()
        .await;
    let path = "/v1/data/slow/MSFT?start=2024-01-02&end=2024-01-02";
    let (http, url) = (d.http.clone(), d.url(path));
    let first = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    wait_for(
        "the first request's fetch to be running",
        Duration::from_secs(5),
        || async {
            let (_, stats) = d.get_json("/v1/stats").await;
            (stats["inflight_fetches"] == 1).then_some(())
        },
    )
    .await;
    let reads_before = redis_calls(&redis, "hmget");
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
    for f in followers {
        let (s, x, body) = f.await.unwrap();
        assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
        assert_eq!(body["bars"][0]["close"], 1.5);
    }
    assert_eq!(first.await.unwrap().unwrap(), 200);
    assert_eq!(
        redis_calls(&redis, "hmget"),
        reads_before,
        "followers of a running miss read redis"
    );
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "plugin_fetch_duration_seconds_count", &[("plugin", "slow")]),
        Some(1.0)
    );
    assert_eq!(metric(&m, "fetch_coalesced_total", &[("plugin", "slow")]), Some(20.0));
    assert_eq!(metric(&m, "cache_misses_total", &[("plugin", "slow")]), Some(21.0));
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
    assert_eq!(metric(&d.metrics().await, "redis_up", &[]), Some(0.0));

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
