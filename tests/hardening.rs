//! Issue 15 items 3, 5, 6, 7 and 9, through the real daemon: a range longer
//! than `max_range_days`, huge and non-string plugin errors, out-of-bounds
//! and non-regular config files, a broken config save, and the minor edge
//! answers (`%ff`, `bearer`, an unreadable plugins directory, long paths).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, DaemonBuilder, RedisServer, wait_for};
use serde_json::Value;

const ONE_DAY: &str = "?start=2024-01-02&end=2024-01-02";

const FAILING: &str = r#"
return {
  fetch = function(req)
    local t = req.ticker
    if t == "HUGE" then error(string.rep("E", 10 * 1024 * 1024)) end
    if t == "HUGEUP" then errors.upstream(string.rep("U", 10 * 1024 * 1024)) end
    if t == "TABLE" then error({ code = 42 }) end
    if t == "NAMED" then error(setmetatable({}, { __tostring = function() return "my own words" end })) end
    if t == "WHERE" then error("boom") end
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } } }
  end,
}
"#;

struct Setup {
    d: Daemon,
    _redis: RedisServer,
}

async fn start_with(config: &str) -> Setup {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("failing", FAILING)
        .bundled("synthetic")
        .config(config)
        .start()
        .await;
    Setup { d, _redis: redis }
}

fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or("").to_owned()
}

// ---- item 3 -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_longer_than_max_range_days_is_a_400_naming_the_limit() {
    let s = start_with("").await;
    let (status, body) =
        s.d.get_json("/v1/data/synthetic/AAPL?start=1900-01-01&end=2100-12-31")
            .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert_eq!(body["error"]["field"], "start", "{body}");
    assert!(message(&body).contains("36525 days (max_range_days)"), "{body}");
    // Within the default limit it is served.
    let (status, body) =
        s.d.get_json("/v1/data/synthetic/AAPL?start=2000-01-01&end=2000-12-31")
            .await;
    assert_eq!(status, 200, "{body}");
    // And the limit is configurable.
    let s = start_with("[http]\nmax_range_days = 30\n").await;
    let (status, body) =
        s.d.get_json("/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-03-01")
            .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("the limit is 30 days"), "{body}");
    // The bulk route applies the same limit before fetching any ticker.
    let (status, body) =
        s.d.get_json("/v1/data/synthetic?tickers=AAPL,MSFT&start=2024-01-01&end=2024-03-01")
            .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("the limit is 30 days"), "{body}");
}

// ---- item 5 -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_message_is_cut_in_the_body_and_the_log() {
    let s = start_with("").await;
    for ticker in ["HUGE", "HUGEUP"] {
        let r = s.d.get(&format!("/v1/data/failing/{ticker}{ONE_DAY}")).await;
        assert_eq!(r.status().as_u16(), 502, "{ticker}");
        let text = r.text().await.expect("body");
        assert!(text.len() < 8 * 1024, "{ticker}: a {} byte body", text.len());
        let body: Value = serde_json::from_str(&text).expect("JSON");
        assert!(message(&body).contains("bytes in all]"), "{ticker}: {body}");
    }
    let log = s.d.log();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 16 * 1024, "the longest log line has {longest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_object_is_named_by_type_and_paths_are_relative() {
    let s = start_with("").await;
    let (status, body) = s.d.get_json(&format!("/v1/data/failing/TABLE{ONE_DAY}")).await;
    assert_eq!(status, 502, "{body}");
    let m = message(&body);
    assert!(m.contains("error object of type table"), "{m}");
    assert!(!m.contains("0x"), "no heap address: {m}");
    let (_, body) = s.d.get_json(&format!("/v1/data/failing/NAMED{ONE_DAY}")).await;
    assert!(message(&body).contains("my own words"), "__tostring is used: {body}");
    let (_, body) = s.d.get_json(&format!("/v1/data/failing/WHERE{ONE_DAY}")).await;
    let m = message(&body);
    assert!(m.contains("failing.lua:"), "{m}");
    let dir = s.d.plugins_dir.display().to_string();
    assert!(!m.contains(&dir), "the plugins directory is not shown: {m}");
}

// ---- item 6 -------------------------------------------------------------

/// Runs `tickerd serve` with these arguments; it must exit (code 2) within
/// a few seconds, and its stderr is returned.
fn refused_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickerd"))
        .arg("serve")
        .args(args)
        .env_remove("TICKERD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tickerd");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert_eq!(status.code(), Some(2), "{args:?}: {err}");
            return err;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: tickerd did not exit within 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_config_must_be_a_regular_file_of_bounded_size() {
    let err = refused_start(&["--listen", "127.0.0.1:0", "--config", "/dev/zero"]);
    assert!(err.contains("not a regular file"), "{err}");
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo.toml");
    if Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        let err = refused_start(&["--listen", "127.0.0.1:0", "--config", fifo.to_str().expect("utf-8")]);
        assert!(err.contains("not a regular file"), "{err}");
    }
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 * 1024 * 1024]).expect("write");
    let err = refused_start(&["--listen", "127.0.0.1:0", "--config", big.to_str().expect("utf-8")]);
    assert!(err.contains("at most 1048576 bytes"), "{err}");
}

#[test]
fn out_of_bounds_numbers_are_refused_naming_key_and_bounds() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (text, key, bounds) in [
        ("[plugins.x]\nstates = 100000\n", "plugins.x.states", "1 to 64"),
        ("[plugins.x]\nttl = \"999999999999d\"\n", "plugins.x.ttl", "1s to 3650d"),
    ] {
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).expect("write");
        let err = refused_start(&["--listen", "127.0.0.1:0", "--config", f.to_str().expect("utf-8")]);
        assert!(err.contains(key) && err.contains(bounds), "{key}: {err}");
    }
}

// ---- item 7 -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_save_is_logged_once_per_content() {
    let s = start_with("").await;
    let good = std::fs::read_to_string(&s.d.config_path).expect("config");
    save_by_rename(&s.d.config_path, &format!("{good}\nnot toml at all [[[\n"));
    let count = |log: &str| log.matches("config file changed but does not load").count();
    wait_for("the broken config to be reported", Duration::from_secs(10), || {
        let n = count(&s.d.log());
        async move { (n >= 1).then_some(()) }
    })
    .await;
    // Other files changing in the same directory (here: many writes next to
    // the config) must not repeat it.
    let dir = s.d.config_path.parent().expect("a directory").to_path_buf();
    let noise = dir.join(common::unique("noise"));
    for i in 0..50 {
        std::fs::write(&noise, format!("{i}")).expect("write noise");
        let (st, _) = s.d.get_json("/healthz").await;
        assert_eq!(st, 200);
    }
    let _ = std::fs::remove_file(&noise);
    // A second, different broken content is reported again, once.
    save_by_rename(&s.d.config_path, &format!("{good}\nstill [[[ broken\n"));
    wait_for(
        "the second broken content to be reported",
        Duration::from_secs(10),
        || {
            let n = count(&s.d.log());
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    for i in 0..20 {
        std::fs::write(&noise, format!("{i}")).expect("write noise");
        let _ = s.d.get_json("/healthz").await;
    }
    let _ = std::fs::remove_file(&noise);
    let n = count(&s.d.log());
    assert_eq!(n, 2, "logged once per distinct content, got {n}");
}

// ---- item 9 -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_path_is_a_json_400() {
    let s = start_with("").await;
    for path in ["/v1/data/synthetic/%ff", "/v1/data/%ff/AAPL", "/v1/plugins/%ff"] {
        let r = s.d.get(path).await;
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        let body: Value = r.json().await.expect("JSON body");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .env("TICKERD_ADMIN_TOKEN", "s3cret")
        .start()
        .await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = d
            .http
            .post(d.url("/v1/reload"))
            .header("authorization", format!("{scheme} s3cret"))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 200, "{scheme}");
    }
    let r = d
        .http
        .post(d.url("/v1/reload"))
        .header("authorization", "bearer wrong")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_says_when_the_plugins_directory_cannot_be_read() {
    let s = start_with("").await;
    let moved = s.d.plugins_dir.with_extension("moved");
    std::fs::rename(&s.d.plugins_dir, &moved).expect("move the plugins dir away");
    let r = s.d.http.post(s.d.url("/v1/reload")).send().await.expect("POST");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    std::fs::rename(&moved, &s.d.plugins_dir).expect("move it back");
    assert_eq!(status, 500, "{body}");
    assert!(message(&body).contains("cannot read the plugins directory"), "{body}");
    // The plugins already loaded kept serving.
    let (st, body) = s.d.get_json(&format!("/v1/data/synthetic/AAPL{ONE_DAY}")).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_are_cut() {
    let s = start_with("").await;
    let long = "A".repeat(7000);
    let (status, _) = s.d.get_json(&format!("/v1/data/synthetic/{long}")).await;
    assert_eq!(status, 400);
    let (status, _) = s.d.get_json(&format!("/nothing/{long}")).await;
    assert_eq!(status, 404);
    wait_for("the access lines", Duration::from_secs(10), || {
        let log = s.d.log();
        async move { (log.matches("bytes)").count() >= 2).then_some(()) }
    })
    .await;
    let log = s.d.log();
    for line in log.lines().filter(|l| l.contains("AAAAAAAA")) {
        assert!(line.len() < 2048, "a {} byte log line: {}", line.len(), &line[..200]);
    }
}

/// Saves `text` as an editor does (write aside, rename over), so the watcher
/// never reads a half-written file: a truncated read would be one more
/// distinct broken content, and the test counts those.
fn save_by_rename(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp-save");
    std::fs::write(&tmp, text).expect("write the new config aside");
    std::fs::rename(&tmp, path).expect("rename it over the config");
}
