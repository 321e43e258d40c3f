//! The operator's view: the producer's stream, the status page, access logs.

mod common;

use std::time::Duration;

use common::{DaemonBuilder, RedisServer, counter_or_zero, expect_metric, unique, wait_for};

#[tokio::test]
async fn the_producer_publishes_watched_tickers_to_a_stream() {
    let redis = RedisServer::start();
    let stream = unique("stream");
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&format!(
            "[[watch]]\nplugin = \"synthetic\"\ntickers = [\"AAPL\", \"msft\"]\nevery = \"1s\"\nlookback = \"30d\"\nstream = \"{stream}\"\nmaxlen = 100\n"
        ))
        .start()
        .await;
    let entries = wait_for(
        "two rounds of records in the stream",
        Duration::from_secs(15),
        || async {
            let mut c = redis.conn();
            let v: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query(&mut c)
                .unwrap();
            (v.ids.len() >= 4).then_some(v)
        },
    )
    .await;
    let get = |id: &redis::streams::StreamId, k: &str| -> String { id.get(k).unwrap_or_default() };
    let first = &entries.ids[0];
    assert_eq!(get(first, "plugin"), "synthetic");
    assert_eq!(get(first, "ticker"), "AAPL");
    assert_eq!(get(&entries.ids[1], "ticker"), "MSFT");
    let today = chrono::Utc::now().date_naive();
    assert_eq!(get(first, "end"), today.to_string());
    assert_eq!(get(first, "start"), (today - chrono::Days::new(30)).to_string());
    let bars: serde_json::Value = serde_json::from_str(&get(first, "bars")).unwrap();
    assert!(bars.as_array().unwrap().len() >= 15);
    assert!(chrono::DateTime::parse_from_rfc3339(&get(first, "fetched_at")).is_ok());
    assert_eq!(get(first, "cache"), "miss");
    assert_eq!(
        get(&entries.ids[2], "cache"),
        "hit",
        "the second round comes from the cache"
    );
    let m = d.metrics().await;
    assert!(expect_metric(&m, "stream_published_total", &[("stream", &stream)]) >= 4.0);
    assert!(expect_metric(&m, "stock_requests_total", &[("plugin", "synthetic")]) >= 4.0);
}

#[tokio::test]
async fn the_producer_skips_and_counts_while_redis_is_down_then_stops_on_sigterm() {
    let mut redis = RedisServer::start();
    let stream = unique("stream");
    let mut d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&format!(
            "[[watch]]\nplugin = \"synthetic\"\ntickers = [\"AAPL\"]\nevery = \"1s\"\nstream = \"{stream}\"\n"
        ))
        .start()
        .await;
    redis.kill();
    wait_for("a skipped publish to be counted", Duration::from_secs(15), || async {
        let m = d.metrics().await;
        (counter_or_zero(&m, "stream_publish_errors_total", &[("stream", &stream)]) >= 1.0).then_some(())
    })
    .await;
    assert_eq!(d.get_json("/healthz").await.0, 200, "still alive");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn access_log_lines_and_request_ids() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .env("TICKERD_LOG_FORMAT", "json")
        .start()
        .await;
    let r = d
        .http
        .get(d.url("/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = d.get("/healthz").await;
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 16);
    let line = wait_for("the access log line", Duration::from_secs(5), || async {
        d.log()
            .lines()
            .find(|l| l.contains("\"request_id\":\"abc-123\""))
            .map(str::to_owned)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["plugin"], "synthetic");
    assert_eq!(v["ticker"], "AAPL");
    assert_eq!(v["cache"], "MISS");
    assert_eq!(v["status"], 200);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
}

/// The page is server-rendered HTML with inline SVG and no JavaScript, so
/// what a browser shows is the served markup itself: the test asserts on it
/// directly (an earlier browser half only re-read the same DOM and skipped
/// itself without Chromium). A `<script>` appearing in the page fails this
/// test, as a reminder to test the page in a real browser again.
#[tokio::test]
async fn status_page_lists_plugins_and_charts_the_chosen_ticker() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let r = d.get("/").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/html"),
        "{:?}",
        r.headers()
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("<table id=\"plugins\""), "{html}");
    assert!(html.contains("data-name=\"synthetic\""), "{html}");
    assert!(html.contains("<svg id=\"chart\""), "chart of synthetic AAPL: {html}");
    assert!(
        !html.to_ascii_lowercase().contains("<script"),
        "the page has JavaScript now: test it in a browser"
    );

    let html = d.get("/?plugin=synthetic&ticker=msft").await.text().await.unwrap();
    let chart = &html[html.find("<svg id=\"chart\"").expect("a chart")..];
    assert!(chart.contains("<polyline"), "the chart has a line: {chart}");
    let points = chart
        .split("points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap_or("");
    assert!(
        points.split_whitespace().count() >= 50,
        "about 90 days of business-day closes: {points}"
    );
    assert!(html.contains("synthetic MSFT"), "the chart names the chosen ticker");
}

/// README: requests for a plugin that is not loaded are counted under
/// `plugin="(unknown)"`, so clients cannot create metric series at will.
#[tokio::test]
async fn requests_for_unknown_plugins_share_the_unknown_label() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    let names = ["nosuchone", "nosuchtwo", "nosuchthree"];
    for name in names {
        let (s, body) = d
            .get_json(&format!("/v1/data/{name}/AAPL?start=2024-01-02&end=2024-01-02"))
            .await;
        assert_eq!(s, 404, "{body}");
        assert_eq!(body["error"]["code"], "plugin_not_found", "{body}");
    }
    let (s, _) = d
        .get_json("/v1/data/synthetic/AAPL?start=2024-01-02&end=2024-01-02")
        .await;
    assert_eq!(s, 200);
    let m = d.metrics().await;
    assert_eq!(
        expect_metric(&m, "stock_requests_total", &[("plugin", "(unknown)")]),
        3.0
    );
    assert_eq!(
        expect_metric(
            &m,
            "stock_requests_failure_total",
            &[("plugin", "(unknown)"), ("reason", "plugin_not_found")]
        ),
        3.0
    );
    // A loaded plugin keeps its own label.
    assert_eq!(
        expect_metric(&m, "stock_requests_total", &[("plugin", "synthetic")]),
        1.0
    );
    let leaked: Vec<&str> = m.lines().filter(|l| l.contains("nosuch")).collect();
    assert!(leaked.is_empty(), "series named after unknown plugins: {leaked:#?}");
}
