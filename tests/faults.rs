//! Faults and fleets: one upstream call per key across daemons, Redis
//! outages (killed, hung with SIGSTOP), stale-if-error, negative caching.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, DaemonBuilder, RedisServer, counter_or_zero, expect_metric, metric, unique, wait_for};
use serde_json::Value;

fn slow_plugin(ms: u32, timeout: &str) -> String {
    format!(
        r#"
return {{
  ttl = "1h",
  timeout = "{timeout}",
  fetch = function(req)
    local t = os.clock()
    while os.clock() - t < {secs} do end
    return {{ bars = {{ {{ date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 }} }} }}
  end,
}}
"#,
        secs = f64::from(ms) / 1000.0
    )
}

const OK_PLUGIN: &str = r#"
return {
  ttl = 1,
  settled_ttl = 1,
  fetch = function(req)
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 } }, meta = { v = "good" } }
  end,
}
"#;

const FAILING_PLUGIN: &str = r#"
return {
  ttl = 1,
  settled_ttl = 1,
  fetch = function(req)
    errors.upstream("the source is down")
  end,
}
"#;

fn shared_config(redis: &RedisServer, prefix: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\nop_timeout = \"250ms\"\nconnect_timeout = \"250ms\"\nbackoff = \"300ms\"\n",
        redis.url()
    )
}

async fn fetch_count(d: &Daemon, plugin: &str) -> f64 {
    expect_metric(
        &d.metrics().await,
        "plugin_fetch_duration_seconds_count",
        &[("plugin", plugin)],
    )
}

async fn status(d: &Daemon, path: &str) -> (u16, String, Value) {
    d.data(path).await
}

#[tokio::test]
async fn concurrent_misses_across_two_daemons_make_one_upstream_call() {
    let redis = RedisServer::start();
    let prefix = unique("fleet");
    let cfg = shared_config(&redis, &prefix);
    let a = DaemonBuilder::new(&redis.url())
        .plugin("slow", &slow_plugin(400, "5s"))
        .config(&cfg)
        .start()
        .await;
    let b = DaemonBuilder::new(&redis.url())
        .plugin("slow", &slow_plugin(400, "5s"))
        .config(&cfg)
        .start()
        .await;
    let path = "/v1/data/slow/AAPL?start=2024-01-02&end=2024-01-02";
    let mut tasks = Vec::new();
    for d in [&a, &b] {
        for _ in 0..20 {
            let (http, url) = (d.http.clone(), d.url(path));
            tasks.push(tokio::spawn(async move {
                http.get(url).send().await.unwrap().status().as_u16()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let calls = fetch_count(&a, "slow").await + fetch_count(&b, "slow").await;
    assert_eq!(calls, 1.0, "one upstream call for the whole fleet");
    // The lock went away with the write (released in the same round trip).
    let mut c = redis.conn();
    let lock = format!("{prefix}:lock:slow:1:{{AAPL}}");
    let exists: bool = redis::cmd("EXISTS").arg(&lock).query(&mut c).unwrap();
    assert!(!exists, "{lock} was released");
}

#[tokio::test]
async fn a_daemon_dying_with_the_lock_delays_others_by_at_most_the_lock_ttl() {
    let redis = RedisServer::start();
    let prefix = unique("fleet");
    let cfg = shared_config(&redis, &prefix);
    // timeout 2s -> lock TTL 3s
    let mut a = DaemonBuilder::new(&redis.url())
        .plugin("slow", &slow_plugin(1500, "2s"))
        .config(&cfg)
        .start()
        .await;
    let b = DaemonBuilder::new(&redis.url())
        .plugin("slow", &slow_plugin(300, "2s"))
        .config(&cfg)
        .start()
        .await;
    let path = "/v1/data/slow/AAPL?start=2024-01-02&end=2024-01-02";
    let (http, url) = (a.http.clone(), a.url(path));
    let _doomed = tokio::spawn(async move { http.get(url).send().await });
    let lock_key = format!("{prefix}:lock:slow:1:{{AAPL}}");
    wait_for("daemon A to take the fleet lock", Duration::from_secs(5), || async {
        let mut c = redis.conn();
        let exists: bool = redis::cmd("EXISTS").arg(&lock_key).query(&mut c).unwrap();
        exists.then_some(())
    })
    .await;
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(5)).await;
    let started = Instant::now();
    let (s, _, body) = status(&b, path).await;
    let took = started.elapsed();
    assert_eq!(s, 200, "{body}");
    assert!(took < Duration::from_millis(3000 + 300 + 1500), "waited {took:?}");
}

#[tokio::test]
async fn redis_hung_with_sigstop_still_answers_within_op_timeout_plus_fetch() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    assert_eq!(
        status(&d, "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31")
            .await
            .0,
        200
    );
    redis.pause();
    for i in 0..10 {
        let started = Instant::now();
        let (s, _, body) = status(&d, &format!("/v1/data/synthetic/H{i}?start=2024-01-01&end=2024-01-31")).await;
        let took = started.elapsed();
        assert_eq!(s, 200, "{body}");
        assert!(
            took < Duration::from_millis(1500),
            "request {i} took {took:?} with redis hung"
        );
    }
    assert_eq!(metric(&d.metrics().await, "redis_up", &[]), Some(0.0));
    redis.resume();
    wait_for("redis_up back to 1", Duration::from_secs(10), || async {
        (metric(&d.metrics().await, "redis_up", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let (s, _, body) = status(&d, "/v1/data/synthetic/AFTER?start=2024-01-01&end=2024-01-31").await;
    assert_eq!(s, 200);
    assert_eq!(body["cache"]["layer"], "redis");
}

#[tokio::test]
async fn redis_restarted_under_concurrent_load_fails_no_request() {
    let mut redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (http, base, stop) = (d.http.clone(), d.base.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let url = format!(
                    "{base}/v1/data/synthetic/W{w}X{}?start=2024-01-01&end=2024-01-31",
                    i % 25
                );
                match http.get(url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
                i += 1;
            }
            (ok, failed)
        }));
    }
    wait_for("some load before the restart", Duration::from_secs(10), || async {
        (counter_or_zero(&d.metrics().await, "stock_requests_total", &[("plugin", "synthetic")]) > 200.0).then_some(())
    })
    .await;
    redis.restart();
    wait_for("redis_up after the restart", Duration::from_secs(10), || async {
        (metric(&d.metrics().await, "redis_up", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let before = expect_metric(&d.metrics().await, "stock_requests_total", &[("plugin", "synthetic")]);
    wait_for("load after the restart", Duration::from_secs(10), || async {
        (expect_metric(&d.metrics().await, "stock_requests_total", &[("plugin", "synthetic")]) > before + 200.0)
            .then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 400);
}

#[tokio::test]
async fn stale_if_error_serves_the_expired_entry_and_errors_are_never_cached() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("p", OK_PLUGIN)
        .config("[cache]\nstale_if_error = \"1h\"\n")
        .start()
        .await;
    let path = "/v1/data/p/AAPL?start=2024-01-02&end=2024-01-02";
    assert_eq!(status(&d, path).await.1, "MISS");
    // Break the source; once the 1 s freshness has passed, the stale copy
    // (kept for stale_if_error) stands in.
    std::fs::write(d.plugins_dir.join("p.lua"), FAILING_PLUGIN).unwrap();
    wait_for("the failing version to answer", Duration::from_secs(10), || async {
        let (s, x, body) = status(&d, path).await;
        (s == 200 && x == "STALE").then_some(body)
    })
    .await;
    let (s, x, body) = status(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "STALE"));
    assert_eq!(body["cache"]["status"], "stale");
    assert_eq!(body["meta"]["v"], "good");
    let m = d.metrics().await;
    assert!(expect_metric(&m, "cache_stale_served_total", &[("plugin", "p")]) >= 2.0);
    // The failure was not cached: every request asked the plugin again.
    let calls = fetch_count(&d, "p").await;
    status(&d, path).await;
    assert_eq!(fetch_count(&d, "p").await, calls + 1.0);
    // Per date: a range with one date never fetched cannot be served stale.
    let (s, _, body) = status(&d, "/v1/data/p/AAPL?start=2024-01-02&end=2024-01-03").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    // Without a stale copy the error itself comes through.
    let (s, _, body) = status(&d, "/v1/data/p/MSFT?start=2024-01-02&end=2024-01-02").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
}

#[tokio::test]
async fn no_data_is_remembered_for_negative_ttl() {
    let redis = RedisServer::start();
    let empty = r#"return { ttl = "1h", fetch = function(req) return { bars = {} } end }"#;
    let d = DaemonBuilder::new(&redis.url())
        .plugin("empty", empty)
        .config("[cache]\nnegative_ttl = \"1s\"\n")
        .start()
        .await;
    let path = "/v1/data/empty/AAPL?start=2024-01-02&end=2024-01-03";
    let (s, _, body) = status(&d, path).await;
    assert_eq!((s, body["error"]["code"].as_str()), (404, Some("no_data")), "{body}");
    let (s, _, _) = status(&d, path).await;
    assert_eq!(s, 404);
    assert_eq!(
        fetch_count(&d, "empty").await,
        1.0,
        "the second 404 came from the cache"
    );
    wait_for(
        "negative entry to expire and the plugin to be asked again",
        Duration::from_secs(5),
        || async {
            status(&d, path).await;
            (fetch_count(&d, "empty").await >= 2.0).then_some(())
        },
    )
    .await;
}

/// `CLIENT LIST`: one line per connection, this one's own included.
fn client_list(redis: &RedisServer) -> String {
    let mut c = redis.conn();
    redis::cmd("CLIENT").arg("LIST").query(&mut c).expect("CLIENT LIST")
}

/// Clients connected to `redis`, not counting the one asking.
fn daemon_clients(redis: &RedisServer) -> usize {
    client_list(redis).lines().count().saturating_sub(1)
}

/// Twelve requests at once, so the client opens several connections and
/// the daemon deals them to all its HTTP threads. Every one must succeed.
async fn burst(d: &Daemon, tag: &str) {
    let reqs = (0..12).map(|i| {
        let url = d.url(&format!("/v1/data/synthetic/{tag}{i}?start=2024-01-01&end=2024-01-31"));
        let http = d.http.clone();
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    for r in futures::future::join_all(reqs).await {
        assert_eq!(r.expect("request"), 200);
    }
}

/// Bursts (new keys each time, tagged `prefix`) until `done` holds, for up
/// to 10 s: the HTTP threads open their connections as requests reach them.
async fn burst_until(d: &Daemon, what: &str, prefix: &str, done: impl Fn() -> bool) {
    let mut round = 0;
    wait_for(what, Duration::from_secs(10), || {
        round += 1;
        let tag = format!("{prefix}{round}X");
        let done = &done;
        async move {
            burst(d, &tag).await;
            done().then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn each_http_thread_keeps_its_own_redis_connection_across_a_restart() {
    let mut redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config("http_threads = 3\n")
        .start()
        .await;
    // The shared connection plus one per HTTP thread, and no more: a thread
    // that leaked connections would push the count past 4.
    burst_until(&d, "a redis connection per HTTP thread", "A", || {
        daemon_clients(&redis) == 4
    })
    .await;
    burst(&d, "MORE").await;
    assert_eq!(daemon_clients(&redis), 4);

    redis.restart();
    wait_for("redis_up after the restart", Duration::from_secs(10), || async {
        (metric(&d.metrics().await, "redis_up", &[]) == Some(1.0)).then_some(())
    })
    .await;
    burst_until(&d, "the HTTP threads' connections reopened", "B", || {
        daemon_clients(&redis) == 4
    })
    .await;
    // Entries written after the restart are in the new server.
    let (s, _, body) = status(&d, "/v1/data/synthetic/AFTERRESTART?start=2024-01-01&end=2024-01-31").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["cache"]["layer"], "redis");
    let mut c = redis.conn();
    let n: usize = redis::cmd("DBSIZE").query(&mut c).expect("DBSIZE");
    assert!(n > 0, "nothing stored in redis after the restart");
}

/// Ids of the clients connected to `redis` under `name` (`CLIENT SETNAME`).
fn client_ids(redis: &RedisServer, name: &str) -> Vec<String> {
    let tag = format!(" name={name} ");
    client_list(redis)
        .lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_thread_losing_its_redis_connection_does_not_open_the_breaker() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config("http_threads = 2\n")
        .start()
        .await;
    let named = ["tickerd", "tickerd-http-0", "tickerd-http-1"];
    burst_until(&d, "the shared and both threads' connections, named", "N", || {
        named.iter().all(|n| client_ids(&redis, n).len() == 1)
    })
    .await;
    // As a server `timeout` or a NAT would: one thread's connection goes away.
    let old = client_ids(&redis, "tickerd-http-0").remove(0);
    let mut c = redis.conn();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&old)
        .query(&mut c)
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);
    // Every request still succeeds (burst asserts 200) and the thread gets a
    // new connection, without the daemon-wide breaker opening.
    burst_until(&d, "thread 0 back on a new connection", "K", || {
        let ids = client_ids(&redis, "tickerd-http-0");
        ids.len() == 1 && ids[0] != old
    })
    .await;
    let m = d.metrics().await;
    assert_eq!(metric(&m, "redis_up", &[]), Some(1.0));
    assert_eq!(
        metric(&m, "redis_breaker_trips_total", &[]),
        Some(0.0),
        "the breaker opened for one thread's lost connection"
    );
}
