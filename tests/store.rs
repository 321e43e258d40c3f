//! The range-aware store (README "Cache behaviour") end to end: the real binary, a real
//! redis-server, real HTTP: partial fetches, Redis economy, two daemons on
//! one Redis, garbage keys, failing writes.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Daemon, DaemonBuilder, RedisServer, counter_or_zero, expect_metric, wait_for};
use serde_json::Value;

fn prefix_of(r: &RedisServer) -> String {
    let mut c = r.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:index:plugins").query(&mut c).unwrap();
    keys.first()
        .and_then(|k| k.strip_suffix(":index:plugins"))
        .unwrap_or("")
        .to_owned()
}

/// Log lines of plugin calls, as `asked=` values.
fn asked(d: &Daemon) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains("plugin fetch") && !l.contains("failed"))
        .filter_map(|l| l.split("asked=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

/// The daemon's log is written by a background thread: wait for `n`
/// plugin-call lines before reading them.
async fn asked_n(d: &Daemon, n: usize) -> Vec<String> {
    wait_for("the plugin-call log lines", Duration::from_secs(5), || async {
        (asked(d).len() >= n).then_some(())
    })
    .await;
    asked(d)
}

#[tokio::test]
async fn an_overlapping_range_is_partial_and_asks_only_the_missing_days() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let (s, x, jan) = d.data("/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31").await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{jan}");
    let (s, x, body) = d.data("/v1/data/synthetic/AAPL?start=2024-01-15&end=2024-02-15").await;
    assert_eq!((s, x.as_str()), (200, "PARTIAL"), "{body}");
    assert_eq!(body["cache"]["status"], "partial");
    assert_eq!(body["cache"]["fetched_days"], 15);
    let bars = body["bars"].as_array().unwrap();
    assert_eq!(bars.len(), 13 + 11, "Jan 15-31 from the cache, Feb 1-15 fetched");
    assert_eq!(bars[0], jan["bars"][10], "cached bars are served as fetched");
    assert_eq!(
        asked_n(&d, 2).await,
        vec!["2024-01-01..2024-01-31", "2024-02-01..2024-02-15"],
        "the second call asked only February's days"
    );
    let m = d.metrics().await;
    assert_eq!(
        expect_metric(&m, "plugin_fetched_days_total", &[("plugin", "synthetic")]),
        46.0
    );
    // The union is covered now: any range inside it is a hit.
    let (_, x, body) = d.data("/v1/data/synthetic/AAPL?start=2024-01-03&end=2024-02-09").await;
    assert_eq!(x, "HIT", "{body}");
    // Covered, but no bar at all (a weekend): no_data without a call.
    let (s, _, body) = d.data("/v1/data/synthetic/AAPL?start=2024-01-06&end=2024-01-07").await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["error"]["code"], "no_data");
    assert_eq!(asked(&d).len(), 2);
}

/// Calls of each command so far (`INFO commandstats`).
fn commandstats(redis: &RedisServer) -> Vec<(String, u64)> {
    let mut c = redis.conn();
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut c).expect("INFO");
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(":calls=")?;
            Some((name.to_owned(), stats.split(',').next()?.parse().ok()?))
        })
        .collect()
}

fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(n, a)| {
            let b = before.iter().find(|(m, _)| m == n).map_or(0, |(_, v)| *v);
            // The test's own INFO, and connection set-up of an HTTP thread.
            let ours = matches!(n.as_str(), "info" | "ping" | "client|setname" | "client");
            (a > &b && !ours).then(|| (n.clone(), a - b))
        })
        .collect()
}

/// `redis-cli MONITOR`, collecting lines; commands run inside scripts show
/// as `[0 lua]` and are not round trips.
struct Monitor {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    async fn start(redis: &RedisServer) -> Self {
        let mut child = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "monitor"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli on PATH");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let m = Self { child, lines };
        wait_for("MONITOR to start", Duration::from_secs(5), || async {
            (!m.lines.lock().unwrap().is_empty()).then_some(())
        })
        .await;
        m
    }

    /// Round trips sent by clients other than this test since the last
    /// call, up to a marker this test sends.
    async fn round_trips(&self, redis: &RedisServer, tag: &str) -> Vec<String> {
        let marker = format!("marker-{tag}");
        let mut c = redis.conn();
        let _: String = redis::cmd("ECHO").arg(&marker).query(&mut c).unwrap();
        wait_for("the marker in MONITOR", Duration::from_secs(5), || async {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&marker))
                .then_some(())
        })
        .await;
        let mut lines = self.lines.lock().unwrap();
        let taken: Vec<String> = lines.drain(..).collect();
        let upto = taken.iter().position(|l| l.contains(&marker)).unwrap();
        taken[..upto]
            .iter()
            .filter(|l| !l.contains(" lua]") && !l.contains("\"PING\"") && !l.contains("\"CLIENT\""))
            .filter(|l| !l.contains("\"ECHO\"") && !l.contains("\"INFO\""))
            .cloned()
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_covered_hit_is_one_redis_command_and_a_refresh_at_most_three() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let path = "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-30";
    assert_eq!(d.data(path).await.1, "MISS");
    // Warm the HTTP thread's own connection, so its set-up is not counted.
    for _ in 0..3 {
        assert_eq!(d.data(path).await.1, "HIT");
    }
    let monitor = Monitor::start(&redis).await;
    monitor.round_trips(&redis, "warm").await;

    let before = commandstats(&redis);
    assert_eq!(d.data(path).await.1, "HIT");
    let hit = delta(&before, &commandstats(&redis));
    assert_eq!(hit, vec![("hmget".to_owned(), 1)], "a covered hit is one HMGET");
    let trips = monitor.round_trips(&redis, "hit").await;
    assert_eq!(trips.len(), 1, "{trips:#?}");

    let before = commandstats(&redis);
    let (s, x, _) = d.data(&format!("{path}&refresh=true")).await;
    assert_eq!((s, x.as_str()), (200, "BYPASS"));
    let refresh = delta(&before, &commandstats(&redis));
    let trips = monitor.round_trips(&redis, "refresh").await;
    assert!(trips.len() <= 3, "a refresh is at most 3 round trips: {trips:#?}");
    assert!(
        trips.iter().all(|l| !l.contains("\"EVAL\"") && !l.contains("\"eval\"")),
        "scripts go by SHA: {trips:#?}"
    );
    assert!(!refresh.iter().any(|(n, _)| n == "eval"), "{refresh:?}");
    assert!(refresh.iter().any(|(n, _)| n == "evalsha"), "{refresh:?}");

    // A flushed script cache (or a restarted server) is reloaded on NOSCRIPT.
    let mut c = redis.conn();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    let (s, x, _) = d.data(&format!("{path}&refresh=true")).await;
    assert_eq!((s, x.as_str()), (200, "BYPASS"));
    assert_eq!(d.data(path).await.1, "HIT");
}

/// The synthetic plugin, busy for `secs` before it answers.
fn slow_synthetic(secs: f64) -> String {
    let src = std::fs::read_to_string(common::daemon::repo_plugins().join("synthetic.lua")).unwrap();
    // A generous timeout: the busy wait is CPU time, and the test machine may
    // be loaded.
    src.replace("timeout = \"5s\"", "timeout = \"60s\"").replace(
        "fetch = function(req)",
        &format!("fetch = function(req)\n    local t0 = os.clock() while os.clock() - t0 < {secs} do end"),
    )
}

fn shared(redis: &RedisServer, prefix: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\nop_timeout = \"250ms\"\n",
        redis.url()
    )
}

#[tokio::test]
async fn two_daemons_make_no_overlapping_calls_and_the_waiter_asks_the_rest() {
    let redis = RedisServer::start();
    let prefix = common::unique("two");
    let a = DaemonBuilder::new(&redis.url())
        .plugin("slow", &slow_synthetic(0.5))
        .config(&shared(&redis, &prefix))
        .start()
        .await;
    let b = DaemonBuilder::new(&redis.url())
        .plugin("slow", &slow_synthetic(0.5))
        .config(&shared(&redis, &prefix))
        .start()
        .await;
    let (http, url) = (
        a.http.clone(),
        a.url("/v1/data/slow/AAPL?start=2024-01-01&end=2024-01-31"),
    );
    let first = tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() });
    // A holds the fleet lock of AAPL while it fetches.
    let lock = format!("{prefix}:lock:slow:1:{{AAPL}}");
    wait_for("A to take the fleet lock", Duration::from_secs(10), || {
        let lock = lock.clone();
        let mut c = redis.conn();
        async move {
            let n: i64 = redis::cmd("EXISTS").arg(&lock).query(&mut c).unwrap();
            (n == 1).then_some(())
        }
    })
    .await;
    let (s, x, body) = b.data("/v1/data/slow/AAPL?start=2024-01-15&end=2024-02-15").await;
    assert_eq!((s, x.as_str()), (200, "PARTIAL"), "{body}");
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(asked_n(&a, 1).await, vec!["2024-01-01..2024-01-31"]);
    assert_eq!(
        asked_n(&b, 1).await,
        vec!["2024-02-01..2024-02-15"],
        "B waited for A's write and asked only the remainder:\n{}",
        b.log()
    );
    assert!(counter_or_zero(&b.metrics().await, "fetch_coalesced_total", &[("plugin", "slow")]) >= 1.0);
}

#[tokio::test]
async fn a_wrong_type_index_never_blocks_invalidation_and_is_repaired() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    for t in ["AAPL", "MSFT"] {
        let (s, _, _) = d
            .data(&format!("/v1/data/synthetic/{t}?start=2024-01-01&end=2024-01-31"))
            .await;
        assert_eq!(s, 200);
    }
    let prefix = prefix_of(&redis);
    let index = format!("{prefix}:index:synthetic");
    let mut c = redis.conn();
    let _: () = redis::cmd("DEL").arg(&index).query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(&index).arg("notaset").query(&mut c).unwrap();

    let r = d.http.delete(d.url("/v1/cache?ticker=AAPL")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["deleted"], 1,
        "the loaded plugin's series is found without the index: {body}"
    );
    assert!(
        body["problems"][0].as_str().unwrap_or("").contains("wrong type"),
        "{body}"
    );
    // The index was rebuilt from a SCAN (never KEYS): MSFT is listed again.
    let members: Vec<String> = redis::cmd("SMEMBERS").arg(&index).query(&mut c).unwrap();
    assert_eq!(members, vec!["1:MSFT".to_owned()]);
    let (_, x, _) = d.data("/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31").await;
    assert_eq!(x, "MISS");
    // Garbage again: data requests never fail because of it, and the next
    // new series' write repairs it.
    let _: () = redis::cmd("DEL").arg(&index).query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(&index).arg("notaset").query(&mut c).unwrap();
    let (s, x, _) = d.data("/v1/data/synthetic/ORCL?start=2024-01-01&end=2024-01-31").await;
    assert_eq!((s, x.as_str()), (200, "MISS"));
    let kind: String = redis::cmd("TYPE").arg(&index).query(&mut c).unwrap();
    assert_eq!(kind, "set");
    let members: Vec<String> = redis::cmd("SMEMBERS").arg(&index).query(&mut c).unwrap();
    assert_eq!(members, vec!["1:ORCL".to_owned()]);
    let r = d.http.delete(d.url("/v1/cache?plugin=synthetic")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 3, "AAPL, MSFT and ORCL");

    // A lock key without expiry (garbage) does not hold fetches up.
    let lock = format!("{prefix}:lock:synthetic:1:{{IBM}}");
    let _: () = redis::cmd("SET").arg(&lock).arg("stuck").query(&mut c).unwrap();
    let started = std::time::Instant::now();
    let (s, x, _) = d.data("/v1/data/synthetic/IBM?start=2024-01-01&end=2024-01-31").await;
    assert_eq!((s, x.as_str()), (200, "MISS"));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(expect_metric(&d.metrics().await, "cache_errors_total", &[("plugin", "(index)")]) >= 1.0);
}

#[tokio::test]
async fn failing_writes_are_counted_logged_once_and_shown_then_clear() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let mut c = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(&mut c)
        .unwrap();
    for i in 0..5 {
        let (s, _, body) = d
            .data(&format!("/v1/data/synthetic/W{i}?start=2024-01-01&end=2024-01-31"))
            .await;
        assert_eq!(s, 200, "answers are served while writes fail: {body}");
        assert_eq!(body["cache"]["layer"], "memory", "{body}");
    }
    let m = d.metrics().await;
    assert_eq!(
        expect_metric(
            &m,
            "cache_write_errors_total",
            &[("plugin", "synthetic"), ("reason", "oom")]
        ),
        5.0
    );
    let failed_lines = || d.log().lines().filter(|l| l.contains("redis write failed")).count();
    wait_for("the failed-write log line", Duration::from_secs(5), || async {
        (failed_lines() >= 1).then_some(())
    })
    .await;
    assert_eq!(failed_lines(), 1, "rate-limited:\n{}", d.log());
    assert!(d.log().contains("maxmemory"), "the log says what to do");
    let (_, ready) = d.get_json("/readyz").await;
    assert_eq!(ready["redis_writes"], "failing", "{ready}");
    assert!(ready["message"].as_str().unwrap().contains("writes failing"), "{ready}");
    assert_eq!(d.get_json("/v1/stats").await.1["redis_writes"], "failing");
    let locks: Vec<String> = redis::cmd("KEYS").arg("*:lock:*").query(&mut c).unwrap();
    assert!(locks.is_empty(), "no lock left behind: {locks:?}");

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut c)
        .unwrap();
    let (s, _, body) = d.data("/v1/data/synthetic/OK1?start=2024-01-01&end=2024-01-31").await;
    assert_eq!((s, body["cache"]["layer"].as_str()), (200, Some("redis")), "{body}");
    assert_eq!(d.get_json("/readyz").await.1["redis_writes"], "ok");
}

#[tokio::test]
async fn an_oversized_answer_is_served_not_cached_and_counted() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config("[cache]\nmax_stored_bytes = \"2KiB\"\n")
        .start()
        .await;
    let path = "/v1/data/synthetic/BIG?start=2024-01-01&end=2024-03-31";
    let (s, x, body) = d.data(path).await;
    assert_eq!((s, x.as_str()), (200, "MISS"), "{body}");
    assert!(body["bars"].as_array().unwrap().len() > 60);
    assert_eq!(d.data(path).await.1, "MISS", "not cached");
    let m = d.metrics().await;
    assert_eq!(
        expect_metric(&m, "cache_oversized_total", &[("plugin", "synthetic")]),
        2.0
    );
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*{BIG}").query(&mut c).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    // A small one still is.
    let small = "/v1/data/synthetic/BIG?start=2024-01-01&end=2024-01-05";
    assert_eq!(d.data(small).await.1, "MISS");
    assert_eq!(d.data(small).await.1, "HIT");
}
