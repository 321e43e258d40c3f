//! Hot reload: every way an editor or Kubernetes changes a file reloads the
//! plugin; a broken save keeps the last good version; requests in flight
//! finish on the version they started with.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mock_upstream::{Canned, Gate, MockUpstream};
use common::{Daemon, DaemonBuilder, RedisServer, metric, wait_for};
use serde_json::Value;

fn plugin_src(tag: &str) -> String {
    format!(
        r#"
return {{
  description = "version {tag}",
  ttl = "1h",
  fetch = function(req)
    return {{ bars = {{ {{ date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 }} }}, meta = {{ v = "{tag}" }} }}
  end,
}}
"#
    )
}

const PATH: &str = "/v1/data/p/AAPL?start=2024-01-02&end=2024-01-02&refresh=true";

async fn served_version(d: &Daemon, path: &str) -> Option<String> {
    let (s, body) = d.get_json(path).await;
    (s == 200).then(|| body["meta"]["v"].as_str().unwrap_or("").to_owned())
}

async fn wait_version(d: &Daemon, path: &str, want: &str) {
    wait_for(
        &format!("{path} to serve version {want}"),
        Duration::from_secs(10),
        || async { (served_version(d, path).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

async fn plugin_info(d: &Daemon, name: &str) -> (u16, Value) {
    d.get_json(&format!("/v1/plugins/{name}")).await
}

async fn start(redis: &RedisServer) -> Daemon {
    DaemonBuilder::new(&redis.url())
        .plugin("p", &plugin_src("A"))
        .start()
        .await
}

/// Replaces a file by rename, as editors do, so a watcher never reads it
/// half-written (a truncated config is a valid, different config).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-save");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write(dir: &Path, name: &str, src: &str) {
    std::fs::write(dir.join(name), src).unwrap();
}

#[tokio::test]
async fn write_in_place_reloads() {
    let redis = RedisServer::start();
    let d = start(&redis).await;
    wait_version(&d, PATH, "A").await;
    write(&d.plugins_dir, "p.lua", &plugin_src("B"));
    wait_version(&d, PATH, "B").await;
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "plugin_reloads_total", &[("plugin", "p"), ("result", "ok")]),
        Some(2.0)
    );
}

#[tokio::test]
async fn rename_over_reloads() {
    let redis = RedisServer::start();
    let d = start(&redis).await;
    let tmp = d.plugins_dir.join(".p.lua.swp");
    std::fs::write(&tmp, plugin_src("B")).unwrap();
    std::fs::rename(&tmp, d.plugins_dir.join("p.lua")).unwrap();
    wait_version(&d, PATH, "B").await;
}

#[tokio::test]
async fn delete_and_create_reloads() {
    let redis = RedisServer::start();
    let d = start(&redis).await;
    std::fs::remove_file(d.plugins_dir.join("p.lua")).unwrap();
    write(&d.plugins_dir, "p.lua", &plugin_src("B"));
    wait_version(&d, PATH, "B").await;
}

#[tokio::test]
async fn new_file_loads_and_deleted_file_unloads() {
    let redis = RedisServer::start();
    let d = start(&redis).await;
    write(&d.plugins_dir, "q.lua", &plugin_src("Q"));
    let q = "/v1/data/q/AAPL?start=2024-01-02&end=2024-01-02";
    wait_version(&d, q, "Q").await;
    wait_for("plugins_loaded = 2", Duration::from_secs(5), || async {
        (metric(&d.metrics().await, "plugins_loaded", &[]) == Some(2.0)).then_some(())
    })
    .await;
    std::fs::remove_file(d.plugins_dir.join("q.lua")).unwrap();
    wait_for("q to be unloaded (404)", Duration::from_secs(10), || async {
        let (s, body) = d.get_json(q).await;
        (s == 404 && body["error"]["code"] == "plugin_not_found").then_some(())
    })
    .await;
    assert_eq!(metric(&d.metrics().await, "plugins_loaded", &[]), Some(1.0));
    assert_eq!(plugin_info(&d, "q").await.0, 404);
}

#[tokio::test]
async fn kubernetes_configmap_symlink_swap_reloads() {
    let redis = RedisServer::start();
    // Build the ConfigMap layout before starting: p.lua -> ..data/p.lua, ..data -> ..v1
    let b = DaemonBuilder::new(&redis.url());
    let dir = b.plugins_path().to_path_buf();
    std::fs::create_dir(dir.join("..v1")).unwrap();
    write(&dir.join("..v1"), "p.lua", &plugin_src("A"));
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.lua", dir.join("p.lua")).unwrap();
    let d = b.start().await;
    wait_version(&d, PATH, "A").await;

    // The kubelet's update: new timestamped dir, new ..data_tmp link, rename over ..data.
    std::fs::create_dir(dir.join("..v2")).unwrap();
    write(&dir.join("..v2"), "p.lua", &plugin_src("B"));
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    wait_version(&d, PATH, "B").await;
}

#[tokio::test]
async fn a_broken_save_keeps_the_last_good_version() {
    let redis = RedisServer::start();
    let d = start(&redis).await;
    let (_, before) = plugin_info(&d, "p").await;
    write(
        &d.plugins_dir,
        "p.lua",
        "return {\n  fetch = function(req)\n    return {{\n  end\n",
    );
    let info = wait_for(
        "last_error to show the syntax error",
        Duration::from_secs(10),
        || async {
            let (_, info) = plugin_info(&d, "p").await;
            (info["status"] == "error").then_some(info)
        },
    )
    .await;
    let err = info["last_error"].as_str().unwrap();
    assert!(err.contains("p.lua:"), "error names file:line: {err}");
    assert_eq!(info["version"], before["version"], "the old version still serves");
    assert_eq!(served_version(&d, PATH).await.as_deref(), Some("A"));
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "plugin_reloads_total", &[("plugin", "p"), ("result", "error")]),
        Some(1.0)
    );
    assert!(d.log().contains("last good version keeps serving"));

    // A contract error (no fetch) is refused the same way, with its line.
    write(
        &d.plugins_dir,
        "p.lua",
        "return {\n  description = 'x',\n  ttl = 'soon',\n  fetch = function() end,\n}\n",
    );
    wait_for("ttl error", Duration::from_secs(10), || async {
        let (_, info) = plugin_info(&d, "p").await;
        info["last_error"]
            .as_str()
            .filter(|e| e.contains("p.lua:3:"))
            .map(|_| ())
    })
    .await;

    // Fixing the file brings the plugin back to ok.
    write(&d.plugins_dir, "p.lua", &plugin_src("C"));
    wait_version(&d, PATH, "C").await;
    let (_, info) = plugin_info(&d, "p").await;
    assert_eq!(info["status"], "ok");
    assert!(info["last_error"].is_null());
}

#[tokio::test]
async fn a_plugin_that_never_loaded_is_unavailable() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("p", &plugin_src("A"))
        .plugin("bad", "return 42\n")
        .start()
        .await;
    let (s, body) = d.get_json("/v1/data/bad/AAPL?start=2024-01-02&end=2024-01-02").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "plugin_unavailable");
    let (_, info) = plugin_info(&d, "bad").await;
    assert_eq!(info["status"], "error");
    assert!(info["version"].is_null());
}

#[tokio::test]
async fn unchanged_content_and_non_plugin_files_do_nothing() {
    let redis = RedisServer::start();
    let d = start(&redis).await;
    let (_, before) = plugin_info(&d, "p").await;
    // Same bytes written again, a README, a subdirectory with a .lua file.
    write(&d.plugins_dir, "p.lua", &plugin_src("A"));
    write(&d.plugins_dir, "README.md", "notes");
    std::fs::create_dir(d.plugins_dir.join("lib")).unwrap();
    write(&d.plugins_dir.join("lib"), "helper.lua", "return 1");
    // A new plugin after those events proves the watcher has processed them.
    write(&d.plugins_dir, "z.lua", &plugin_src("Z"));
    wait_version(&d, "/v1/data/z/AAPL?start=2024-01-02&end=2024-01-02", "Z").await;
    let (_, after) = plugin_info(&d, "p").await;
    assert_eq!(after["loaded_at"], before["loaded_at"]);
    let m = d.metrics().await;
    assert_eq!(
        metric(&m, "plugin_reloads_total", &[("plugin", "p"), ("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(plugin_info(&d, "helper").await.0, 404);
    assert_eq!(metric(&m, "plugins_loaded", &[]), Some(2.0));
}

/// Holds its fetch of AAPL at the mock's `/gate` until the test opens it.
const HELD: &str = r#"
return {
  ttl = "1h",
  timeout = "60s",
  env = { "MOCK" },
  fetch = function(req)
    if req.ticker == "AAPL" then http.get(env.get("MOCK") .. "/gate", { timeout = "60s" }) end
    return { bars = { { date = req.start_date, open = 1, high = 2, low = 0.5, close = 1.5 } }, meta = { v = "HELD" } }
  end,
}
"#;

#[tokio::test]
async fn a_request_in_flight_finishes_on_its_version() {
    let gate = Gate::new();
    let mock = MockUpstream::start().await;
    mock.on("/gate", Canned::text(200, "ok").gated(&gate));
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("p", HELD)
        .env("MOCK", &mock.base)
        .start()
        .await;
    let (http, url) = (d.http.clone(), d.url(PATH));
    let inflight = tokio::spawn(async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() });
    wait_for("the fetch to be held at the mock", Duration::from_secs(30), || async {
        (mock.in_flight() == 1).then_some(())
    })
    .await;
    // A new version is swapped in and serves (another ticker: this one's
    // fetch holds the lock) while the old fetch is held.
    write(&d.plugins_dir, "p.lua", &plugin_src("NEW"));
    wait_version(
        &d,
        "/v1/data/p/MSFT?start=2024-01-02&end=2024-01-02&refresh=true",
        "NEW",
    )
    .await;
    assert!(!inflight.is_finished(), "the held request is still in flight");
    gate.open();
    let old = inflight.await.unwrap();
    assert_eq!(
        old["meta"]["v"], "HELD",
        "the in-flight request finished on its version: {old}"
    );
}

#[tokio::test]
async fn config_changes_apply_at_once() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("p", &plugin_src("A"))
        .config("[plugins.p]\nttl = \"100s\"\n")
        .start()
        .await;
    // Today is on the live edge: fresh for the plugin's ttl (settled history
    // would show settled_ttl).
    let today = chrono::Utc::now().date_naive();
    let q = format!("/v1/data/p/AAPL?start={today}&end={today}");
    let q = q.as_str();
    assert_eq!(plugin_info(&d, "p").await.1["ttl_s"], 100);
    let cfg_path = d.config_path.clone();
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("ttl = \"100s\"", "ttl = \"200s\"");
    write_atomically(&cfg_path, &text);
    wait_for("ttl 200 to apply", Duration::from_secs(10), || async {
        (plugin_info(&d, "p").await.1["ttl_s"] == 200).then_some(())
    })
    .await;
    let (_, body) = d.get_json(q).await;
    assert_eq!(body["cache"]["ttl_s"], 200);
    // A bad edit keeps the running config.
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("ttl = \"200s\"", "ttl = \"whenever\"");
    write_atomically(&cfg_path, &text);
    wait_for("the bad config to be reported", Duration::from_secs(10), || async {
        d.log().contains("keeping the running config").then_some(())
    })
    .await;
    assert_eq!(plugin_info(&d, "p").await.1["ttl_s"], 200);
}

#[tokio::test]
async fn poll_mode_picks_up_a_changed_file() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("p", &plugin_src("A"))
        .arg("--poll")
        .config("poll_interval = \"200ms\"\n")
        .start()
        .await;
    write(&d.plugins_dir, "p.lua", &plugin_src("B"));
    wait_version(&d, PATH, "B").await;
}

/// A daemon whose watcher polls once an hour: a file written after start
/// reaches it only through `POST /v1/reload` or `SIGHUP`.
async fn start_without_watcher(redis: &RedisServer) -> Daemon {
    DaemonBuilder::new(&redis.url())
        .plugin("p", &plugin_src("A"))
        .arg("--poll")
        .config("poll_interval = \"1h\"\n")
        .start()
        .await
}

#[tokio::test]
async fn post_reload_rescans_and_reports_what_it_loaded() {
    let redis = RedisServer::start();
    let d = start_without_watcher(&redis).await;
    write(&d.plugins_dir, "r.lua", &plugin_src("R"));
    write(&d.plugins_dir, "p.lua", &plugin_src("B"));
    assert_eq!(plugin_info(&d, "r").await.0, 404, "the watcher does not see new files");
    let r = d.http.post(d.url("/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    let loaded: Vec<&str> = r["plugins"]["loaded"]
        .as_array()
        .unwrap_or_else(|| panic!("no plugins.loaded in the reload answer: {r}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(loaded.contains(&"r"), "the new file is in the answer: {r}");
    assert!(loaded.contains(&"p"), "the changed file is in the answer: {r}");
    // The answer is the state: no waiting needed.
    assert_eq!(plugin_info(&d, "r").await.0, 200);
    assert_eq!(served_version(&d, PATH).await.as_deref(), Some("B"));
    let m = d.metrics().await;
    assert_eq!(metric(&m, "plugins_loaded", &[]), Some(2.0));
}

#[tokio::test]
async fn sighup_rescans() {
    let redis = RedisServer::start();
    let d = start_without_watcher(&redis).await;
    write(&d.plugins_dir, "s.lua", &plugin_src("S"));
    write(&d.plugins_dir, "p.lua", &plugin_src("B"));
    assert_eq!(plugin_info(&d, "s").await.0, 404, "the watcher does not see new files");
    d.signal("HUP");
    wait_for("s to load after SIGHUP", Duration::from_secs(10), || async {
        (plugin_info(&d, "s").await.0 == 200).then_some(())
    })
    .await;
    wait_version(&d, PATH, "B").await;
}

/// README: settings that cannot change at run time log "restart needed" on
/// a config reload and keep their running values, while `[plugins.*]` and
/// `[cache]` from the same edit apply.
#[tokio::test]
async fn a_reload_changing_restart_only_settings_logs_that_a_restart_is_needed() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("p", &plugin_src("A"))
        .config("[plugins.p]\nttl = \"100s\"\n")
        .start()
        .await;
    const NEEDED: &str = "restart tickerd to apply them";
    assert!(!d.log().contains(NEEDED));
    let cfg_path = d.config_path.clone();
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    // admin_token is top-level: it goes before the first section.
    let text = format!("admin_token = \"new-token-from-reload\"\n{text}")
        .replace("ttl = \"100s\"", "ttl = \"200s\"")
        .replace("op_timeout = \"250ms\"", "op_timeout = \"300ms\"");
    write_atomically(&cfg_path, &text);
    wait_for("the reload to apply ttl 200", Duration::from_secs(10), || async {
        (plugin_info(&d, "p").await.1["ttl_s"] == 200).then_some(())
    })
    .await;
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains(NEEDED))
        .unwrap_or_else(|| panic!("no \"{NEEDED}\" line in the log:\n{}", common::tail(&log, 20)));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("admin_token") && line.contains("redis"),
        "names what changed: {line}"
    );
    assert!(
        !line.contains("listen") && !line.contains("http_threads"),
        "names only what changed: {line}"
    );
    // The running admin_token (none) is kept: admin routes still answer
    // loopback callers without a token.
    let r = d.http.post(d.url("/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the new admin_token is not in force before a restart");
}
