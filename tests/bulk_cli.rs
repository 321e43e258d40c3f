//! `tickerd fetch PLUGIN TICKER... --tickers-file --out --format` (README "Rate limits"):
//! files per ticker, NDJSON to stdout with a failing ticker, and the
//! progress bar as drawn on a pseudo-terminal (`script`).

mod common;

use std::process::Command;

use common::mock_upstream::{Canned, MockUpstream};
use common::{RedisServer, unique};

const PLUGIN: &str = r#"return {
  env = { "MOCK_BASE" },
  rate_limit = "10/s",
  fetch = function(req)
    local res = http.get(env.get("MOCK_BASE") .. "/q/" .. req.ticker)
    if res.status ~= 200 then error("mock answered " .. res.status) end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5, volume = 10 } } }
  end,
}
"#;

struct Setup {
    _dir: tempfile::TempDir,
    plugins: std::path::PathBuf,
    config: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn setup(redis: &RedisServer) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(plugins.join("counted.lua"), PLUGIN).unwrap();
    let config = dir.path().join("tickerd.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n",
            redis.url(),
            unique("cli")
        ),
    )
    .unwrap();
    Setup {
        root: dir.path().to_path_buf(),
        _dir: dir,
        plugins,
        config,
    }
}

fn today() -> String {
    chrono::Utc::now().date_naive().format("%Y-%m-%d").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_files_for_every_ticker_and_the_bar_drawn_on_a_terminal() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", Canned::json(200, "{}"));
    let redis = RedisServer::start();
    let s = setup(&redis);
    let tickers: Vec<String> = (0..25).map(|i| format!("T{i}")).collect();
    let file = s.root.join("tickers.txt");
    std::fs::write(&file, format!("# sample\n{}\n", tickers.join("\n"))).unwrap();
    let out = s.root.join("data");
    let d = today();
    let cmd = format!(
        "{} fetch counted --tickers-file {} --out {} --format csv --start {d} --end {d} --plugins {} --config {}",
        env!("CARGO_BIN_EXE_tickerd"),
        file.display(),
        out.display(),
        s.plugins.display(),
        s.config.display()
    );
    // `script` gives the command a pseudo-terminal and records what it drew.
    let run = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("MOCK_BASE", &mock.base)
            .env("TERM", "xterm")
            .output()
            .map(|o| (o, mock))
    })
    .await
    .unwrap();
    let (o, mock) = match run {
        Ok(x) => x,
        Err(e) => panic!("`script` (util-linux) is needed to test the progress bar: {e}"),
    };
    let drawn = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{drawn}");
    for t in &tickers {
        let csv = std::fs::read_to_string(out.join(format!("{t}.csv"))).unwrap_or_else(|e| panic!("{t}: {e}\n{drawn}"));
        assert!(csv.starts_with("date,open,high,low,close,volume"), "{csv}");
        assert!(csv.contains(&d), "{csv}");
    }
    assert_eq!(mock.arrivals("/q/").len(), 25);
    // The bar: done/total, the final count, the rate-limit wait (25 calls at 10/s wait).
    assert!(drawn.contains("/25"), "{drawn}");
    assert!(drawn.contains("25/25"), "{drawn}");
    assert!(drawn.contains("waiting for the rate limit"), "{drawn}");
    assert!(drawn.contains("ETA"), "{drawn}");
    assert!(drawn.contains("failed 0"), "{drawn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_on_stdout_and_exit_1_naming_the_failures() {
    let mock = MockUpstream::start().await;
    mock.on("/q/*", Canned::json(200, "{}"));
    mock.on("/q/BAD", Canned::text(500, "boom"));
    let redis = RedisServer::start();
    let s = setup(&redis);
    let d = today();
    let base = mock.base.clone();
    let (plugins, config) = (s.plugins.clone(), s.config.clone());
    let o = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tickerd"))
            .args([
                "fetch",
                "counted",
                "aapl",
                "BAD",
                "msft",
                "--start",
                &d,
                "--end",
                &d,
                "--plugins",
            ])
            .arg(&plugins)
            .arg("--config")
            .arg(&config)
            .env("MOCK_BASE", base)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let bad = lines.iter().find(|l| l["ticker"] == "BAD").unwrap();
    assert_eq!(bad["error"]["code"], "plugin_error");
    assert_eq!(lines.iter().filter(|l| l["bars"].is_array()).count(), 2);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("1 of 3 tickers failed: BAD (plugin_error)"), "{stderr}");
    assert!(
        !stderr.contains("ETA"),
        "no bar when stderr is not a terminal: {stderr}"
    );
}
