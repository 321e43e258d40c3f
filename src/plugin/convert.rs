//! Lua values <-> JSON, shared by the `json` host module and by reading a
//! plugin's `meta` table.
//!
//! Arrays vs objects are decided predictably: a table whose keys are exactly
//! 1..n is an array; an empty table is an array unless it was made with
//! `json.object()`; anything else is an object whose keys must be strings
//! (or integers, written as strings). `json.null` stands for JSON null.

use std::time::Duration;

use mlua::{Lua, Table, Value};
use serde_json::{Map, Number, Value as Json};

use crate::config::parse_duration;
use crate::model::whole_number;

/// Deep structures are refused rather than overflowing the stack.
pub const MAX_DEPTH: usize = 64;

/// Registry key of the metatable that marks an empty table as a JSON object.
pub const OBJECT_MARK: &str = "tickerd.json.object";

/// A duration a plugin wrote: a string such as `"1h"` or `"250ms"`, or a
/// positive number of seconds. `Ok(None)` when it is nil; the error says what
/// `what` must be.
pub fn lua_duration(what: &str, v: Value) -> Result<Option<Duration>, String> {
    let d = match v {
        Value::Nil => return Ok(None),
        Value::Integer(i) if i > 0 => Duration::from_secs(i as u64),
        Value::Number(n) if n > 0.0 && n.is_finite() => {
            Duration::try_from_secs_f64(n).map_err(|_| format!("{what} {n} is out of range"))?
        }
        Value::Integer(_) | Value::Number(_) => return Err(format!("{what} must be more than 0")),
        Value::String(s) => parse_duration(&s.to_string_lossy()).map_err(|m| format!("{what}: {m}"))?,
        other => {
            return Err(format!(
                "{what} must be a duration such as \"1h\" or a positive number of seconds, got {}",
                other.type_name()
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("{what} must be more than 0"));
    }
    Ok(Some(d))
}

pub fn lua_to_json(lua: &Lua, v: &Value, path: &str, depth: usize) -> Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match v {
        Value::Nil => Json::Null,
        Value::LightUserData(p) if p.0.is_null() => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::Number((*i).into()),
        Value::Number(n) => match whole_number(*n) {
            Some(i) => Json::Number(i.into()),
            None => Json::Number(Number::from_f64(*n).ok_or_else(|| format!("{path}: {n} is not a finite number"))?),
        },
        Value::String(s) => Json::String(
            s.to_str()
                .map_err(|_| format!("{path}: string is not valid UTF-8"))?
                .to_string(),
        ),
        Value::Table(t) => table_to_json(lua, t, path, depth)?,
        other => return Err(format!("{path}: a {} cannot be written as JSON", other.type_name())),
    })
}

fn is_object_marked(lua: &Lua, t: &Table) -> bool {
    match (t.metatable(), lua.named_registry_value::<Table>(OBJECT_MARK)) {
        (Some(mt), Ok(mark)) => mt == mark,
        _ => false,
    }
}

fn table_to_json(lua: &Lua, t: &Table, path: &str, depth: usize) -> Result<Json, String> {
    let len = t.raw_len();
    let mut count = 0usize;
    let mut all_seq = true;
    for pair in t.pairs::<Value, Value>() {
        let (k, _) = pair.map_err(|e| format!("{path}: {e}"))?;
        count += 1;
        match k {
            Value::Integer(i) if i >= 1 && (i as usize) <= len => {}
            _ => all_seq = false,
        }
    }
    if count == 0 {
        return Ok(if is_object_marked(lua, t) {
            Json::Object(Map::new())
        } else {
            Json::Array(Vec::new())
        });
    }
    if all_seq && count == len {
        let mut out = Vec::with_capacity(len);
        for i in 1..=len {
            let v: Value = t.raw_get(i).map_err(|e| format!("{path}: {e}"))?;
            out.push(lua_to_json(lua, &v, &format!("{path}[{i}]"), depth + 1)?);
        }
        return Ok(Json::Array(out));
    }
    let mut map = Map::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| format!("{path}: {e}"))?;
        let key = match k {
            Value::String(s) => s
                .to_str()
                .map_err(|_| format!("{path}: key is not valid UTF-8"))?
                .to_string(),
            Value::Integer(i) => i.to_string(),
            other => {
                return Err(format!("{path}: a {} key cannot be written as JSON", other.type_name()));
            }
        };
        let child = lua_to_json(lua, &v, &format!("{path}.{key}"), depth + 1)?;
        map.insert(key, child);
    }
    Ok(Json::Object(map))
}

pub fn json_to_lua(lua: &Lua, v: &Json, depth: usize) -> mlua::Result<Value> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(format!(
            "JSON nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(match v {
        Json::Null => Value::NULL,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, x) in a.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, x, depth + 1)?)?;
            }
            Value::Table(t)
        }
        Json::Object(m) => {
            let t = lua.create_table_with_capacity(0, m.len())?;
            if m.is_empty()
                && let Ok(mark) = lua.named_registry_value::<Table>(OBJECT_MARK)
            {
                t.set_metatable(Some(mark))?;
            }
            for (k, x) in m {
                t.raw_set(k.as_str(), json_to_lua(lua, x, depth + 1)?)?;
            }
            Value::Table(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_plugins_write_them() {
        let lua = Lua::new();
        let s = |t: &str| Value::String(lua.create_string(t).unwrap());
        assert_eq!(lua_duration("ttl", Value::Nil), Ok(None));
        assert_eq!(
            lua_duration("ttl", Value::Integer(90)),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            lua_duration("ttl", Value::Number(0.25)),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(lua_duration("ttl", s("1h")), Ok(Some(Duration::from_secs(3600))));
        for bad in [Value::Integer(0), Value::Integer(-5), Value::Number(-1.0), s("0s")] {
            assert_eq!(lua_duration("ttl", bad), Err("ttl must be more than 0".to_owned()));
        }
        assert!(
            lua_duration("ttl", Value::Number(1e300))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            lua_duration("timeout", Value::Boolean(true))
                .unwrap_err()
                .starts_with("timeout must be a duration")
        );
        assert!(lua_duration("ttl", s("soon")).unwrap_err().starts_with("ttl: "));
    }
}
