//! The bundled network plugins (yahoo, stooq, alphavantage) and the `http`
//! host module, run by the real daemon against a local mock upstream that
//! serves each source's real formats, including its failure answers.

mod common;

use std::time::Duration;

use common::mock_upstream::{Canned, MockUpstream};
use common::{Daemon, DaemonBuilder, RedisServer, error_of};
use serde_json::Value;

async fn data(d: &Daemon, path: &str) -> (u16, String, Value) {
    d.data(path).await
}

fn dates(body: &Value) -> Vec<String> {
    body["bars"]
        .as_array()
        .unwrap_or_else(|| panic!("no bars in {body}"))
        .iter()
        .map(|b| b["date"].as_str().unwrap().to_owned())
        .collect()
}

async fn daemon(redis: &RedisServer, plugin: &str, env: &[(&str, &str)]) -> Daemon {
    let mut b = DaemonBuilder::new(&redis.url()).bundled(plugin);
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start().await
}

// ---------------------------------------------------------------- yahoo

const BHP: &str = "/v8/finance/chart/BHP.AX";

/// BHP on the ASX: sessions open at 10:00 in Sydney (AEDT, UTC+11), which is
/// 23:00 UTC the day before. One bar before and one after the asked range
/// (Yahoo's window is widened), and 2024-01-04 is all nulls.
fn yahoo_asx_chart() -> String {
    // 2023-12-29, 2024-01-02, 01-03, 01-04 (nulls), 01-05, 01-08 (local dates)
    let ts = [
        1703804400i64,
        1704150000,
        1704236400,
        1704322800,
        1704409200,
        1704668400,
    ];
    serde_json::json!({
      "chart": {
        "result": [{
          "meta": {
            "currency": "AUD", "symbol": "BHP.AX", "exchangeName": "ASX", "fullExchangeName": "ASX",
            "instrumentType": "EQUITY", "firstTradeDate": 696294000, "regularMarketTime": 1704433200,
            "hasPrePostMarketData": false, "gmtoffset": 39600, "timezone": "AEDT",
            "exchangeTimezoneName": "Australia/Sydney", "regularMarketPrice": 50.79,
            "chartPreviousClose": 50.2, "priceHint": 2, "dataGranularity": "1d", "range": "",
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"]
          },
          "timestamp": ts,
          "indicators": {
            "quote": [{
              "open":   [50.0, 50.25, 50.9, null, 50.6, 51.0],
              "high":   [50.5, 50.88, 51.2, null, 51.0, 51.5],
              "low":    [49.8, 50.1, 50.4, null, 50.2, 50.7],
              "close":  [50.2, 50.77, 50.5, null, 50.79, 51.2],
              "volume": [4000000, 5123456, 6000000, null, null, 5500000]
            }],
            "adjclose": [{ "adjclose": [48.1, 48.65, 48.39, null, 48.67, 49.06] }]
          }
        }],
        "error": null
      }
    })
    .to_string()
}

const YAHOO_NOT_FOUND: &str =
    r#"{"chart":{"result":null,"error":{"code":"Not Found","description":"No data found, symbol may be delisted"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yahoo_dates_bars_by_the_exchange_day_skips_nulls_and_caches() {
    let mock = MockUpstream::start().await;
    mock.on(BHP, Canned::json(200, &yahoo_asx_chart()));
    let redis = RedisServer::start();
    let d = daemon(&redis, "yahoo", &[("YAHOO_BASE_URL", &mock.base)]).await;
    let path = "/v1/data/yahoo/BHP.AX?start=2024-01-02&end=2024-01-05";

    let (s, x, body) = data(&d, path).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(x, "MISS");
    // UTC dates would be 01-01, 01-02, 01-04: the bars carry the Sydney dates,
    // the null day is gone and the widened edges are cut back.
    assert_eq!(dates(&body), ["2024-01-02", "2024-01-03", "2024-01-05"], "{body}");
    let b0 = &body["bars"][0];
    assert_eq!(b0["open"], 50.25);
    assert_eq!(b0["high"], 50.88);
    assert_eq!(b0["low"], 50.1);
    assert_eq!(b0["close"], 50.77);
    assert_eq!(b0["volume"], 5123456);
    assert_eq!(b0["adjclose"], 48.65);
    let b2 = &body["bars"][2];
    assert_eq!(b2["close"], 50.79);
    assert!(b2.get("volume").is_none(), "a null volume is left out: {b2}");
    assert_eq!(body["meta"]["currency"], "AUD");
    assert_eq!(body["meta"]["exchange"], "ASX");
    assert_eq!(body["meta"]["timezone"], "Australia/Sydney");

    // What the plugin asked for: the window widened by a day on each side.
    let reqs = mock.requests_to(BHP);
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.param("period1").as_deref(), Some("1704067200"), "{}", r.query); // 2024-01-01
    assert_eq!(r.param("period2").as_deref(), Some("1704585600"), "{}", r.query); // 2024-01-07
    assert_eq!(r.param("interval").as_deref(), Some("1d"));
    assert_eq!(r.param("events").as_deref(), Some("div,split"));
    assert!(r.header("user-agent").unwrap_or_default().starts_with("tickerd/"));

    // A good answer is cached: the second request never reaches the upstream.
    let (s, x, body2) = data(&d, path).await;
    assert_eq!(s, 200, "{body2}");
    assert_eq!(x, "HIT");
    assert_eq!(body2["bars"], body["bars"]);
    assert_eq!(mock.count(BHP), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yahoo_unknown_symbol_is_no_data() {
    let mock = MockUpstream::start().await;
    mock.on("/v8/finance/chart/NOPE", Canned::json(404, YAHOO_NOT_FOUND));
    let redis = RedisServer::start();
    let d = daemon(&redis, "yahoo", &[("YAHOO_BASE_URL", &mock.base)]).await;

    let (s, _, body) = data(&d, "/v1/data/yahoo/NOPE?start=2024-01-02&end=2024-01-05").await;
    assert_eq!(s, 404, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "no_data");
    assert!(msg.contains("NOPE") && msg.contains("symbol may be delisted"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yahoo_429_cools_the_plugin_down_and_is_never_cached() {
    let mock = MockUpstream::start().await;
    mock.on(BHP, Canned::too_many_requests(2));
    let redis = RedisServer::start();
    let d = daemon(&redis, "yahoo", &[("YAHOO_BASE_URL", &mock.base)]).await;
    let path = "/v1/data/yahoo/BHP.AX?start=2024-01-02&end=2024-01-05";

    let r = d.get(path).await;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "the upstream's Retry-After: {retry}");
    let (code, msg) = error_of(&r.json().await.unwrap());
    assert_eq!(code, "rate_limited");
    assert!(msg.contains("429") && msg.contains("Too Many Requests"), "{msg}");
    assert_eq!(mock.count(BHP), 1);

    // While yahoo cools down, nothing is asked of it (and nothing was cached).
    let (s, _, body) = data(&d, path).await;
    assert_eq!((s, error_of(&body).0.as_str()), (429, "rate_limited"), "{body}");
    assert_eq!(mock.count(BHP), 1, "no call during the cool-down");

    // A server error without Retry-After, after the cool-down, is an upstream_error.
    mock.on(BHP, Canned::text(503, "Service Unavailable"));
    let (s, _, body) = common::wait_for("the cool-down to end", Duration::from_secs(15), || {
        let d = &d;
        async move {
            let got = data(d, path).await;
            (got.0 != 429).then_some(got)
        }
    })
    .await;
    assert_eq!((s, error_of(&body).0.as_str()), (502, "upstream_error"), "{body}");
    assert_eq!(mock.count(BHP), 2);

    // Once the source recovers, the data flows (nothing bad was remembered).
    mock.on(BHP, Canned::json(200, &yahoo_asx_chart()));
    let (s, x, body) = data(&d, path).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(x, "MISS");
    assert_eq!(mock.count(BHP), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_an_upstream_error_naming_the_host_not_the_query() {
    let redis = RedisServer::start();
    let dead = format!("http://127.0.0.1:{}", common::dead_port());
    let d = DaemonBuilder::new(&redis.url())
        .bundled("yahoo")
        .bundled("alphavantage")
        .env("YAHOO_BASE_URL", &dead)
        .env("ALPHAVANTAGE_BASE_URL", &dead)
        .env("ALPHAVANTAGE_API_KEY", "SECRET-KEY-42")
        .start()
        .await;

    let (s, _, body) = data(&d, "/v1/data/yahoo/AAPL?start=2024-01-02&end=2024-01-05").await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "upstream_error");
    assert!(msg.contains(&format!("{dead}/v8/finance/chart/AAPL")), "{msg}");
    assert!(msg.contains("could not connect"), "{msg}");
    assert!(
        !msg.contains("period1"),
        "the query string stays out of messages: {msg}"
    );

    let (s, _, body) = data(&d, "/v1/data/alphavantage/IBM?start=2024-01-02&end=2024-01-05").await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "upstream_error");
    assert!(!msg.contains("SECRET-KEY-42") && !msg.contains("apikey"), "{msg}");
    assert!(!d.log().contains("SECRET-KEY-42"), "the API key reached the log");
}

// ---------------------------------------------------------------- stooq

const STOOQ: &str = "/q/d/l/";

const STOOQ_CSV: &str = "Date,Open,High,Low,Close,Volume\r\n\
2023-12-29,193.9,194.4,191.73,192.53,42672148\r\n\
2024-01-02,187.15,188.44,183.885,185.64,82488674\r\n\
2024-01-04,182.15,183.0872,180.88,181.91,71983570\r\n\
2024-01-03,184.22,185.88,183.43,184.25,58414460\r\n\
2024-01-05,181.99,182.76,180.17,181.18,62379661\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stooq_maps_us_tickers_parses_csv_and_caches() {
    let mock = MockUpstream::start().await;
    mock.on(STOOQ, Canned::new(200, "text/csv", STOOQ_CSV));
    let redis = RedisServer::start();
    let d = daemon(&redis, "stooq", &[("STOOQ_BASE_URL", &mock.base)]).await;
    let path = "/v1/data/stooq/AAPL?start=2024-01-02&end=2024-01-04";

    let (s, x, body) = data(&d, path).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(x, "MISS");
    assert_eq!(
        dates(&body),
        ["2024-01-02", "2024-01-03", "2024-01-04"],
        "sorted and cut to the range"
    );
    let b0 = &body["bars"][0];
    assert_eq!(b0["open"], 187.15);
    assert_eq!(b0["low"], 183.885);
    assert_eq!(b0["close"], 185.64);
    assert_eq!(b0["volume"], 82488674);

    let reqs = mock.requests_to(STOOQ);
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.param("s").as_deref(), Some("aapl.us"), "{}", r.query);
    assert_eq!(r.param("d1").as_deref(), Some("20240102"));
    assert_eq!(r.param("d2").as_deref(), Some("20240104"));
    assert_eq!(r.param("i").as_deref(), Some("d"));
    assert_eq!(
        r.query, "d1=20240102&d2=20240104&i=d&s=aapl.us",
        "query keys are sorted"
    );

    let (s, x, _) = data(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "HIT"));
    assert_eq!(mock.count(STOOQ), 1);

    // A dashed US ticker gets the suffix too; one with a market suffix keeps it.
    data(&d, "/v1/data/stooq/BRK-B?start=2024-01-02&end=2024-01-04").await;
    data(&d, "/v1/data/stooq/VOD.UK?start=2024-01-02&end=2024-01-04").await;
    let asked: Vec<String> = mock.requests_to(STOOQ).iter().filter_map(|r| r.param("s")).collect();
    assert_eq!(asked, ["aapl.us", "brk-b.us", "vod.uk"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stooq_no_data_body_is_no_data() {
    let mock = MockUpstream::start().await;
    mock.on(STOOQ, Canned::new(200, "text/csv", "No data"));
    let redis = RedisServer::start();
    let d = daemon(&redis, "stooq", &[("STOOQ_BASE_URL", &mock.base)]).await;

    let (s, _, body) = data(&d, "/v1/data/stooq/ZZZZ?start=2024-01-02&end=2024-01-04").await;
    assert_eq!(s, 404, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "no_data");
    assert!(msg.contains("zzzz.us"), "{msg}");

    // Anything that is not CSV (a quota message) is an upstream failure.
    mock.on(STOOQ, Canned::text(200, "Exceeded the daily hits limit"));
    let (s, _, body) = data(&d, "/v1/data/stooq/MSFT?start=2024-01-02&end=2024-01-04").await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "upstream_error");
    assert!(msg.contains("Exceeded the daily hits limit"), "{msg}");
}

// ---------------------------------------------------------------- alphavantage

const AV: &str = "/query";

/// Dates in no particular order and numbers as strings, as Alpha Vantage sends them.
const AV_DAILY: &str = r#"{
    "Meta Data": {
        "1. Information": "Daily Prices (open, high, low, close) and Volumes",
        "2. Symbol": "IBM",
        "3. Last Refreshed": "2024-01-05",
        "4. Output Size": "Full size",
        "5. Time Zone": "US/Eastern"
    },
    "Time Series (Daily)": {
        "2024-01-05": {
            "1. open": "160.9000",
            "2. high": "161.4500",
            "3. low": "159.8000",
            "4. close": "159.1600",
            "5. volume": "4961155"
        },
        "2024-01-02": {
            "1. open": "162.8300",
            "2. high": "163.2900",
            "3. low": "160.5000",
            "4. close": "158.7100",
            "5. volume": "5107211"
        },
        "2024-01-04": {
            "1. open": "160.5000",
            "2. high": "161.9100",
            "3. low": "160.1400",
            "4. close": "160.1400",
            "5. volume": "5013426"
        },
        "2023-12-29": {
            "1. open": "162.4000",
            "2. high": "163.2000",
            "3. low": "161.6600",
            "4. close": "163.5500",
            "5. volume": "3295427"
        },
        "2024-01-03": {
            "1. open": "161.0000",
            "2. high": "161.7300",
            "3. low": "160.0800",
            "4. close": "160.9000",
            "5. volume": "4086627"
        }
    }
}"#;

const AV_NOTE: &str = r#"{
    "Note": "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute and 500 calls per day. Please visit https://www.alphavantage.co/premium/ if you would like to target a higher API call frequency."
}"#;

const AV_INFORMATION: &str = r#"{
    "Information": "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day. Please subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to instantly remove all daily rate limits."
}"#;

const AV_ERROR: &str = r#"{
    "Error Message": "Invalid API call. Please retry or visit the documentation (https://www.alphavantage.co/documentation/) for TIME_SERIES_DAILY."
}"#;

/// A daemon running the bundled Alpha Vantage plugin against the mock.
async fn av_daemon(redis: &RedisServer, mock: &MockUpstream) -> Daemon {
    daemon(
        redis,
        "alphavantage",
        &[
            ("ALPHAVANTAGE_BASE_URL", &mock.base),
            ("ALPHAVANTAGE_API_KEY", "demo-key"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alphavantage_parses_string_numbers_sorts_and_caches() {
    let mock = MockUpstream::start().await;
    mock.on_query(AV, &[("symbol", "IBM")], Canned::json(200, AV_DAILY));
    let redis = RedisServer::start();
    let d = av_daemon(&redis, &mock).await;
    let path = "/v1/data/alphavantage/IBM?start=2024-01-02&end=2024-01-04";

    let (s, x, body) = data(&d, path).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(x, "MISS");
    assert_eq!(dates(&body), ["2024-01-02", "2024-01-03", "2024-01-04"]);
    let b0 = &body["bars"][0];
    assert_eq!(b0["open"], 162.83);
    assert_eq!(b0["high"], 163.29);
    assert_eq!(b0["low"], 160.5);
    assert_eq!(b0["close"], 158.71);
    assert_eq!(b0["volume"], 5107211);
    assert_eq!(body["meta"]["symbol"], "IBM");

    let r = &mock.requests_to(AV)[0];
    assert_eq!(r.param("function").as_deref(), Some("TIME_SERIES_DAILY"));
    assert_eq!(r.param("symbol").as_deref(), Some("IBM"));
    assert_eq!(r.param("outputsize").as_deref(), Some("full"));
    assert_eq!(r.param("apikey").as_deref(), Some("demo-key"));

    let (s, x, _) = data(&d, path).await;
    assert_eq!((s, x.as_str()), (200, "HIT"));
    assert_eq!(mock.count(AV), 1);

    // The answer declared the whole history it holds (coverage): another
    // range inside it is a hit without a second call.
    let (s, x, body) = data(&d, "/v1/data/alphavantage/IBM?start=2023-12-29&end=2024-01-05").await;
    assert_eq!((s, x.as_str()), (200, "HIT"), "{body}");
    assert_eq!(dates(&body).first().map(String::as_str), Some("2023-12-29"));
    assert_eq!(dates(&body).last().map(String::as_str), Some("2024-01-05"));
    assert_eq!(mock.count(AV), 1);
}

/// Alpha Vantage's rate-limit notes come in 200 answers: the plugin raises
/// errors.rate_limited, so the plugin cools down fleet-wide (a minute for
/// the per-minute note, the longest cool-down for the daily quota's) and
/// nothing is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alphavantage_notes_in_a_200_answer_cool_down_never_cached() {
    for (symbol, body, needle, cooldown) in [
        ("IBM", AV_NOTE, "API call frequency", 60),
        ("MSFT", AV_INFORMATION, "25 requests per day", 3600),
    ] {
        let mock = MockUpstream::start().await;
        mock.on_query(AV, &[("symbol", symbol)], Canned::json(200, body));
        let redis = RedisServer::start();
        let d = av_daemon(&redis, &mock).await;
        let path = format!("/v1/data/alphavantage/{symbol}?start=2024-01-02&end=2024-01-04");

        let r = d.get(&path).await;
        assert_eq!(r.status().as_u16(), 429, "{symbol}");
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            retry <= cooldown && retry + 5 >= cooldown,
            "{symbol}: Retry-After {retry}"
        );
        let (code, msg) = error_of(&r.json().await.unwrap());
        assert_eq!(code, "rate_limited");
        assert!(msg.contains(needle), "{msg}");

        let (s, _, body) = data(&d, &path).await;
        assert_eq!(s, 429, "{body}");
        assert_eq!(
            mock.count(AV),
            1,
            "a rate-limit note is never cached, and not asked again while cooling down"
        );
        let (_, info) = d.get_json("/v1/plugins/alphavantage").await;
        assert_eq!(info["rate_limit"], serde_json::json!(["5/min", "25/day"]), "{info}");
        assert!(info["cooldown_until"].is_string(), "{info}");
    }

    // An error note is no_data, not a refusal.
    let mock = MockUpstream::start().await;
    mock.on_query(AV, &[("symbol", "NOPE")], Canned::json(200, AV_ERROR));
    let redis = RedisServer::start();
    let d = av_daemon(&redis, &mock).await;
    let (s, _, body) = data(&d, "/v1/data/alphavantage/NOPE?start=2024-01-02&end=2024-01-04").await;
    assert_eq!(s, 404, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "no_data");
    assert!(msg.contains("NOPE") && msg.contains("Invalid API call"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alphavantage_without_a_key_says_which_variable_to_set() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("alphavantage")
        .env("ALPHAVANTAGE_BASE_URL", &mock.base)
        .start()
        .await;
    let (s, _, body) = data(&d, "/v1/data/alphavantage/IBM?start=2024-01-02&end=2024-01-04").await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "plugin_error");
    assert!(msg.contains("ALPHAVANTAGE_API_KEY"), "{msg}");
    assert!(mock.requests().is_empty(), "no call without a key");
}

// ---------------------------------------------------------------- the http module

/// Exercises `http` and `csv`; what it saw comes back in `meta`.
const ECHO: &str = r#"
return {
  description = "http module test plugin",
  timeout = "10s",
  env = { "MOCK" },
  fetch = function(req)
    local base = env.get("MOCK")
    local meta = {}
    local t = req.ticker
    if t == "QUERY" then
      local res = http.get(base .. "/echo?fixed=1", {
        query = { zeta = "two words", alpha = "a&b=c", n = 5 },
        headers = { ["X-Test"] = "yes", Accept = "text/csv" },
        timeout = 5,
      })
      meta.status = res.status
      meta.ctype = res.headers["content-type"]
      meta.custom = res.headers["x-custom"]
      meta.body = res.body
      local rows, header = csv.parse(res.body)
      meta.rows = #rows
      meta.second_name = rows[2].name
      meta.header2 = header[2]
    elseif t == "POST" then
      local res = http.post(base .. "/post", { body = { hello = "world", n = 1 } })
      meta.status = res.status
      local raw = http.request({ method = "put", url = base .. "/post", body = "plain", headers = { ["Content-Type"] = "text/plain" } })
      meta.raw_status = raw.status
    elseif t == "MISSING" then
      local res = http.get(base .. "/nowhere")
      meta.status = res.status
    elseif t == "SLOW" then
      http.get(base .. "/slow", { timeout = "300ms" })
    elseif t == "BIG" then
      http.get(base .. "/big")
    elseif t == "BIGSTREAM" then
      http.get(base .. "/bigstream")
    elseif t == "REDIR" then
      http.get(base .. "/redir")
    elseif t == "FILE" then
      http.get("file:///etc/passwd")
    elseif t == "BADOPT" then
      http.get(base .. "/echo", { querry = {} })
    end
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } }, meta = meta }
  end,
}
"#;

const ONE_DAY: &str = "?start=2024-01-02&end=2024-01-02";

async fn echo_daemon(redis: &RedisServer, mock: &MockUpstream) -> Daemon {
    DaemonBuilder::new(&redis.url())
        .plugin("echo", ECHO)
        .plugin("guarded", ECHO)
        .env("MOCK", &mock.base)
        .plugin("local_only", ECHO)
        .config(
            "[plugins.echo]\nmax_body = \"64KiB\"\n\n\
             [plugins.guarded]\nallow_hosts = [\"data.example.com\"]\n\n\
             [plugins.local_only]\nallow_hosts = [\"127.0.0.1\"]\n",
        )
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sends_sorted_query_and_headers_and_returns_status_headers_body() {
    let mock = MockUpstream::start().await;
    mock.on(
        "/echo",
        Canned::new(
            200,
            "text/csv",
            "\u{feff}id,name\r\n1,\"Smith, J\"\r\n2,\"say \"\"hi\"\"\"\r\n",
        )
        .header("X-Custom", "42"),
    );
    mock.on("/post", Canned::json(201, "{}"));
    let redis = RedisServer::start();
    let d = echo_daemon(&redis, &mock).await;

    let (s, _, body) = data(&d, &format!("/v1/data/echo/QUERY{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    let m = &body["meta"];
    assert_eq!(m["status"], 200);
    assert_eq!(m["ctype"], "text/csv");
    assert_eq!(m["custom"], "42", "header names are lower-cased: {m}");
    assert_eq!(m["rows"], 2);
    assert_eq!(m["second_name"], "say \"hi\"");
    assert_eq!(m["header2"], "name");
    let r = &mock.requests_to("/echo")[0];
    assert_eq!(
        r.query, "fixed=1&alpha=a%26b%3Dc&n=5&zeta=two+words",
        "appended, encoded, sorted"
    );
    assert_eq!(r.header("x-test").as_deref(), Some("yes"));
    assert_eq!(r.header("accept").as_deref(), Some("text/csv"));

    let (s, _, body) = data(&d, &format!("/v1/data/echo/POST{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["meta"]["status"], 201);
    assert_eq!(body["meta"]["raw_status"], 201);
    let posts = mock.requests_to("/post");
    assert_eq!(posts[0].method, "POST");
    assert_eq!(posts[0].header("content-type").as_deref(), Some("application/json"));
    let sent: Value = serde_json::from_slice(&posts[0].body).unwrap();
    assert_eq!(sent, serde_json::json!({"hello": "world", "n": 1}));
    assert_eq!(posts[1].method, "PUT");
    assert_eq!(posts[1].header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(posts[1].body, b"plain");

    // Any status is an answer for the plugin to judge.
    let (s, _, body) = data(&d, &format!("/v1/data/echo/MISSING{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["meta"]["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_limits_timeouts_schemes_and_allow_list_fail_clearly() {
    let mock = MockUpstream::start().await;
    mock.on("/slow", Canned::text(200, "late").delayed(Duration::from_secs(3)));
    mock.on("/big", Canned::text(200, &"x".repeat(200 * 1024)));
    mock.on("/bigstream", Canned::text(200, &"x".repeat(200 * 1024)).chunked());
    mock.on("/echo", Canned::text(200, "ok"));
    let redis = RedisServer::start();
    let d = echo_daemon(&redis, &mock).await;

    let started = std::time::Instant::now();
    let (s, _, body) = data(&d, &format!("/v1/data/echo/SLOW{ONE_DAY}")).await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "upstream_error");
    assert!(msg.contains("/slow") && msg.contains("300ms"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the call's own timeout applies"
    );

    // Over max_body (64 KiB here), whether announced by content-length or streamed.
    for (ticker, path) in [("BIG", "/big"), ("BIGSTREAM", "/bigstream")] {
        let (s, _, body) = data(&d, &format!("/v1/data/echo/{ticker}{ONE_DAY}")).await;
        assert_eq!(s, 502, "{body}");
        let (code, msg) = error_of(&body);
        assert_eq!(code, "plugin_error");
        assert!(
            msg.contains("limit of 64 KiB") && msg.contains("[plugins.echo]") && msg.contains(path),
            "{msg}"
        );
    }

    let (s, _, body) = data(&d, &format!("/v1/data/echo/FILE{ONE_DAY}")).await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "plugin_error");
    assert!(msg.contains("only http and https"), "{msg}");

    let (s, _, body) = data(&d, &format!("/v1/data/echo/BADOPT{ONE_DAY}")).await;
    assert_eq!(s, 502, "{body}");
    assert!(error_of(&body).1.contains("unknown option querry"), "{body}");

    let before = mock.count("/echo");
    let (s, _, body) = data(&d, &format!("/v1/data/guarded/QUERY{ONE_DAY}")).await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "plugin_error");
    assert!(
        msg.contains("127.0.0.1") && msg.contains("[plugins.guarded] allow_hosts"),
        "{msg}"
    );
    assert_eq!(mock.count("/echo"), before, "a denied host is never contacted");

    // A redirect to a host outside the list does not hand its answer to the plugin.
    let port = mock.base.rsplit(':').next().unwrap();
    mock.on(
        "/redir",
        Canned::text(302, "").header("location", &format!("http://localhost:{port}/echo")),
    );
    let (s, _, body) = data(&d, &format!("/v1/data/local_only/REDIR{ONE_DAY}")).await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "plugin_error");
    assert!(
        msg.contains("\"localhost\"") && msg.contains("[plugins.local_only] allow_hosts"),
        "{msg}"
    );
}
