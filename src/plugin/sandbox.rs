//! A Lua 5.4 state with only what docs/PLUGINS.md ("The sandbox and its
//! limits") allows, built by allow-list.
//!
//! Only `string`, `table`, `math`, `utf8`, `coroutine` and a reduced `os` are
//! opened; from the base library the unsafe loaders are removed and `load`
//! is re-exported in text mode only, because crafted bytecode can crash the VM.
//! A global instruction hook enforces the current fetch's deadline; because it
//! is global it also runs inside coroutines a plugin creates itself, and
//! `pcall`/`xpcall`/`coroutine.resume`/`coroutine.wrap` re-raise once the
//! deadline has passed so a plugin cannot swallow its own timeout.
//!
//! An async host function (`http.*`) suspends by yielding mlua's internal
//! "pending" marker up to the Rust poller. Called inside a coroutine the
//! plugin created, that yield lands in the plugin's own `coroutine.resume`
//! instead, which would hand the marker back as if it were a result; the
//! `coroutine.resume`/`coroutine.wrap` wrappers recognise it, close that
//! coroutine (dropping the request in flight) and raise a clear error.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, Value, VmState};

use super::host::HostError;

thread_local! {
    /// Deadline of the fetch whose Lua code is running on this thread right now.
    static DEADLINE: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// How often (in VM instructions) the hook looks at the clock: cheap enough
/// to be invisible, frequent enough to stop a busy loop within microseconds.
const HOOK_EVERY: u32 = 1000;

/// The limit of the current fetch once its deadline has passed.
pub(super) fn deadline_passed() -> Option<Duration> {
    DEADLINE
        .with(|d| d.get())
        .and_then(|(at, limit)| (Instant::now() >= at).then_some(limit))
}

/// The error that ends a fetch at its deadline, naming where it stopped.
pub(super) fn timeout_error(limit: Duration, running: &str) -> mlua::Error {
    mlua::Error::external(HostError::Timeout(format!(
        "timeout of {} reached while running {running}",
        humantime::format_duration(limit)
    )))
}

/// Runs `f` with the deadline set for the Lua code it executes.
pub fn with_deadline<T>(deadline: Instant, limit: Duration, f: impl FnOnce() -> T) -> T {
    let prev = DEADLINE.with(|d| d.replace(Some((deadline, limit))));
    let out = f();
    DEADLINE.with(|d| d.set(prev));
    out
}

/// A future whose every poll (each stretch of Lua execution between awaits)
/// runs under the given deadline.
pub struct Deadlined<F> {
    inner: Pin<Box<F>>,
    deadline: Instant,
    limit: Duration,
}

impl<F> Deadlined<F> {
    pub fn new(inner: F, deadline: Instant, limit: Duration) -> Self {
        Self {
            inner: Box::pin(inner),
            deadline,
            limit,
        }
    }
}

impl<F: Future> Future for Deadlined<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let (deadline, limit) = (self.deadline, self.limit);
        with_deadline(deadline, limit, || self.inner.as_mut().poll(cx))
    }
}

const PRELUDE: &str = r##"
local raw_pcall, raw_xpcall, raw_resume, raw_create, raw_close, raw_status,
      raw_load, passed, pending = ...
local select, error = select, error
local IN_COROUTINE = "http.* cannot be called inside a coroutine you created "
  .. "(coroutine.wrap/coroutine.resume); call it from fetch or from functions fetch calls"
local function recheck(ok, ...)
  if not ok and passed() then error((...), 0) end
  return ok, ...
end
-- `co` yielded mlua's pending marker: an async host call is waiting inside it.
local function suspended_in_host_call(co, ok, ...)
  return ok and select("#", ...) == 1 and (...) == pending and raw_status(co) == "suspended"
end
-- Level 2 (through the tail calls below) is the plugin code that resumed `co`.
local function resumed(co, ok, ...)
  if not ok and passed() then error((...), 0) end
  if suspended_in_host_call(co, ok, ...) then
    raw_close(co)
    error(IN_COROUTINE, 2)
  end
  return ok, ...
end
local function unwrapped(co, ok, ...)
  if ok then
    if suspended_in_host_call(co, ok, ...) then
      raw_close(co)
      error(IN_COROUTINE, 2)
    end
    return ...
  end
  -- Like the built-in wrap: close a failed coroutine's to-be-closed
  -- variables, then propagate its error object unchanged (a timeout
  -- stays a timeout).
  local err = ...
  if raw_status(co) == "dead" then raw_close(co) end
  error(err, 0)
end
pcall = function(f, ...) return recheck(raw_pcall(f, ...)) end
xpcall = function(f, h, ...) return recheck(raw_xpcall(f, h, ...)) end
coroutine.resume = function(co, ...) return resumed(co, raw_resume(co, ...)) end
coroutine.wrap = function(f)
  local co = raw_create(f)
  return function(...) return unwrapped(co, raw_resume(co, ...)) end
end
load = function(chunk, name, mode, env)
  -- Text only, whatever the caller asks for: binary chunks can crash the VM.
  if env == nil then return raw_load(chunk, name, "t") end
  return raw_load(chunk, name, "t", env)
end
-- Lua switches the instruction hook off while a __gc finalizer runs, so a
-- finalizer that loops could never be stopped: refuse __gc altogether. An
-- object is marked for finalization only when setmetatable sees a __gc
-- field, so adding one to the metatable later has no effect.
local raw_setmetatable, rawget, tointeger = setmetatable, rawget, math.tointeger
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not available to plugins (a finalizer runs where "
      .. "the timeout cannot stop it); close resources with a to-be-closed variable (local x <close>)", 2)
  end
  return raw_setmetatable(t, mt)
end
-- C loops that run without a memory bound or a Lua callback, where the
-- hook cannot see them: cut into pieces (or given a Lua callback) so the
-- deadline still applies between the pieces.
local raw_move, raw_rep, raw_sort, maxinteger = table.move, string.rep, table.sort, math.maxinteger
local CHUNK = 4096
table.move = function(a1, f, e, t, a2)
  local fi, ei, ti = tointeger(f), tointeger(e), tointeger(t)
  if not (fi and ei and ti) or ei < fi or ei - fi < CHUNK then return raw_move(a1, f, e, t, a2) end
  if fi <= 0 and ei >= maxinteger + fi then error("bad argument #3 to 'move' (too many elements to move)", 2) end
  if ti > maxinteger - (ei - fi) then error("bad argument #4 to 'move' (destination wrap around)", 2) end
  local dest = a2
  if dest == nil then dest = a1 end
  if ti > fi and ti <= ei and dest == a1 then
    local hi = ei
    while hi >= fi do
      local lo = hi - CHUNK + 1
      if lo < fi then lo = fi end
      raw_move(a1, lo, hi, ti + (lo - fi), dest)
      hi = lo - 1
    end
  else
    local lo = fi
    while lo <= ei do
      local hi = lo + CHUNK - 1
      if hi > ei or hi < lo then hi = ei end
      raw_move(a1, lo, hi, ti + (lo - fi), dest)
      if hi == ei then break end
      lo = hi + 1
    end
  end
  return dest
end
string.rep = function(s, n, sep)
  -- An empty result is still built by a C loop that turns n times.
  if s == "" and (sep == nil or sep == "") and tointeger(n) then return "" end
  return raw_rep(s, n, sep)
end
local function less(a, b) return a < b end
table.sort = function(t, cmp)
  if cmp == nil and type(t) == "table" and rawlen(t) > 50000 then cmp = less end
  return raw_sort(t, cmp)
end
"##;

/// Builds the sandboxed state with its memory limit and deadline hook.
/// Host modules are installed by the caller.
pub fn new_state(memory_limit: usize) -> mlua::Result<Lua> {
    let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE | StdLib::OS;
    // Reuse coroutines between fetches instead of creating one per call.
    let lua = Lua::new_with(libs, LuaOptions::new().thread_pool_size(64))?;
    let g = lua.globals();

    // Base library: keep the pure functions, drop the loaders and GC control.
    for name in [
        "dofile",
        "loadfile",
        "require",
        "module",
        "package",
        "debug",
        "io",
        "loadstring",
    ] {
        g.raw_set(name, Value::Nil)?;
    }
    let raw_collect: mlua::Function = g.raw_get("collectgarbage")?;
    g.raw_set(
        "collectgarbage",
        lua.create_function(move |_, (opt, arg): (Option<String>, Value)| match opt.as_deref() {
            Some("count") => raw_collect.call::<mlua::MultiValue>(("count", arg)),
            Some(other) => Err(mlua::Error::runtime(format!(
                "collectgarbage({other:?}) is not available to plugins; only \"count\" is"
            ))),
            None => Err(mlua::Error::runtime(
                "collectgarbage() is not available to plugins; only collectgarbage(\"count\") is",
            )),
        })?,
    )?;

    // os: only time, date and clock.
    let os: mlua::Table = g.raw_get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "date", "clock"] {
        safe_os.raw_set(name, os.raw_get::<Value>(name)?)?;
    }
    g.raw_set("os", safe_os)?;

    // string.dump would hand out bytecode; nothing legitimate needs it here.
    let string: mlua::Table = g.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;
    // Pattern matching that the deadline can stop (see `strlib`).
    super::strlib::install(&lua, &string, memory_limit)?;

    let passed = lua.create_function(|_, ()| Ok(deadline_passed().is_some()))?;
    let coroutine: mlua::Table = g.raw_get("coroutine")?;
    lua.load(PRELUDE)
        .set_name("=tickerd-prelude")
        .set_mode(mlua::chunk::ChunkMode::Text)
        .call::<()>((
            g.raw_get::<Value>("pcall")?,
            g.raw_get::<Value>("xpcall")?,
            coroutine.raw_get::<Value>("resume")?,
            coroutine.raw_get::<Value>("create")?,
            coroutine.raw_get::<Value>("close")?,
            coroutine.raw_get::<Value>("status")?,
            g.raw_get::<Value>("load")?,
            passed,
            Lua::poll_pending(),
        ))?;

    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        |_, _| match deadline_passed() {
            Some(limit) => Err(timeout_error(limit, "Lua code")),
            None => Ok(VmState::Continue),
        },
    )?;
    lua.set_memory_limit(memory_limit)?;
    Ok(lua)
}
