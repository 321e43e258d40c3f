//! The plugin sandbox (docs/PLUGINS.md, "The sandbox and its limits"), through the real daemon: one test per
//! capability a plugin must not have. A probe plugin tries the capability in
//! `fetch` and reports what happened in `meta`; where the attempt itself
//! must fail the request, the test checks the error and that the daemon is
//! still answering.

mod common;

use std::time::Duration;

use common::mock_upstream::{Canned, MockUpstream};
use common::{Daemon, DaemonBuilder, RedisServer, error_of};
use serde_json::Value;

const ONE_DAY: &str = "?start=2024-01-02&end=2024-01-02";

/// Tries one capability per ticker and reports in `meta`.
const PROBE: &str = r#"
-- "ok" when f(...) ran, otherwise its error message.
local function try(f, ...)
  local ok, err = pcall(f, ...)
  if ok then return "ok" end
  return tostring(err)
end

return {
  description = "sandbox probe",
  timeout = "5s",
  fetch = function(req)
    local t, meta = req.ticker, {}
    if t == "IO" then
      meta.type = type(io)
      meta.raw = type(rawget(_G, "io"))
      meta.call = try(function() return io.open("/etc/passwd") end)
    elseif t == "OS" then
      local keys = {}
      for k in pairs(os) do keys[#keys + 1] = k end
      table.sort(keys)
      meta.keys = table.concat(keys, ",")
      for _, name in ipairs({ "execute", "exit", "getenv", "remove", "rename", "tmpname", "setlocale", "difftime" }) do
        meta[name] = type(os[name])
      end
      meta.execute_call = try(function() return os.execute("true") end)
      meta.getenv_call = try(function() return os.getenv("HOME") end)
      meta.remove_call = try(function() return os.remove("/tmp/x") end)
      meta.time = math.type(os.time())
      meta.date = os.date("!%Y-%m-%d", 86400)
      meta.clock = type(os.clock())
    elseif t == "REQUIRE" then
      meta.type = type(require)
      meta.call = try(function() return require("os") end)
    elseif t == "DOFILE" then
      meta.type = type(dofile)
      meta.call = try(function() return dofile("/etc/passwd") end)
    elseif t == "LOADFILE" then
      meta.type = type(loadfile)
      meta.call = try(function() return loadfile("/etc/passwd") end)
    elseif t == "PACKAGE" then
      meta.type = type(package)
      meta.module = type(module)
      meta.loadstring = type(loadstring)
    elseif t == "DEBUG" then
      meta.type = type(debug)
      meta.call = try(function() return debug.getregistry() end)
    elseif t == "GLOBALS" then
      -- Nothing forbidden hides under another spelling of the globals table.
      local seen = {}
      for k in pairs(_G) do seen[#seen + 1] = tostring(k) end
      table.sort(seen)
      meta.globals = table.concat(seen, ",")
      meta.env_is_g = _ENV == _G
    elseif t == "DUMP" then
      meta.type = type(string.dump)
      meta.method = type(("").dump)
      meta.call = try(function() return string.dump(function() end) end)
    elseif t == "GC" then
      for _, opt in ipairs({ "collect", "step", "stop", "restart", "incremental", "generational", "isrunning" }) do
        meta[opt] = try(collectgarbage, opt)
      end
      meta.noarg = try(collectgarbage)
      local kb = collectgarbage("count")
      meta.count_type = math.type(kb)
      meta.count_positive = kb > 0
    elseif t == "LOADTEXT" then
      meta.plain = load("return 1 + 2")()
      meta.named = load("return ...", "=chunk")(7)
      meta.env = load("return x * 2", "=withenv", "t", { x = 21 })()
      meta.asked_b = load("return 'text even when b is asked'", "=b", "b")()
      meta.asked_bt = load("return 'bt'", "=bt", "bt")()
      local parts, i = { "return ", "'from ", "a reader'" }, 0
      meta.reader = load(function() i = i + 1; return parts[i] end)()
      local f, err = load("return +", "=broken")
      meta.syntax_f = type(f)
      meta.syntax_err = tostring(err)
    elseif t == "EXIT" then
      os.exit(1)
    elseif t == "EXIT_TRUE" then
      os.exit(true, true)
    end
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } }, meta = meta }
  end,
}
"#;

/// GET a daemon path: status and JSON body.
async fn data(d: &Daemon, path: &str) -> (u16, Value) {
    d.get_json(path).await
}

/// A daemon with the probe plugin (plus synthetic), and its Redis.
struct Probe {
    d: Daemon,
    _redis: RedisServer,
}

impl Probe {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let d = DaemonBuilder::new(&redis.url())
            .plugin("probe", PROBE)
            .bundled("synthetic")
            .start()
            .await;
        Self { d, _redis: redis }
    }

    /// `meta` of a successful probe fetch.
    async fn meta(&self, ticker: &str) -> serde_json::Map<String, Value> {
        let (s, body) = data(&self.d, &format!("/v1/data/probe/{ticker}{ONE_DAY}")).await;
        assert_eq!(s, 200, "{ticker}: {body}");
        body["meta"].as_object().cloned().unwrap_or_default()
    }
}

/// The daemon answers `/healthz` and still serves another plugin.
async fn assert_alive(d: &Daemon) {
    let (s, body) = d.get_json("/healthz").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = data(d, &format!("/v1/data/synthetic/AAPL{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
}

fn is_nil_call(msg: &Value, name: &str) -> bool {
    let m = msg.as_str().unwrap_or("");
    m.contains("attempt to") && m.contains("nil value") && m.contains(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_is_absent() {
    let p = Probe::start().await;
    let m = p.meta("IO").await;
    assert_eq!(m["type"], "nil");
    assert_eq!(m["raw"], "nil");
    assert!(is_nil_call(&m["call"], "io"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_has_only_time_date_and_clock() {
    let p = Probe::start().await;
    let m = p.meta("OS").await;
    assert_eq!(m["keys"], "clock,date,time", "{m:?}");
    for name in [
        "execute",
        "exit",
        "getenv",
        "remove",
        "rename",
        "tmpname",
        "setlocale",
        "difftime",
    ] {
        assert_eq!(m[name], "nil", "os.{name}: {m:?}");
    }
    assert!(is_nil_call(&m["execute_call"], "execute"), "{m:?}");
    assert!(is_nil_call(&m["getenv_call"], "getenv"), "{m:?}");
    assert!(is_nil_call(&m["remove_call"], "remove"), "{m:?}");
    assert_eq!(m["time"], "integer");
    assert_eq!(m["date"], "1970-01-02");
    assert_eq!(m["clock"], "number");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_is_absent() {
    let p = Probe::start().await;
    let m = p.meta("REQUIRE").await;
    assert_eq!(m["type"], "nil");
    assert!(is_nil_call(&m["call"], "require"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dofile_is_absent() {
    let p = Probe::start().await;
    let m = p.meta("DOFILE").await;
    assert_eq!(m["type"], "nil");
    assert!(is_nil_call(&m["call"], "dofile"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadfile_is_absent() {
    let p = Probe::start().await;
    let m = p.meta("LOADFILE").await;
    assert_eq!(m["type"], "nil");
    assert!(is_nil_call(&m["call"], "loadfile"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_is_absent() {
    let p = Probe::start().await;
    let m = p.meta("PACKAGE").await;
    assert_eq!(m["type"], "nil");
    assert_eq!(m["module"], "nil");
    assert_eq!(m["loadstring"], "nil");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_is_absent() {
    let p = Probe::start().await;
    let m = p.meta("DEBUG").await;
    assert_eq!(m["type"], "nil");
    assert!(is_nil_call(&m["call"], "debug"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_forbidden_name_is_reachable_through_the_globals_table() {
    let p = Probe::start().await;
    let m = p.meta("GLOBALS").await;
    let globals: Vec<&str> = m["globals"].as_str().unwrap().split(',').collect();
    for forbidden in [
        "io",
        "require",
        "dofile",
        "loadfile",
        "package",
        "debug",
        "module",
        "loadstring",
    ] {
        assert!(!globals.contains(&forbidden), "{forbidden} in _G: {globals:?}");
    }
    for expected in [
        "string",
        "table",
        "math",
        "utf8",
        "coroutine",
        "os",
        "load",
        "pcall",
        "http",
        "json",
        "csv",
        "log",
        "env",
        "date",
    ] {
        assert!(globals.contains(&expected), "{expected} missing from _G: {globals:?}");
    }
    assert_eq!(m["env_is_g"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_dump_is_absent() {
    let p = Probe::start().await;
    let m = p.meta("DUMP").await;
    assert_eq!(m["type"], "nil");
    assert_eq!(m["method"], "nil", "not reachable through the string metatable either");
    assert!(is_nil_call(&m["call"], "dump"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectgarbage_only_counts() {
    let p = Probe::start().await;
    let m = p.meta("GC").await;
    for opt in [
        "collect",
        "step",
        "stop",
        "restart",
        "incremental",
        "generational",
        "isrunning",
    ] {
        let msg = m[opt].as_str().unwrap_or("");
        assert!(
            msg.contains(&format!("collectgarbage(\"{opt}\") is not available")) && msg.contains("\"count\""),
            "{opt}: {msg}"
        );
    }
    assert!(m["noarg"].as_str().unwrap_or("").contains("not available"), "{m:?}");
    assert_eq!(m["count_type"], "float");
    assert_eq!(m["count_positive"], true);
}

/// `"\ddd"` escapes for any bytes, so they can sit in Lua source.
fn lua_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b}")).collect()
}

/// Real Lua 5.4 bytecode, made by the same Lua the daemon embeds.
fn real_bytecode() -> Vec<u8> {
    let lua = mlua::Lua::new();
    let f = lua.load("return 'bytecode ran'").into_function().expect("compile");
    let bc = f.dump(false);
    // The bytes are genuine: an unrestricted state runs them.
    let again: String = lua
        .load(&bc[..])
        .set_mode(mlua::chunk::ChunkMode::Binary)
        .call(())
        .expect("the dumped chunk loads as bytecode");
    assert_eq!(again, "bytecode ran");
    assert_eq!(&bc[..4], b"\x1bLua");
    bc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_refuses_bytecode_even_when_asked_for_binary_mode() {
    let bc = lua_bytes(&real_bytecode());
    let plugin = format!(
        r#"
local BC = "{bc}"
-- A bare header, as a plugin could type it without string.dump.
local HEADER = "\27Lua\84\0\25\147\r\n\26\n\4\8\8\120\86\0\0\0\0\0\0\0\0\0\0\0\40\119\64"
local function attempt(...)
  local ok, f, err = pcall(load, ...)
  if not ok then return "raised: " .. tostring(f) end
  if f ~= nil then
    local ran_ok, ran = pcall(f)
    return "LOADED: " .. tostring(ran)
  end
  return "nil: " .. tostring(err)
end
return {{
  description = "bytecode probe",
  fetch = function(req)
    local meta = {{}}
    meta.b = attempt(BC, "=bc", "b")
    meta.bt = attempt(BC, "=bc", "bt")
    meta.default = attempt(BC)
    meta.env = attempt(BC, "=bc", "b", {{}})
    local i = 0
    meta.reader = attempt(function() i = i + 1; if i == 1 then return BC end end, "=reader", "b")
    meta.header = attempt(HEADER .. "garbage", "=h", "b")
    meta.text_after = load("return 'text still loads'")()
    return {{ bars = {{ {{ date = req.start_date, open = 1, high = 1, low = 1, close = 1 }} }}, meta = meta }}
  end,
}}
"#
    );
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("bytecode", &plugin)
        .bundled("synthetic")
        .start()
        .await;
    let (s, body) = data(&d, &format!("/v1/data/bytecode/X{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    let m = &body["meta"];
    for k in ["b", "bt", "default", "env", "reader", "header"] {
        let r = m[k].as_str().unwrap_or("");
        assert!(
            r.starts_with("nil: ") && r.contains("attempt to load a binary chunk"),
            "load({k}) must refuse bytecode: {r}"
        );
    }
    assert_eq!(m["text_after"], "text still loads");
    assert_alive(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_made_of_bytecode_does_not_load() {
    let redis = RedisServer::start();
    let b = DaemonBuilder::new(&redis.url()).bundled("synthetic");
    std::fs::write(b.plugins_path().join("binary.lua"), real_bytecode()).unwrap();
    let d = b.start().await;
    let (s, p) = d.get_json("/v1/plugins/binary").await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["status"], "error", "{p}");
    let err = p["last_error"].as_str().unwrap_or("");
    assert!(err.contains("binary chunk"), "{err}");
    let (s, body) = data(&d, &format!("/v1/data/binary/X{ONE_DAY}")).await;
    assert_ne!(s, 200, "{body}");
    assert_alive(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_of_text_still_works() {
    let p = Probe::start().await;
    let m = p.meta("LOADTEXT").await;
    assert_eq!(m["plain"], 3);
    assert_eq!(m["named"], 7);
    assert_eq!(m["env"], 42);
    assert_eq!(m["asked_b"], "text even when b is asked");
    assert_eq!(m["asked_bt"], "bt");
    assert_eq!(m["reader"], "from a reader");
    assert_eq!(m["syntax_f"], "nil");
    assert!(m["syntax_err"].as_str().unwrap_or("").contains("broken"), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_exit_is_a_plugin_error_and_the_daemon_lives_on() {
    let p = Probe::start().await;
    let pid = p.d.pid();
    for ticker in ["EXIT", "EXIT_TRUE"] {
        let (s, body) = data(&p.d, &format!("/v1/data/probe/{ticker}{ONE_DAY}")).await;
        assert_eq!(s, 502, "{body}");
        let (code, msg) = error_of(&body);
        assert_eq!(code, "plugin_error");
        assert!(msg.contains("exit") && msg.contains("nil value"), "{msg}");
    }
    assert_alive(&p.d).await;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon process is still there"
    );
    // The probe's state is fine too.
    assert_eq!(p.meta("IO").await["type"], "nil");
}

/// Plugin A changes the shared-looking things: a global, the string
/// metatable's `__index`, the `string` table and a standard function.
const TAINT: &str = r#"
return {
  description = "tries to leak into other plugins",
  fetch = function(req)
    LEAKED = "from taint"
    getmetatable("").__index.evil = function() return "pwned" end
    getmetatable("").__add = function() return "added" end
    string.upper = function() return "hijacked" end
    math.pi = 3
    local mine = ("x"):evil() .. "," .. ("x"):upper() .. "," .. tostring(LEAKED)
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } }, meta = { mine = mine } }
  end,
}
"#;

/// Plugin B looks for A's changes.
const VICTIM: &str = r#"
return {
  description = "must not see the other plugin's changes",
  fetch = function(req)
    local meta = {}
    meta.global = type(rawget(_G, "LEAKED"))
    meta.evil = type(("x").evil)
    meta.string_evil = type(string.evil)
    local ok, sum = pcall(function() return "a" + {} end)
    meta.add = ok and tostring(sum) or "error"
    meta.upper = ("x"):upper()
    meta.pi = math.pi > 3.14
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } }, meta = meta }
  end,
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_see_another_plugins_globals_or_string_metatable() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("taint", TAINT)
        .plugin("victim", VICTIM)
        .start()
        .await;
    // Run the taint on every state it has (distinct tickers, no cache hits).
    for i in 0..4 {
        let (s, body) = data(&d, &format!("/v1/data/taint/T{i}{ONE_DAY}")).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            body["meta"]["mine"], "pwned,hijacked,from taint",
            "the change is real in its own state"
        );
    }
    for i in 0..4 {
        let (s, body) = data(&d, &format!("/v1/data/victim/V{i}{ONE_DAY}")).await;
        assert_eq!(s, 200, "{body}");
        let m = &body["meta"];
        assert_eq!(m["global"], "nil", "{m}");
        assert_eq!(m["evil"], "nil", "{m}");
        assert_eq!(m["string_evil"], "nil", "{m}");
        assert_eq!(m["add"], "error", "{m}");
        assert_eq!(m["upper"], "X", "{m}");
        assert_eq!(m["pi"], true, "{m}");
    }
}

// ------------------------------------------------ http inside a plugin's own coroutine

const CORO: &str = r##"
return {
  description = "http inside coroutines",
  timeout = "5s",
  env = { "MOCK" },
  fetch = function(req)
    local base = env.get("MOCK")
    local t, meta = req.ticker, {}
    if t == "WRAP" then
      local f = coroutine.wrap(function() return http.get(base .. "/slow").status end)
      meta.status = f()
    elseif t == "RESUME" then
      local co = coroutine.create(function() return http.get(base .. "/slow").status end)
      local ok, v = coroutine.resume(co)
      meta.ok, meta.v = ok, tostring(v)
    elseif t == "CAUGHT" then
      local co = coroutine.create(function() return http.get(base .. "/slow") end)
      local ok, err = pcall(coroutine.resume, co)
      meta.ok, meta.err = ok, tostring(err)
      meta.after = coroutine.status(co)
      local ok2, err2 = pcall(coroutine.wrap(function() return http.get(base .. "/slow") end))
      meta.wrap_ok, meta.wrap_err = ok2, tostring(err2)
      -- fetch itself still can
      meta.status = http.get(base .. "/slow").status
    elseif t == "DIRECT" then
      meta.status = http.get(base .. "/slow").status
      local ok, res = pcall(http.get, base .. "/slow")
      meta.in_pcall = ok and res.status
    elseif t == "GEN" then
      -- Plain yields in a plugin's own coroutines still work.
      local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end return 10 end)
      meta.sum = gen() + gen() + gen() + gen()
      local ok, err = pcall(gen)
      meta.dead = tostring(err)
      local co = coroutine.create(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
      local ok1, v1 = coroutine.resume(co, 1)
      local ok2, v2 = coroutine.resume(co, 5)
      local ok3, v3 = coroutine.resume(co)
      meta.resumes = table.concat({ tostring(ok1), v1, tostring(ok2), v2, tostring(ok3), v3 }, ",")
      local okw, errw = pcall(coroutine.wrap(function() error("boom") end))
      meta.wrap_err = tostring(errw)
      local okt, errt = pcall(coroutine.wrap(function() error({ code = 7 }) end))
      meta.wrap_table_err = type(errt) == "table" and errt.code
      -- A wrapped function that itself waits on nothing but returns many values.
      meta.many = select("#", coroutine.wrap(function() return 1, 2, 3 end)())
    end
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } }, meta = meta }
  end,
}
"##;

const IN_COROUTINE: &str = "cannot be called inside a coroutine you created";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inside_a_plugins_own_coroutine_fails_clearly() {
    let mock = MockUpstream::start().await;
    mock.on("/slow", Canned::text(200, "late").delayed(Duration::from_millis(300)));
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("coro", CORO)
        .bundled("synthetic")
        .env("MOCK", &mock.base)
        .config("[plugins.coro]\nstates = 1\n")
        .start()
        .await;

    // The line of `f()` (WRAP) and of `coroutine.resume(co)` (RESUME) in CORO.
    for (ticker, line) in [("WRAP", 11), ("RESUME", 14)] {
        let (s, body) = data(&d, &format!("/v1/data/coro/{ticker}{ONE_DAY}")).await;
        assert_eq!(s, 502, "{ticker}: {body}");
        let (code, msg) = error_of(&body);
        assert_eq!(code, "plugin_error", "{msg}");
        assert!(
            msg.contains(IN_COROUTINE) && msg.contains("call it from fetch"),
            "{ticker}: {msg}"
        );
        // The message points at the plugin's line that resumed the coroutine.
        assert!(msg.contains(&format!("coro.lua:{line}:")), "{ticker}: {msg}");
        // Raised before any request went out (an event, not a time bound:
        // a loaded machine may take long to answer, but the mock still
        // never saw the call).
        assert_eq!(
            mock.count("/slow"),
            0,
            "{ticker}: the refused call never reached the upstream"
        );
    }

    // Caught by the plugin: the coroutine is closed, and fetch's own calls work.
    let (s, body) = data(&d, &format!("/v1/data/coro/CAUGHT{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    let m = &body["meta"];
    assert_eq!(m["ok"], false, "{m}");
    assert!(m["err"].as_str().unwrap().contains(IN_COROUTINE), "{m}");
    assert_eq!(m["after"], "dead", "{m}");
    assert_eq!(m["wrap_ok"], false, "{m}");
    assert!(m["wrap_err"].as_str().unwrap().contains(IN_COROUTINE), "{m}");
    assert_eq!(m["status"], 200, "{m}");

    // The same (single) state serves normal requests afterwards.
    let (s, body) = data(&d, &format!("/v1/data/coro/DIRECT{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["meta"]["status"], 200);
    assert_eq!(body["meta"]["in_pcall"], 200);

    // Coroutines that only yield their own values are unaffected.
    let (s, body) = data(&d, &format!("/v1/data/coro/GEN{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    let m = &body["meta"];
    assert_eq!(m["sum"], 16, "{m}");
    assert!(
        m["dead"].as_str().unwrap().contains("cannot resume dead coroutine"),
        "{m}"
    );
    assert_eq!(m["resumes"], "true,2,true,10,false,cannot resume dead coroutine", "{m}");
    assert!(m["wrap_err"].as_str().unwrap().contains("boom"), "{m}");
    assert!(
        m["wrap_err"].as_str().unwrap().contains("coro.lua:"),
        "an error keeps its position: {m}"
    );
    assert_eq!(m["wrap_table_err"], 7, "{m}");
    assert_eq!(m["many"], 3, "{m}");
    assert_alive(&d).await;
}

// ------------------------------------------------ env.get allow-list

/// Declares `DECLARED`; the config adds `FROM_CONFIG`; the daemon's
/// environment also holds `UNDECLARED_SECRET`, which the plugin must not read.
const ENVP: &str = r#"
return {
  description = "env allow-list",
  timeout = "5s",
  env = { "DECLARED" },
  fetch = function(req)
    local t, meta = req.ticker, {}
    if t == "DECLARED" then
      meta.declared = env.get("DECLARED")
      meta.from_config = env.get("FROM_CONFIG")
      meta.unset = tostring(env.get("DECLARED_BUT_UNSET"))
    elseif t == "CAUGHT" then
      local ok, err = pcall(env.get, "UNDECLARED_SECRET")
      meta.ok, meta.err = ok, tostring(err)
    elseif t == "UNDECLARED" then
      meta.value = env.get("UNDECLARED_SECRET")
    end
    return { bars = { { date = req.start_date, open = 1, high = 1, low = 1, close = 1 } }, meta = meta }
  end,
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_get_refuses_a_name_the_plugin_did_not_declare() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .plugin("envp", ENVP)
        .bundled("synthetic")
        .env("DECLARED", "declared-value")
        .env("FROM_CONFIG", "config-value")
        .env("UNDECLARED_SECRET", "s3cr3t-value")
        .config("[plugins.envp]\nenv = [\"FROM_CONFIG\", \"DECLARED_BUT_UNSET\"]\n")
        .start()
        .await;

    // Declared in the plugin or in the config: readable (nil when unset).
    let (s, body) = data(&d, &format!("/v1/data/envp/DECLARED{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["meta"]["declared"], "declared-value", "{body}");
    assert_eq!(body["meta"]["from_config"], "config-value", "{body}");
    assert_eq!(body["meta"]["unset"], "nil", "{body}");

    // Undeclared: an error (not nil), naming the variable and how to allow it.
    let expected = r#"env.get("UNDECLARED_SECRET"): not allowed; add "UNDECLARED_SECRET" to the plugin's env list or to [plugins.envp] env in the config"#;
    let (s, body) = data(&d, &format!("/v1/data/envp/CAUGHT{ONE_DAY}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["meta"]["ok"], false, "{body}");
    let err = body["meta"]["err"].as_str().unwrap_or("");
    assert!(err.contains(expected), "{err}");
    assert!(!err.contains("s3cr3t"), "the refusal does not leak the value: {err}");

    // Not caught: the request fails as a plugin error with the same message.
    let (s, body) = data(&d, &format!("/v1/data/envp/UNDECLARED{ONE_DAY}")).await;
    assert_eq!(s, 502, "{body}");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "plugin_error", "{msg}");
    assert!(msg.contains(expected), "{msg}");
    assert!(!body.to_string().contains("s3cr3t"), "{body}");
    assert_alive(&d).await;
}
