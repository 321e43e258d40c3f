//! The table a plugin file returns, checked field by field.

use std::time::Duration;

use mlua::{Table, Value};

use crate::config::{is_env_var_name, out_of_range, parse_duration, plugin_bounds};
use crate::model::{RateLimit, whole_number};
use crate::plugin::convert::lua_duration;

/// A plugin's own declarations (before config overrides).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Manifest {
    pub description: String,
    pub ttl: Option<Duration>,
    pub timeout: Option<Duration>,
    pub cache_version: u32,
    pub env: Vec<String>,
    pub allow_hosts: Option<Vec<String>>,
    pub max_concurrency: Option<usize>,
    /// Freshness (README, "Cache behaviour"): dates before `today - settle` are settled ...
    pub settle: Option<Duration>,
    /// ... and stay fresh this long.
    pub settled_ttl: Option<Duration>,
    /// The upstream budget the plugin declares (README "Rate limits").
    pub rate_limit: Option<RateLimit>,
    pub max_wait: Option<Duration>,
}

/// A problem in the returned table, with the key it concerns so the caller
/// can point at the line that sets it.
#[derive(Debug, Clone)]
pub struct ManifestProblem {
    pub key: String,
    pub message: String,
}

const KNOWN_KEYS: &[&str] = &[
    "description",
    "ttl",
    "timeout",
    "cache_version",
    "env",
    "allow_hosts",
    "max_concurrency",
    "settle",
    "settled_ttl",
    "rate_limit",
    "max_wait",
    "fetch",
];

fn problem(key: &str, message: impl Into<String>) -> ManifestProblem {
    ManifestProblem {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn duration(t: &Table, key: &str) -> Result<Option<Duration>, ManifestProblem> {
    let v = t.raw_get::<Value>(key).map_err(|e| problem(key, e.to_string()))?;
    lua_duration(key, v).map_err(|m| problem(key, m))
}

/// A declared duration within the bounds `[plugins.<name>]` has for the
/// same key, so a plugin file cannot ask for what the config may not.
fn bounded(key: &str, v: Option<Duration>, bounds: (Duration, Duration)) -> Result<Option<Duration>, ManifestProblem> {
    match v.and_then(|d| out_of_range(d, bounds)) {
        Some(m) => Err(problem(key, format!("{key}: {m}"))),
        None => Ok(v),
    }
}

/// `settle` may be zero (every date before today is settled).
fn duration_or_zero(t: &Table, key: &str) -> Result<Option<Duration>, ManifestProblem> {
    match t.raw_get::<Value>(key).map_err(|e| problem(key, e.to_string()))? {
        Value::Integer(0) => Ok(Some(Duration::ZERO)),
        Value::String(s) if parse_duration(&s.to_string_lossy()).is_ok_and(|d| d.is_zero()) => Ok(Some(Duration::ZERO)),
        _ => duration(t, key),
    }
}

fn names(t: &Table, key: &str) -> Result<Option<Vec<String>>, ManifestProblem> {
    match t.raw_get::<Value>(key).map_err(|e| problem(key, e.to_string()))? {
        Value::Nil => Ok(None),
        Value::Table(list) => {
            let mut out = Vec::new();
            for (i, v) in list.sequence_values::<Value>().enumerate() {
                match v {
                    Ok(Value::String(s)) => out.push(s.to_string_lossy()),
                    _ => {
                        return Err(problem(key, format!("{key}[{}] must be a string", i + 1)));
                    }
                }
            }
            Ok(Some(out))
        }
        other => Err(problem(
            key,
            format!("{key} must be a list of strings, got {}", other.type_name()),
        )),
    }
}

/// `rate_limit = "10/s"` or `rate_limit = { "5/min", "25/day" }`.
fn rate_limit(t: &Table) -> Result<Option<RateLimit>, ManifestProblem> {
    const KEY: &str = "rate_limit";
    match t.raw_get::<Value>(KEY).map_err(|e| problem(KEY, e.to_string()))? {
        Value::Nil => Ok(None),
        Value::String(s) => RateLimit::parse(&s.to_string_lossy())
            .map(Some)
            .map_err(|m| problem(KEY, format!("{KEY}: {m}"))),
        Value::Table(_) => {
            let list = names(t, KEY)?.unwrap_or_default();
            RateLimit::parse_list(&list)
                .map(Some)
                .map_err(|m| problem(KEY, format!("{KEY}{m}")))
        }
        other => Err(problem(
            KEY,
            format!(
                "{KEY} must be a rate such as \"10/s\" or a list such as {{ \"5/min\", \"25/day\" }}, got {}",
                other.type_name()
            ),
        )),
    }
}

impl Manifest {
    pub fn from_table(t: &Table) -> Result<Self, ManifestProblem> {
        for pair in t.pairs::<Value, Value>() {
            let (k, _) = pair.map_err(|e| problem("", e.to_string()))?;
            match &k {
                Value::String(s) => {
                    let name = s.to_string_lossy();
                    if !KNOWN_KEYS.contains(&name.as_str()) {
                        return Err(problem(
                            &name,
                            format!("unknown key {name:?}; a plugin table may set {}", KNOWN_KEYS.join(", ")),
                        ));
                    }
                }
                other => {
                    return Err(problem(
                        "",
                        format!(
                            "the plugin table has a {} key; only named keys are allowed",
                            other.type_name()
                        ),
                    ));
                }
            }
        }
        match t.raw_get::<Value>("fetch") {
            Ok(Value::Function(_)) => {}
            Ok(Value::Nil) => {
                return Err(problem(
                    "fetch",
                    "the plugin table has no fetch function; add fetch = function(req) ... end",
                ));
            }
            Ok(other) => {
                return Err(problem(
                    "fetch",
                    format!("fetch must be a function, got {}", other.type_name()),
                ));
            }
            Err(e) => return Err(problem("fetch", e.to_string())),
        }
        let description = match t.raw_get::<Value>("description") {
            Ok(Value::Nil) => String::new(),
            Ok(Value::String(s)) => s.to_string_lossy(),
            _ => return Err(problem("description", "description must be a string")),
        };
        let cache_version = match t.raw_get::<Value>("cache_version") {
            Ok(Value::Nil) => Some(1),
            Ok(Value::Integer(i)) => u32::try_from(i).ok(),
            Ok(Value::Number(n)) => whole_number(n).and_then(|i| u32::try_from(i).ok()),
            _ => None,
        }
        .filter(|v| *v <= plugin_bounds::CACHE_VERSION)
        .ok_or_else(|| {
            problem(
                "cache_version",
                format!(
                    "cache_version must be a whole number from 0 to {}",
                    plugin_bounds::CACHE_VERSION
                ),
            )
        })?;
        let max_concurrency = match t.raw_get::<Value>("max_concurrency") {
            Ok(Value::Nil) => None,
            Ok(Value::Integer(i)) if (1..=plugin_bounds::MAX_CONCURRENCY as i64).contains(&i) => Some(i as usize),
            _ => {
                return Err(problem(
                    "max_concurrency",
                    format!(
                        "max_concurrency must be a whole number from 1 to {}",
                        plugin_bounds::MAX_CONCURRENCY
                    ),
                ));
            }
        };
        let env = names(t, "env")?.unwrap_or_default();
        for e in &env {
            if !is_env_var_name(e) {
                return Err(problem("env", format!("{e:?} is not an environment variable name")));
            }
        }
        Ok(Manifest {
            description,
            ttl: bounded("ttl", duration(t, "ttl")?, plugin_bounds::TTL)?,
            timeout: bounded("timeout", duration(t, "timeout")?, plugin_bounds::TIMEOUT)?,
            cache_version,
            env,
            allow_hosts: names(t, "allow_hosts")?,
            max_concurrency,
            settle: bounded("settle", duration_or_zero(t, "settle")?, plugin_bounds::SETTLE)?,
            settled_ttl: bounded("settled_ttl", duration(t, "settled_ttl")?, plugin_bounds::SETTLED_TTL)?,
            rate_limit: rate_limit(t)?,
            max_wait: bounded("max_wait", duration(t, "max_wait")?, plugin_bounds::MAX_WAIT)?,
        })
    }
}

/// The line that sets `key` in the plugin source (best effort; 1 if not found),
/// so `tickerd check` can point at it.
pub fn line_of(source: &str, key: &str) -> usize {
    if key.is_empty() {
        return 1;
    }
    source
        .lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
        .or_else(|| {
            source
                .lines()
                .position(|l| l.trim_start().starts_with("return"))
                .map(|i| i + 1)
        })
        .unwrap_or(1)
}
