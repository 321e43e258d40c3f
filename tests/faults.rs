//! Faults and fleets: one upstream call per key across daemons, Redis
//! outages (killed, hung with SIGSTOP), stale-if-error, negative caching.

mod common;

use std::time::{Duration, Instant};

use common::mock_upstream::{Canned, Gate, MockUpstream};
use common::{Daemon, DaemonBuilder, RedisServer, counter_or_zero, error_of, expect_metric, metric, unique, wait_for};
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
    // The event that matters: B took the lock once its TTL ran out, rather
    // than giving up on it after twice the TTL (6 s) and fetching without it.
    assert!(
        !b.log().contains("held the fetch lock of this ticker too long"),
        "B waited out 2x the lock TTL instead of taking the expired lock:\n{}",
        common::tail(&b.log(), 20)
    );
    assert_eq!(fetch_count(&b, "slow").await, 1.0, "B fetched once, under the lock");
    // And a bound a loaded 2-core machine meets: the 3 s TTL, B's 0.3 s of
    // CPU-bound fetch (which a busy machine stretches) and a margin, still
    // below the 6 s after which B would have stopped waiting for the lock.
    assert!(took < Duration::from_millis(3000 + 2900), "waited {took:?}");
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
        // Without op_timeout a request would hang as long as Redis does
        // (here: until the client's 30 s timeout). The bound is op_timeout
        // (250 ms) per Redis call plus a fast fetch, with the margin a loaded
        // 2-core machine needs; a hang still fails it by far.
        assert!(
            took < Duration::from_secs(4),
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
        .config("[cache]\nnegative_ttl = \"5s\"\n")
        .start()
        .await;
    let path = "/v1/data/empty/AAPL?start=2024-01-02&end=2024-01-03";
    let (s, _, body) = status(&d, path).await;
    assert_eq!((s, body["error"]["code"].as_str()), (404, Some("no_data")), "{body}");
    // negative_ttl is 5 s so that a loaded machine gets the second request
    // in well within it (with 1 s, a stall between the two requests let the
    // entry expire first).
    let (s, _, _) = status(&d, path).await;
    assert_eq!(s, 404);
    assert_eq!(
        fetch_count(&d, "empty").await,
        1.0,
        "the second 404 came from the cache"
    );
    wait_for(
        "negative entry to expire and the plugin to be asked again",
        Duration::from_secs(20),
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

/// Fails with the mock's status once the mock answers non-200; the test
/// holds the answer on a gate.
const GATED_SOURCE: &str = r#"
return {
  ttl = "1h",
  timeout = "30s",
  env = { "MOCK" },
  fetch = function(req)
    local res = http.get(env.get("MOCK") .. "/q/" .. req.ticker, { timeout = "30s" })
    if res.status ~= 200 then errors.upstream("the source answered " .. res.status) end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 } } }
  end,
}
"#;

/// README "Fleet lock": daemons waiting on another daemon's lock answer the
/// holder's error instead of calling the upstream again.
#[tokio::test]
async fn a_lock_holders_error_reaches_the_daemon_waiting_on_the_lock() {
    let mock = MockUpstream::start().await;
    let gate = Gate::new();
    mock.on("/q/*", Canned::text(500, "down").gated(&gate));
    let redis = RedisServer::start();
    let prefix = unique("fleet");
    let cfg = shared_config(&redis, &prefix);
    let mut daemons = Vec::new();
    for _ in 0..2 {
        daemons.push(
            DaemonBuilder::new(&redis.url())
                .plugin("g", GATED_SOURCE)
                .env("MOCK", &mock.base)
                .config(&cfg)
                .start()
                .await,
        );
    }
    let (a, b) = (&daemons[0], &daemons[1]);
    let path = "/v1/data/g/AAPL?start=2024-01-02&end=2024-01-02";

    // A takes the lock and is held inside the plugin call at the mock.
    let (http, url) = (a.http.clone(), a.url(path));
    let from_a = tokio::spawn(async move {
        let r = http.get(url).send().await.expect("GET A");
        (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
    });
    wait_for("A's fetch to reach the mock", Duration::from_secs(30), || async {
        (mock.in_flight() == 1).then_some(())
    })
    .await;
    let lock_key = format!("{prefix}:lock:g:1:{{AAPL}}");
    let mut c = redis.conn();
    let held: bool = redis::cmd("EXISTS").arg(&lock_key).query(&mut c).unwrap();
    assert!(held, "A holds {lock_key}");

    // B's request arrives and polls the lock (its lock script calls keep
    // coming while A, parked at the mock, makes none).
    let before = redis.command_calls("evalsha");
    let (http, url) = (b.http.clone(), b.url(path));
    let from_b = tokio::spawn(async move {
        let r = http.get(url).send().await.expect("GET B");
        (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
    });
    wait_for("B to poll the fleet lock", Duration::from_secs(30), || async {
        let arrived = metric(&b.metrics().await, "stock_requests_total", &[("plugin", "g")]) == Some(1.0);
        (arrived && redis.command_calls("evalsha") >= before + 10).then_some(())
    })
    .await;
    assert_eq!(mock.count("/q/AAPL"), 1, "B did not call the upstream while waiting");

    // The holder's fetch fails; both answer that error.
    gate.open();
    let (sa, body_a) = from_a.await.unwrap();
    let (sb, body_b) = from_b.await.unwrap();
    assert_eq!(sa, 502, "{body_a}");
    assert_eq!(sb, 502, "{body_b}");
    let (code_a, msg_a) = error_of(&body_a);
    let (code_b, msg_b) = error_of(&body_b);
    assert_eq!(code_a, "upstream_error", "{body_a}");
    assert!(msg_a.contains("the source answered 500"), "{msg_a}");
    assert_eq!((code_b, msg_b), (code_a, msg_a.clone()), "B answers A's error");
    assert_eq!(mock.count("/q/AAPL"), 1, "one upstream call for the fleet");
    let mb = b.metrics().await;
    assert_eq!(expect_metric(&mb, "fetch_coalesced_total", &[("plugin", "g")]), 1.0);
    assert!(
        matches!(
            metric(&mb, "plugin_fetch_duration_seconds_count", &[("plugin", "g")]),
            None | Some(0.0)
        ),
        "B never called its plugin"
    );
    assert_eq!(fetch_count(a, "g").await, 1.0);
}

/// README (differences from the SPEC): `DELETE /v1/cache` while Redis is
/// down clears the memory layer and answers 503 `cache_unavailable`.
#[tokio::test]
async fn delete_cache_with_redis_down_clears_memory_and_answers_503() {
    let d = DaemonBuilder::new(&common::daemon::dead_redis_url())
        .bundled("synthetic")
        .start()
        .await;
    let path = "/v1/data/synthetic/AAPL?start=2024-01-02&end=2024-01-05";
    let (s, x, body) = status(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    let (s, x, body) = status(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "HIT"), "{body}");
    assert_eq!(body["cache"]["layer"], "memory");
    assert_eq!(fetch_count(&d, "synthetic").await, 1.0);

    let r = d
        .http
        .delete(d.url("/v1/cache?plugin=synthetic&ticker=AAPL"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let (code, msg) = error_of(&body);
    assert_eq!(code, "cache_unavailable", "{body}");
    assert!(msg.contains("removed from the in-process memory cache"), "{msg}");

    // The memory copy is gone: the next request calls the plugin again.
    let (s, x, body) = status(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    assert_eq!(fetch_count(&d, "synthetic").await, 2.0);
}

/// Data from the mock while it answers 200, the mock's error after.
const STALE_SOURCE: &str = r#"
return {
  ttl = "1h",
  settled_ttl = 1,
  env = { "MOCK" },
  fetch = function(req)
    local res = http.get(env.get("MOCK") .. "/q/" .. req.ticker)
    if res.status ~= 200 then errors.upstream("the source answered " .. res.status) end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 } }, meta = { v = "good" } }
  end,
}
"#;

/// A daemon with STALE_SOURCE and `stale_if_error`. The date asked is
/// settled, so it is fresh for `settled_ttl` (1 s) while the Redis key lives
/// `ttl` (1 h) plus the window: the window's end is the daemon's decision,
/// not the key's expiry.
async fn stale_daemon(stale_if_error: &str) -> (Daemon, MockUpstream, RedisServer) {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", Canned::text(200, "ok"));
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("p", STALE_SOURCE)
        .env("MOCK", &mock.base)
        .config(&format!("[cache]\nstale_if_error = \"{stale_if_error}\"\n"))
        .start()
        .await;
    (d, mock, redis)
}

#[tokio::test]
async fn stale_if_error_ends_with_its_window() {
    let (d, mock, _redis) = stale_daemon("3s").await;
    let path = "/v1/data/p/AAPL?start=2024-01-02&end=2024-01-02";
    let asked = Instant::now();
    let (s, x, body) = status(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    mock.on("/q/*", Canned::text(500, "down"));

    // Fresh for 1 s, then stale and served as such, then, 3 s after it went
    // stale, the error. Never an error before STALE, never STALE after it.
    let seen = std::cell::RefCell::new(Vec::<&str>::new());
    let ended = wait_for("the stale window to end", Duration::from_secs(30), || {
        let (seen, d) = (&seen, &d);
        async move {
            let (s, x, body) = status(d, path).await;
            let now = Instant::now();
            let kind = match (s, x.as_str()) {
                (200, "HIT") => "fresh",
                (200, "STALE") => "stale",
                (502, _) if error_of(&body).0 == "upstream_error" => "error",
                _ => panic!("unexpected answer {s} {x}: {body}"),
            };
            let mut seen = seen.borrow_mut();
            if seen.last() != Some(&kind) {
                seen.push(kind);
            }
            (kind == "error").then_some(now)
        }
    })
    .await;
    let seen = seen.into_inner();
    assert!(
        seen == ["fresh", "stale", "error"] || seen == ["stale", "error"],
        "fresh, then stale within the window, then the error: {seen:?}"
    );
    // The entry was written after `asked`: the window cannot have ended
    // before 1 s (settled_ttl) + 3 s (stale_if_error) from then.
    assert!(
        ended.duration_since(asked) >= Duration::from_secs(4),
        "the stale window ended early: {:?} after the fetch",
        ended.duration_since(asked)
    );
    // The error was not cached, and the stale copy is not served again.
    let (s, _, body) = status(&d, path).await;
    assert_eq!(s, 502, "{body}");
}

#[tokio::test]
async fn stale_if_error_zero_serves_no_stale_answer() {
    let (d, mock, _redis) = stale_daemon("0s").await;
    let path = "/v1/data/p/AAPL?start=2024-01-02&end=2024-01-02";
    let (s, x, body) = status(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    mock.on("/q/*", Canned::text(500, "down"));
    // Once the 1 s freshness is over, the failed fetch's error comes through
    // at once, although the entry is still in Redis.
    let body = wait_for("the entry to go stale", Duration::from_secs(30), || async {
        let (s, x, body) = status(&d, path).await;
        assert_ne!(x, "STALE", "stale_if_error = 0 served a stale answer: {body}");
        (s != 200).then_some(body)
    })
    .await;
    assert_eq!(error_of(&body).0, "upstream_error", "{body}");
    let m = d.metrics().await;
    assert!(
        matches!(
            metric(&m, "cache_stale_served_total", &[("plugin", "p")]),
            None | Some(0.0)
        ),
        "no stale answer counted"
    );
}
