//! A Lua 5.4 state with only what the SPEC allows, built by allow-list.
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

fn deadline_passed() -> Option<Duration> {
    DEADLINE
        .with(|d| d.get())
        .and_then(|(at, limit)| (Instant::now() >= at).then_some(limit))
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
            Some(limit) => Err(mlua::Error::external(HostError::Timeout(format!(
                "timeout of {} reached while running Lua code",
                humantime::format_duration(limit)
            )))),
            None => Ok(VmState::Continue),
        },
    )?;
    lua.set_memory_limit(memory_limit)?;
    Ok(lua)
}
