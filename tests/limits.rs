//! Plugin limits (docs/PLUGINS.md, "The sandbox and its limits"), through the real daemon: wall time against busy
//! loops (also inside `pcall` and inside coroutines the plugin creates),
//! memory against table and `string.rep` bombs, and concurrency. After each
//! broken limit the daemon still serves another plugin and the broken
//! plugin's own state still serves a normal request.

mod common;

use std::time::{Duration, Instant};

use common::mock_upstream::{Canned, Gate, MockUpstream};
use common::{Daemon, DaemonBuilder, RedisServer, error_of};

const ONE_DAY: &str = "?start=2024-01-02&end=2024-01-02";

/// Breaks one limit per ticker; any other ticker is a normal answer.
const SPIN: &str = r#"
return {
  description = "breaks limits on request",
  timeout = "1s",
  fetch = function(req)
    local t = req.ticker
    if t == "LOOP" then
      while true do end
    elseif t == "PCALL" then
      while true do pcall(function() while true do end end) end
    elseif t == "XPCALL" then
      while true do xpcall(function() while true do end end, function(e) return e end) end
    elseif t == "WRAP" then
      while true do pcall(coroutine.wrap(function() while true do end end)) end
    elseif t == "RESUME" then
      while true do coroutine.resume(coroutine.create(function() while true do end end)) end
    elseif t == "TABLE" then
      local grow, i = {}, 0
      while true do i = i + 1; grow[i] = { i, tostring(i) } end
    elseif t == "REP" then
      local s = string.rep("x", 2^30)
      return { bars = {}, meta = { len = #s } }
    elseif t == "REP40" then
      local s = string.rep("x", 2^40)
      return { bars = {}, meta = { len = #s } }
    elseif t == "PCALLMEM" then
      -- Caught, then raised again with the plugin's own words around it.
      local ok, err = pcall(function()
        local grow, i = {}, 0
        while true do i = i + 1; grow[i] = { i } end
      end)
      error("could not build the table: " .. tostring(err))
    elseif t == "CONCAT" then
      -- A small table of one shared 8 KiB string: only the C function's
      -- result buffer (24 MiB) is over the limit.
      local chunk, parts = string.rep("x", 8192), {}
      for i = 1, 3072 do parts[i] = chunk end
      return { bars = {}, meta = { len = #table.concat(parts) } }
    elseif t == "COROMEM" then
      coroutine.wrap(function()
        local grow, i = {}, 0
        while true do i = i + 1; grow[i] = { i } end
      end)()
    end
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } } }
  end,
}
"#;

struct Setup {
    d: Daemon,
    _redis: RedisServer,
}

/// The spin plugin on one state (so "its next request" runs on the very
/// state that broke the limit) with a 16 MiB memory limit and the given
/// timeout, plus synthetic.
async fn spin_daemon(timeout: &str) -> Setup {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("spin", SPIN)
        .bundled("synthetic")
        .config(&format!(
            "[plugins.spin]\nmemory_limit = \"16MiB\"\nstates = 1\ntimeout = \"{timeout}\"\n"
        ))
        .start()
        .await;
    Setup { d, _redis: redis }
}

/// Memory tests run with a timeout far above what filling 16 MiB takes even
/// on a loaded machine, so the memory limit is what stops them.
const MEMORY_TEST_TIMEOUT: &str = "60s";

/// One request that must fail: its status, code, message and duration.
async fn broken(d: &Daemon, ticker: &str) -> (u16, String, String, Duration) {
    let started = Instant::now();
    let (s, body) = d.get_json(&format!("/v1/data/spin/{ticker}{ONE_DAY}")).await;
    let took = started.elapsed();
    let (code, msg) = error_of(&body);
    eprintln!("{ticker}: {s} {code} in {took:?}: {msg}");
    (s, code, msg, took)
}

/// The daemon still serves another plugin, and spin's state a normal request.
async fn still_serving(d: &Daemon, tag: &str) {
    let (s, body) = d.get_json("/healthz").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = d.get_json(&format!("/v1/data/synthetic/AAPL{ONE_DAY}")).await;
    assert_eq!(s, 200, "after {tag}, synthetic: {body}");
    for i in 0..2 {
        let (s, body) = d.get_json(&format!("/v1/data/spin/OK{tag}{i}{ONE_DAY}")).await;
        assert_eq!(s, 200, "after {tag}, spin's own state: {body}");
    }
}

async fn assert_times_out(ticker: &str) {
    let s = spin_daemon("1s").await;
    let (status, code, msg, took) = broken(&s.d, ticker).await;
    assert_eq!(status, 504, "{ticker}: {msg}");
    assert_eq!(code, "plugin_timeout", "{ticker}: {msg}");
    assert!(
        msg.contains("timeout of 1s"),
        "{ticker}: the message names the timeout: {msg}"
    );
    // Not before the timeout; and stopped by it, well before the client's
    // own 30 s timeout (which is what a loop nobody stopped would meet).
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(10),
        "{ticker}: stopped at its 1s timeout, took {took:?}"
    );
    still_serving(&s.d, ticker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loop_is_stopped_at_the_timeout() {
    assert_times_out("LOOP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcall_cannot_swallow_the_timeout() {
    assert_times_out("PCALL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xpcall_cannot_swallow_the_timeout() {
    assert_times_out("XPCALL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loop_in_a_wrapped_coroutine_is_stopped() {
    assert_times_out("WRAP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loop_in_a_resumed_coroutine_is_stopped() {
    assert_times_out("RESUME").await;
}

async fn assert_memory_limit(ticker: &str) {
    let s = spin_daemon(MEMORY_TEST_TIMEOUT).await;
    let (status, code, msg, took) = broken(&s.d, ticker).await;
    assert_eq!(status, 502, "{ticker}: {msg}");
    assert_eq!(code, "plugin_error", "{ticker}: {msg}");
    assert!(
        msg.contains("memory limit of 16 MiB"),
        "{ticker}: the message names the memory limit: {msg}"
    );
    eprintln!("{ticker}: memory limit reached in {took:?}");
    still_serving(&s.d, ticker).await;
    // And again: the state recovered, it did not just survive once.
    let (status, _, msg, _) = broken(&s.d, ticker).await;
    assert_eq!(status, 502, "{ticker} again: {msg}");
    assert!(msg.contains("memory limit of 16 MiB"), "{ticker} again: {msg}");
    still_serving(&s.d, &format!("{ticker}2")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_growth_hits_the_memory_limit() {
    assert_memory_limit("TABLE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_rep_bomb_hits_the_memory_limit() {
    // 1 GiB: under Lua's own string size cap, so the allocation is what fails.
    assert_memory_limit("REP").await;
}

/// `string.rep("x", 2^40)` never reaches the allocator: Lua 5.4 caps a
/// string built by the string library at `INT_MAX` bytes and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_rep_past_luas_own_size_cap_fails_at_once() {
    let s = spin_daemon(MEMORY_TEST_TIMEOUT).await;
    let (status, code, msg, _) = broken(&s.d, "REP40").await;
    assert_eq!(status, 502, "{msg}");
    assert_eq!(code, "plugin_error", "{msg}");
    assert!(msg.contains("resulting string too large"), "{msg}");
    still_serving(&s.d, "REP40").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_and_reraised_memory_error_still_names_the_limit() {
    assert_memory_limit("PCALLMEM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_concat_bomb_hits_the_memory_limit() {
    assert_memory_limit("CONCAT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_in_a_coroutine_names_the_memory_limit() {
    assert_memory_limit("COROMEM").await;
}

// ------------------------------------------------------------------ concurrency

/// One upstream call per fetch, keyed by ticker.
const FAN: &str = r#"
return {
  description = "one slow upstream call per fetch",
  timeout = "15s",
  env = { "MOCK" },
  fetch = function(req)
    local res = http.get(env.get("MOCK") .. "/quote", { query = { s = req.ticker } })
    if res.status ~= 200 then error("upstream answered " .. res.status) end
    return {
      bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } },
      meta = { body = res.body },
    }
  end,
}
"#;

/// Starts `n` concurrent fetches of distinct tickers to `plugin`.
fn fan_out(d: &Daemon, plugin: &str, tag: &str, n: usize) -> tokio::task::JoinSet<(u16, String)> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url) = (d.http.clone(), d.url(&format!("/v1/data/{plugin}/{tag}{i}{ONE_DAY}")));
        tasks.spawn(async move {
            let r = http.get(&url).send().await.expect("GET");
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        });
    }
    tasks
}

/// Every fetch answered 200.
async fn all_ok(mut tasks: tokio::task::JoinSet<(u16, String)>) {
    while let Some(res) = tasks.join_next().await {
        let (s, body) = res.expect("task");
        assert_eq!(s, 200, "{body}");
    }
}

/// Waits until `n` requests to `plugin` have reached the daemon
/// (`stock_requests_total` counts a request as it arrives).
async fn wait_arrived(d: &Daemon, plugin: &str, n: f64) {
    common::wait_for(
        &format!("{n} requests to {plugin}"),
        Duration::from_secs(60),
        || async {
            let m = d.metrics().await;
            (common::metric(&m, "stock_requests_total", &[("plugin", plugin)]) == Some(n)).then_some(())
        },
    )
    .await;
}

/// Waits until the mock holds at least `n` requests at its gate.
async fn wait_held(mock: &MockUpstream, n: usize) {
    common::wait_for(
        &format!("{n} requests held at the mock"),
        Duration::from_secs(60),
        || async { (mock.in_flight() >= n).then_some(()) },
    )
    .await;
}

/// How long a fetch past the concurrency limit gets to show up at the mock
/// if the limit were not enforced: a window for a negative check, not a bound
/// on anything that must happen.
const OVERRUN_WINDOW: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_bounds_the_fetches_running_at_once() {
    const N: usize = 100;
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("fan", FAN)
        .plugin("fan128", FAN)
        .env("MOCK", &mock.base)
        .config("[plugins.fan]\ntimeout = \"60s\"\n[plugins.fan128]\nmax_concurrency = 128\ntimeout = \"60s\"\n")
        .start()
        .await;

    // Default max_concurrency (64): 64 fetches reach the mock, 36 wait.
    let gate = Gate::new();
    mock.on("/quote", Canned::text(200, "ok").gated(&gate));
    let tasks = fan_out(&d, "fan", "C", N);
    wait_arrived(&d, "fan", N as f64).await;
    wait_held(&mock, 64).await;
    tokio::time::sleep(OVERRUN_WINDOW).await;
    assert_eq!(mock.in_flight(), 64, "max_concurrency 64 let more fetches through");
    gate.open();
    all_ok(tasks).await;
    assert_eq!(
        mock.peak(),
        64,
        "peak concurrency at the upstream with max_concurrency 64"
    );
    assert_eq!(mock.count("/quote"), N, "no fetch was coalesced or cached");

    // max_concurrency = 128: all 100 run at once.
    let gate = Gate::new();
    mock.on("/quote", Canned::text(200, "ok").gated(&gate));
    let tasks = fan_out(&d, "fan128", "C", N);
    wait_held(&mock, N).await;
    gate.open();
    all_ok(tasks).await;
    assert_eq!(
        mock.peak(),
        N,
        "peak concurrency at the upstream with max_concurrency 128"
    );
    assert_eq!(mock.count("/quote"), 2 * N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_one_queues_requests_instead_of_failing_them() {
    let gate = Gate::new();
    let mock = MockUpstream::start().await;
    mock.on("/quote", Canned::text(200, "ok").gated(&gate));
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("one", FAN)
        .env("MOCK", &mock.base)
        .config("[plugins.one]\nmax_concurrency = 1\ntimeout = \"60s\"\n")
        .start()
        .await;
    let tasks = fan_out(&d, "one", "Q", 4);
    wait_arrived(&d, "one", 4.0).await;
    wait_held(&mock, 1).await;
    tokio::time::sleep(OVERRUN_WINDOW).await;
    assert_eq!(mock.in_flight(), 1, "one at a time");
    gate.open();
    all_ok(tasks).await;
    assert_eq!(mock.peak(), 1, "never two at once");
    assert_eq!(mock.count("/quote"), 4, "each queued request was fetched");
}
