//! One compiled plugin inside one Lua state: load it, run `fetch`, and turn
//! whatever Lua raised into the right [`FetchError`].

use std::time::{Duration, Instant};

use mlua::{Function, Lua, Value};

use super::host::{self, HostCtx, HostError};
use super::manifest::{Manifest, line_of};
use super::output::{RawOutput, read_output};
use super::sandbox::{Deadlined, new_state, with_deadline};
use crate::config::format_bytes;
use crate::error::FetchError;
use crate::model::{DateRange, Ticker, ymd_string};

/// How long a plugin file's top level may run when it is loaded.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The arguments of one `fetch(req)` call.
#[derive(Debug, Clone)]
pub struct FetchArgs {
    pub ticker: Ticker,
    /// The dates the plugin is asked for (`req.start_date`..`req.end_date`).
    pub range: DateRange,
}

/// A load problem located in the plugin file (`file:line: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

pub struct PluginState {
    lua: Lua,
    fetch: Function,
    plugin: String,
    memory_limit: usize,
}

/// Splits Lua's `file:line: message` into its parts when it starts with `file`.
fn locate(file: &str, msg: &str) -> Option<(usize, String)> {
    let rest = msg.strip_prefix(file)?.strip_prefix(':')?;
    let (line, tail) = rest.split_once(':')?;
    Some((line.trim().parse().ok()?, tail.trim().to_owned()))
}

impl PluginState {
    /// Compiles `source` (text mode only) in a fresh sandboxed state, runs
    /// its top level under [`LOAD_TIMEOUT`], and checks the returned table.
    pub fn load(source: &str, file: &str, ctx: &HostCtx, memory_limit: usize) -> Result<(Self, Manifest), LoadProblem> {
        let at = |line: usize, message: String| LoadProblem {
            file: file.to_owned(),
            line,
            message,
        };
        let from_lua = |e: mlua::Error| {
            let msg = flatten(&e);
            match locate(file, &msg) {
                Some((line, m)) => at(line, m),
                None => at(1, msg),
            }
        };
        let lua = new_state(memory_limit).map_err(|e| at(1, format!("cannot create a Lua state: {e}")))?;
        host::install(&lua, ctx).map_err(|e| at(1, format!("cannot install host modules: {e}")))?;
        let chunk = lua
            .load(source)
            .set_name(format!("@{file}"))
            .set_mode(mlua::chunk::ChunkMode::Text)
            .into_function()
            .map_err(from_lua)?;
        let value: Value =
            with_deadline(Instant::now() + LOAD_TIMEOUT, LOAD_TIMEOUT, || chunk.call(())).map_err(from_lua)?;
        let Value::Table(t) = value else {
            let line = source.lines().count().max(1);
            return Err(at(
                line,
                format!(
                    "the file must return a table {{ fetch = function(req) ... end, ... }}, it returned {}",
                    value.type_name()
                ),
            ));
        };
        let manifest = Manifest::from_table(&t).map_err(|p| at(line_of(source, &p.key), p.message))?;
        let fetch: Function = t.raw_get("fetch").map_err(from_lua)?;
        Ok((
            Self {
                lua,
                fetch,
                plugin: ctx.plugin.clone(),
                memory_limit,
            },
            manifest,
        ))
    }

    /// Runs `fetch(req)` as a Lua coroutine so host calls can await without
    /// blocking the thread; the deadline covers Lua code and host calls alike.
    /// `limit` is the plugin's configured timeout, which messages name (the
    /// deadline itself already counts time spent waiting for a permit).
    pub async fn fetch(&self, args: &FetchArgs, deadline: Instant, limit: Duration) -> Result<RawOutput, FetchError> {
        let run = async {
            let req = self.lua.create_table()?;
            req.raw_set("ticker", args.ticker.as_str())?;
            req.raw_set("start_date", ymd_string(args.range.start()))?;
            req.raw_set("end_date", ymd_string(args.range.end()))?;
            req.raw_set("plugin", self.plugin.as_str())?;
            req.raw_set("params", self.lua.create_table()?)?;
            // call_async runs fetch as a coroutine taken from the state's
            // thread pool, so a call does not allocate a fresh Lua thread.
            self.fetch.call_async::<Value>(req).await
        };
        let at = tokio::time::Instant::from_std(deadline);
        let (outcome, refusal) =
            host::tracking_refusals(tokio::time::timeout_at(at, Deadlined::new(run, deadline, limit))).await;
        let value = match outcome {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(self.refused_or(refusal, self.classify(&e))),
            Err(_) => {
                let err = FetchError::PluginTimeout(format!(
                    "plugin {}: fetch did not finish within its timeout of {}",
                    self.plugin,
                    humantime::format_duration(limit)
                ));
                return Err(self.refused_or(refusal, err));
            }
        };
        read_output(&self.lua, value)
            .map_err(|m| FetchError::InvalidPluginOutput(format!("plugin {}: {m}", self.plugin)))
    }

    /// A fetch that failed after one of its `http` calls was refused (429, or
    /// 503 with `Retry-After`) failed because of the refusal (README "Rate limits").
    fn refused_or(&self, refusal: Option<host::Refusal>, err: FetchError) -> FetchError {
        match (refusal, err) {
            // errors.rate_limited without seconds: the header's, if one came.
            (
                r,
                FetchError::UpstreamRefused {
                    message,
                    retry_after: None,
                },
            ) => FetchError::UpstreamRefused {
                message,
                retry_after: r.and_then(|r| r.retry_after),
            },
            (_, e @ FetchError::UpstreamRefused { .. }) => e,
            (Some(r), e) => FetchError::UpstreamRefused {
                message: format!(
                    "plugin {}: the upstream answered {}{} ({e})",
                    self.plugin,
                    r.status,
                    r.retry_after
                        .map(|d| format!(" with Retry-After {}s", d.as_secs()))
                        .unwrap_or_default()
                ),
                retry_after: r.retry_after,
            },
            (None, e) => e,
        }
    }

    fn classify(&self, e: &mlua::Error) -> FetchError {
        let p = &self.plugin;
        for cause in e.chain() {
            if let Some(h) = cause.downcast_ref::<HostError>() {
                let where_ = lua_location(e).map(|l| format!(" (at {l})")).unwrap_or_default();
                let m = &super::message::cut(&h.to_string());
                return match h {
                    HostError::Upstream(_) => FetchError::UpstreamError(format!("plugin {p}: {m}{where_}")),
                    HostError::Timeout(_) => FetchError::PluginTimeout(format!("plugin {p}: {m}{where_}")),
                    HostError::NoData(_) => FetchError::NoData(format!("plugin {p}: {m}")),
                    HostError::Limit(_) => FetchError::PluginError(format!("plugin {p}: {m}{where_}")),
                    HostError::RateLimited { message, retry_after } => FetchError::UpstreamRefused {
                        message: format!("plugin {p}: {}", super::message::cut(message)),
                        retry_after: *retry_after,
                    },
                };
            }
            if let Some(mlua::Error::MemoryError(_)) = cause.downcast_ref::<mlua::Error>() {
                return FetchError::PluginError(format!(
                    "plugin {p}: memory limit of {} reached{}",
                    format_bytes(self.memory_limit),
                    lua_location(e).map(|l| format!(" (at {l})")).unwrap_or_default()
                ));
            }
        }
        if let mlua::Error::MemoryError(_) = e {
            return FetchError::PluginError(format!(
                "plugin {p}: memory limit of {} reached",
                format_bytes(self.memory_limit)
            ));
        }
        let flat = flatten(e);
        // A memory error that Lua code caught (`pcall`, `coroutine.resume`)
        // and raised again arrives as a plain runtime error carrying Lua's
        // memory error message.
        if flat.ends_with("not enough memory") {
            return FetchError::PluginError(format!(
                "plugin {p}: memory limit of {} reached ({flat})",
                format_bytes(self.memory_limit)
            ));
        }
        FetchError::PluginError(format!("plugin {p}: {flat}"))
    }
}

/// The innermost message of an mlua error, without the Rust-side wrapping,
/// prefixed with the Lua location when a host function raised it.
fn flatten(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, traceback } => {
            let inner = flatten(cause);
            match first_lua_frame(traceback) {
                Some(loc) if !inner.contains(&loc) => format!("{loc}: {inner}"),
                _ => inner,
            }
        }
        mlua::Error::WithContext { cause, .. } => flatten(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => {
            super::message::cut(&super::message::readable(&first_line(m)))
        }
        mlua::Error::SyntaxError { message, .. } => super::message::cut(&first_line(message)),
        mlua::Error::ExternalError(x) => super::message::cut(&x.to_string()),
        other => super::message::cut(&first_line(&other.to_string())),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_owned()
}

fn lua_location(e: &mlua::Error) -> Option<String> {
    match e {
        mlua::Error::CallbackError { traceback, cause } => first_lua_frame(traceback).or_else(|| lua_location(cause)),
        mlua::Error::WithContext { cause, .. } => lua_location(cause),
        _ => None,
    }
}

/// `plugins/x.lua:12` from a traceback line such as
/// `\tplugins/x.lua:12: in function <plugins/x.lua:3>`.
fn first_lua_frame(traceback: &str) -> Option<String> {
    traceback.lines().find_map(|l| {
        let l = l.trim();
        let (loc, _) = l.split_once(": ")?;
        let (file, line) = loc.rsplit_once(':')?;
        (file.ends_with(".lua") && line.parse::<usize>().is_ok()).then(|| loc.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lua_messages() {
        assert_eq!(locate("p/x.lua", "p/x.lua:12: boom"), Some((12, "boom".into())));
        assert_eq!(locate("p/x.lua", "other.lua:1: x"), None);
        assert_eq!(
            first_lua_frame("stack traceback:\n\t[C]: in ?\n\tp/x.lua:7: in function <p/x.lua:3>"),
            Some("p/x.lua:7".into())
        );
    }
}
