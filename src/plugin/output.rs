//! Reads what `fetch` returned into typed bars, naming the bar and field of
//! the first problem. Reading the table by hand is several times cheaper
//! than a generic serde conversion, and gives better messages.

use std::collections::BTreeMap;

use mlua::{Lua, Table, Value};

use super::convert::lua_to_json;
use crate::model::{Bar, ExtraValue, parse_date};

pub struct RawOutput {
    pub bars: Vec<Bar>,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

fn number(v: &Value, index: usize, field: &str) -> Result<f64, String> {
    match v {
        Value::Integer(i) => Ok(*i as f64),
        Value::Number(n) => Ok(*n),
        Value::Nil => Err(format!("bars[{index}].{field}: missing; every bar needs a number here")),
        other => Err(format!(
            "bars[{index}].{field}: expected a number, got {}{}",
            other.type_name(),
            match other {
                Value::String(s) => format!(" {:?} (convert it with tonumber)", s.to_string_lossy()),
                _ => String::new(),
            }
        )),
    }
}

pub fn read_output(lua: &Lua, v: Value) -> Result<RawOutput, String> {
    let t = match v {
        Value::Table(t) => t,
        Value::Nil => return Err("fetch returned nothing; return { bars = { ... } }".into()),
        other => {
            return Err(format!(
                "fetch returned a {}; return a table {{ bars = {{ ... }}, meta = {{ ... }} }}",
                other.type_name()
            ));
        }
    };
    let bars_v: Value = t.raw_get("bars").map_err(|e| e.to_string())?;
    let bars_t = match bars_v {
        Value::Table(b) => b,
        Value::Nil => return Err("the returned table has no bars; return { bars = { ... } }".into()),
        other => return Err(format!("bars must be an array of tables, got {}", other.type_name())),
    };
    let len = bars_t.raw_len();
    let mut extra_keys = 0usize;
    for pair in bars_t.pairs::<Value, Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        if !matches!(k, Value::Integer(i) if i >= 1 && (i as usize) <= len) {
            extra_keys += 1;
        }
    }
    if extra_keys > 0 {
        return Err("bars must be an array (keys 1..n without holes)".into());
    }
    let mut bars = Vec::with_capacity(len);
    for index in 1..=len {
        let b: Value = bars_t.raw_get(index).map_err(|e| e.to_string())?;
        let Value::Table(b) = b else {
            return Err(format!("bars[{index}]: expected a table, got {}", b.type_name()));
        };
        bars.push(read_bar(&b, index)?);
    }
    let meta = match t.raw_get::<Value>("meta").map_err(|e| e.to_string())? {
        Value::Nil => serde_json::Map::new(),
        v @ Value::Table(_) => match lua_to_json(lua, &v, "meta", 0)? {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Array(a) if a.is_empty() => serde_json::Map::new(),
            _ => return Err("meta must be a table with named keys".into()),
        },
        other => return Err(format!("meta must be a table, got {}", other.type_name())),
    };
    Ok(RawOutput { bars, meta })
}

/// One pass over the bar's fields: cheaper than a lookup per known field
/// followed by a second walk for the extras.
fn read_bar(b: &Table, index: usize) -> Result<Bar, String> {
    let mut date = None;
    let (mut open, mut high, mut low, mut close, mut volume) = (None, None, None, None, None);
    let mut extra = BTreeMap::new();
    for pair in b.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let Value::String(k) = k else {
            return Err(format!("bars[{index}]: keys must be field names"));
        };
        let key = k
            .to_str()
            .map_err(|_| format!("bars[{index}]: a field name is not UTF-8"))?;
        match &*key {
            "date" => date = Some(v),
            "open" => open = Some(number(&v, index, "open")?),
            "high" => high = Some(number(&v, index, "high")?),
            "low" => low = Some(number(&v, index, "low")?),
            "close" => close = Some(number(&v, index, "close")?),
            "volume" => volume = Some(number(&v, index, "volume")?),
            other => {
                let x = match v {
                    Value::Integer(i) => ExtraValue::Number(i as f64),
                    Value::Number(n) => ExtraValue::Number(n),
                    Value::String(s) => ExtraValue::Text(s.to_string_lossy()),
                    v => {
                        return Err(format!(
                            "bars[{index}].{other}: extra fields must be numbers or strings, got {}",
                            v.type_name()
                        ));
                    }
                };
                extra.insert(other.to_owned(), x);
            }
        }
    }
    let date = match date {
        Some(Value::String(s)) => {
            let s = s.to_str().map_err(|_| format!("bars[{index}].date: not UTF-8"))?;
            parse_date("date", &s).map_err(|e| format!("bars[{index}].date: {}", e.message))?
        }
        None => return Err(format!("bars[{index}].date: missing; use \"YYYY-MM-DD\"")),
        Some(other) => {
            return Err(format!(
                "bars[{index}].date: expected a \"YYYY-MM-DD\" string, got {} (date.format(unix) makes one)",
                other.type_name()
            ));
        }
    };
    let required = |v: Option<f64>, field: &str| {
        v.ok_or_else(|| format!("bars[{index}].{field}: missing; every bar needs a number here"))
    };
    Ok(Bar {
        date,
        open: required(open, "open")?,
        high: required(high, "high")?,
        low: required(low, "low")?,
        close: required(close, "close")?,
        volume,
        extra,
    })
}
