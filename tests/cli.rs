//! The command line: exit codes, `check` output, `plugins`, `fetch`, and
//! draining requests in flight on SIGTERM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{DaemonBuilder, RedisServer, wait_for};

fn tickerd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tickerd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TICKERD_") || k.starts_with("REDIS_") || k == "CACHE_TTL_SECONDS" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_reports_file_line_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::daemon::repo_plugins().join("synthetic.lua"),
        dir.path().join("synthetic.lua"),
    )
    .unwrap();
    let ok = tickerd().arg("check").arg(dir.path()).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));

    std::fs::write(
        dir.path().join("broken.lua"),
        "return {\n  fetch = function(req)\n    return {{\n  end\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("badttl.lua"),
        "return {\n  description = 'x',\n  ttl = 'soon',\n  fetch = function() end,\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("nofetch.lua"), "return {\n  description = 'x',\n}\n").unwrap();
    let bad = tickerd().arg("check").arg(dir.path()).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    let broken = dir.path().join("broken.lua").display().to_string();
    let badttl = dir.path().join("badttl.lua").display().to_string();
    let nofetch = dir.path().join("nofetch.lua").display().to_string();
    assert!(out.lines().any(|l| l.starts_with(&format!("{broken}:"))), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&format!("{badttl}:3: "))), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{nofetch}:")) && l.contains("fetch")),
        "{out}"
    );
    assert!(!out.contains("synthetic.lua"), "a good file is not a problem: {out}");

    // The bundled plugins and the LuaLS meta file pass.
    let bundled = tickerd()
        .arg("check")
        .arg(common::daemon::repo_plugins())
        .output()
        .unwrap();
    assert_eq!(
        bundled.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&bundled.stdout)
    );
}

#[test]
fn configuration_errors_exit_two_naming_the_key() {
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[cache]\nnegative_ttl = \"often\"\n").unwrap();
    let out = tickerd()
        .arg("plugins")
        .arg("--config")
        .arg(cfg.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache.negative_ttl"));

    let out = tickerd()
        .arg("plugins")
        .env("REDIS_PORT", "not-a-port")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDIS_PORT"));

    let out = tickerd().arg("serve").arg("--listen").arg("nowhere").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));

    let out = tickerd().arg("fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
}

#[test]
fn plugins_lists_name_ttl_version_status() {
    let out = tickerd()
        .arg("plugins")
        .arg("--plugins")
        .arg(common::daemon::repo_plugins())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("synthetic"))
        .expect("synthetic listed");
    assert!(line.contains("1day") && line.contains(" ok "), "{line}");
    for name in ["yahoo", "stooq", "alphavantage"] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} listed: {text}");
    }
}

#[test]
fn fetch_goes_through_the_cache_and_prints_the_body() {
    let redis = RedisServer::start();
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), format!("[redis]\nurl = \"{}\"\n", redis.url())).unwrap();
    let run = || {
        tickerd()
            .args([
                "fetch",
                "synthetic",
                "aapl",
                "--start",
                "2024-01-02",
                "--end",
                "2024-01-05",
                "--config",
            ])
            .arg(cfg.path())
            .arg("--plugins")
            .arg(common::daemon::repo_plugins())
            .output()
            .unwrap()
    };
    let first = run();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(body["cache"]["status"], "miss");
    assert_eq!(body["bars"].as_array().unwrap().len(), 4);
    let second: serde_json::Value = serde_json::from_slice(&run().stdout).unwrap();
    assert_eq!(
        second["cache"]["status"], "hit",
        "the second process found the first one's entry in redis"
    );

    let bad = tickerd()
        .args(["fetch", "nosuch", "AAPL"])
        .arg("--config")
        .arg(cfg.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("plugin_not_found"));
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let redis = RedisServer::start();
    let slow = r#"
return {
  ttl = "1h",
  fetch = function(req)
    local t = os.clock()
    while os.clock() - t < 0.7 do end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 } } }
  end,
}
"#;
    let mut d = DaemonBuilder::new(&redis.url()).plugin("slow", slow).start().await;
    let (http, url) = (
        d.http.clone(),
        d.url("/v1/data/slow/AAPL?start=2024-01-02&end=2024-01-02"),
    );
    let inflight = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    wait_for("the request to be in flight", Duration::from_secs(5), || async {
        (d.get_json("/v1/stats").await.1["inflight_fetches"] == 1).then_some(())
    })
    .await;
    d.signal("TERM");
    assert_eq!(
        inflight.await.unwrap().ok(),
        Some(200),
        "the in-flight request was answered"
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)).await, Some(0));
}
