//! Reads what `fetch` returned into typed bars, naming the bar and field of
//! the first problem.
//!
//! The bars are read through the Lua C API directly, inside one protected
//! call: the plugin-overhead profile showed mlua's per-pair iterator (a
//! protected call and a registry reference per key and value) as the largest
//! part of a fetch's Lua-thread time. Only calls that cannot raise a Lua
//! error are used (`lua_next` over a table as it is, raw reads, type tests,
//! `lua_tolstring` on values that already are strings), so no Lua error can
//! unwind through the Rust frames, and a Rust panic is caught before it
//! could reach Lua's C frames.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

use mlua::{Lua, Value, ffi};

use super::convert::lua_to_json;
use crate::model::{Bar, ExtraValue, parse_date};

pub struct RawOutput {
    pub bars: Vec<Bar>,
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// What the answer covers, when the plugin declares it (docs/PLUGINS.md,
    /// `coverage = { from = ..., to = ... }`); otherwise the asked interval.
    pub coverage: Option<(chrono::NaiveDate, chrono::NaiveDate)>,
}

/// Reads `coverage = { from = "YYYY-MM-DD", to = "YYYY-MM-DD" }`.
fn read_coverage(t: &mlua::Table) -> Result<Option<(chrono::NaiveDate, chrono::NaiveDate)>, String> {
    let c = match t.raw_get::<Value>("coverage").map_err(|e| e.to_string())? {
        Value::Nil => return Ok(None),
        Value::Table(c) => c,
        other => {
            return Err(format!(
                "coverage must be a table {{ from = \"YYYY-MM-DD\", to = \"YYYY-MM-DD\" }}, got {}",
                other.type_name()
            ));
        }
    };
    let date = |k: &'static str| -> Result<chrono::NaiveDate, String> {
        match c.raw_get::<Value>(k).map_err(|e| e.to_string())? {
            Value::String(s) => parse_date(k, &s.to_string_lossy()).map_err(|e| format!("coverage.{e}")),
            other => Err(format!(
                "coverage.{k} must be a \"YYYY-MM-DD\" string, got {}",
                other.type_name()
            )),
        }
    };
    let (from, to) = (date("from")?, date("to")?);
    if from > to {
        return Err(format!("coverage.from {from} is after coverage.to {to}"));
    }
    Ok(Some((from, to)))
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
    let mut read: Option<Result<Vec<Bar>, String>> = None;
    // SAFETY: the closure runs inside mlua's protected call with the bars
    // table at stack index 1; see `read_bars` for why nothing in it raises.
    let called = unsafe {
        lua.exec_raw::<()>(&bars_t, |state| {
            read = Some(
                catch_unwind(AssertUnwindSafe(|| read_bars(state)))
                    .unwrap_or_else(|_| Err("reading the bars failed unexpectedly".into())),
            );
        })
    };
    called.map_err(|e| e.to_string())?;
    let bars = read.unwrap_or_else(|| Err("reading the bars failed unexpectedly".into()))?;
    let meta = match t.raw_get::<Value>("meta").map_err(|e| e.to_string())? {
        Value::Nil => serde_json::Map::new(),
        v @ Value::Table(_) => match lua_to_json(lua, &v, "meta", 0)? {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Array(a) if a.is_empty() => serde_json::Map::new(),
            _ => return Err("meta must be a table with named keys".into()),
        },
        other => return Err(format!("meta must be a table, got {}", other.type_name())),
    };
    let coverage = read_coverage(&t)?;
    Ok(RawOutput { bars, meta, coverage })
}

/// Lua's own name for a value's type, as `type()` would print it.
unsafe fn type_name(state: *mut ffi::lua_State, idx: c_int) -> &'static str {
    match unsafe { ffi::lua_type(state, idx) } {
        ffi::LUA_TNIL => "nil",
        ffi::LUA_TBOOLEAN => "boolean",
        ffi::LUA_TLIGHTUSERDATA | ffi::LUA_TUSERDATA => "userdata",
        ffi::LUA_TNUMBER => "number",
        ffi::LUA_TSTRING => "string",
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TTHREAD => "thread",
        _ => "value",
    }
}

/// The bytes of the string at `idx`; only called on values that are strings,
/// so Lua converts nothing (a conversion would allocate and could raise).
unsafe fn string_at<'a>(state: *mut ffi::lua_State, idx: c_int) -> &'a [u8] {
    let mut len = 0usize;
    let p = unsafe { ffi::lua_tolstring(state, idx, &mut len) };
    if p.is_null() {
        return &[];
    }
    // SAFETY: Lua keeps the string alive while it is on the stack, and the
    // caller copies what it needs before popping it.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

unsafe fn number_at(state: *mut ffi::lua_State, idx: c_int, index: usize, field: &str) -> Result<f64, String> {
    unsafe {
        match ffi::lua_type(state, idx) {
            ffi::LUA_TNUMBER if ffi::lua_isinteger(state, idx) != 0 => {
                Ok(ffi::lua_tointegerx(state, idx, std::ptr::null_mut()) as f64)
            }
            ffi::LUA_TNUMBER => Ok(ffi::lua_tonumberx(state, idx, std::ptr::null_mut())),
            ffi::LUA_TNIL => Err(format!("bars[{index}].{field}: missing; every bar needs a number here")),
            ffi::LUA_TSTRING => Err(format!(
                "bars[{index}].{field}: expected a number, got string {:?} (convert it with tonumber)",
                String::from_utf8_lossy(string_at(state, idx))
            )),
            _ => Err(format!(
                "bars[{index}].{field}: expected a number, got {}",
                type_name(state, idx)
            )),
        }
    }
}

/// Reads the array at stack index 1. Leaves the stack as it found it.
///
/// Safety: `state` is a live Lua state with a table at index 1, inside a
/// protected call. Every API call here is one that cannot raise.
unsafe fn read_bars(state: *mut ffi::lua_State) -> Result<Vec<Bar>, String> {
    unsafe {
        if ffi::lua_checkstack(state, 8) == 0 {
            return Err("no Lua stack space left to read the bars".into());
        }
        let base = ffi::lua_gettop(state);
        let result = read_bars_at(state, 1);
        ffi::lua_settop(state, base);
        result
    }
}

unsafe fn read_bars_at(state: *mut ffi::lua_State, t: c_int) -> Result<Vec<Bar>, String> {
    unsafe {
        let len = ffi::lua_rawlen(state, t);
        // Keys other than 1..n (holes, names) mean it is not an array.
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, t) != 0 {
            let in_range = ffi::lua_isinteger(state, -2) != 0 && {
                let i = ffi::lua_tointegerx(state, -2, std::ptr::null_mut());
                i >= 1 && (i as u64) <= len as u64
            };
            ffi::lua_pop(state, 1);
            if !in_range {
                ffi::lua_pop(state, 1);
                return Err("bars must be an array (keys 1..n without holes)".into());
            }
        }
        let mut bars = Vec::with_capacity(len);
        for index in 1..=len {
            if ffi::lua_rawgeti(state, t, index as ffi::lua_Integer) != ffi::LUA_TTABLE {
                let got = type_name(state, -1);
                ffi::lua_pop(state, 1);
                return Err(format!("bars[{index}]: expected a table, got {got}"));
            }
            let bar = read_bar(state, ffi::lua_gettop(state), index);
            ffi::lua_pop(state, 1);
            bars.push(bar?);
        }
        Ok(bars)
    }
}

/// What a bar's `date` field held.
enum DateField {
    Missing,
    Text(String),
    NotUtf8,
    /// Not a string: the type's name.
    Other(&'static str),
}

/// One pass over the bar table at `b`: cheaper than a lookup per known
/// field followed by a second walk for the extras.
unsafe fn read_bar(state: *mut ffi::lua_State, b: c_int, index: usize) -> Result<Bar, String> {
    let mut date = DateField::Missing;
    let (mut open, mut high, mut low, mut close, mut volume) = (None, None, None, None, None);
    let mut extra = BTreeMap::new();
    unsafe {
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, b) != 0 {
            // key at -2, value at -1
            // Known names are matched as bytes; only an extra field's name
            // needs the UTF-8 check (it becomes a JSON key).
            let field = if ffi::lua_type(state, -2) == ffi::LUA_TSTRING {
                Ok(string_at(state, -2))
            } else {
                Err(format!("bars[{index}]: keys must be field names"))
            };
            let step = field.and_then(|key| {
                match key {
                    b"date" => {
                        date = if ffi::lua_type(state, -1) == ffi::LUA_TSTRING {
                            match std::str::from_utf8(string_at(state, -1)) {
                                Ok(s) => DateField::Text(s.to_owned()),
                                Err(_) => DateField::NotUtf8,
                            }
                        } else {
                            DateField::Other(type_name(state, -1))
                        }
                    }
                    b"open" => open = Some(number_at(state, -1, index, "open")?),
                    b"high" => high = Some(number_at(state, -1, index, "high")?),
                    b"low" => low = Some(number_at(state, -1, index, "low")?),
                    b"close" => close = Some(number_at(state, -1, index, "close")?),
                    b"volume" => volume = Some(number_at(state, -1, index, "volume")?),
                    other => {
                        let other = std::str::from_utf8(other)
                            .map_err(|_| format!("bars[{index}]: a field name is not UTF-8"))?;
                        let x = match ffi::lua_type(state, -1) {
                            ffi::LUA_TNUMBER => ExtraValue::Number(number_at(state, -1, index, other)?),
                            ffi::LUA_TSTRING => {
                                ExtraValue::Text(String::from_utf8_lossy(string_at(state, -1)).into_owned())
                            }
                            _ => {
                                return Err(format!(
                                    "bars[{index}].{other}: extra fields must be numbers or strings, got {}",
                                    type_name(state, -1)
                                ));
                            }
                        };
                        extra.insert(other.to_owned(), x);
                    }
                }
                Ok(())
            });
            ffi::lua_pop(state, 1);
            if let Err(e) = step {
                ffi::lua_pop(state, 1);
                return Err(e);
            }
        }
    }
    let date = match date {
        DateField::Text(s) => parse_date("date", &s).map_err(|e| format!("bars[{index}].date: {}", e.message))?,
        DateField::NotUtf8 => return Err(format!("bars[{index}].date: not UTF-8")),
        DateField::Missing => return Err(format!("bars[{index}].date: missing; use \"YYYY-MM-DD\"")),
        DateField::Other(other) => {
            return Err(format!(
                "bars[{index}].date: expected a \"YYYY-MM-DD\" string, got {other} (date.format(unix) makes one)"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lua_src: &str) -> Result<RawOutput, String> {
        let lua = Lua::new();
        let v: Value = lua.load(lua_src).eval().expect("test Lua compiles");
        let out = read_output(&lua, v);
        // The reader leaves the stack as it found it: a later call still works.
        let again: i64 = lua.load("return 1 + 1").eval().expect("state still usable");
        assert_eq!(again, 2);
        out
    }

    fn err(lua_src: &str) -> String {
        match read(lua_src) {
            Ok(_) => panic!("expected an error for {lua_src}"),
            Err(e) => e,
        }
    }

    #[test]
    fn reads_bars_numbers_extras_and_meta() {
        let out = read(
            r#"return { bars = {
                 { date = "2024-01-02", open = 1, high = 2.5, low = 0.5, close = 2, volume = 100, adj = 1.9, note = "x" },
                 { date = "2024-01-03", open = 2, high = 3, low = 1, close = 2.75 },
               }, meta = { currency = "USD" } }"#,
        )
        .unwrap();
        assert_eq!(out.bars.len(), 2);
        let b = &out.bars[0];
        assert_eq!(b.date.to_string(), "2024-01-02");
        assert_eq!(
            (b.open, b.high, b.low, b.close, b.volume),
            (1.0, 2.5, 0.5, 2.0, Some(100.0))
        );
        assert!(matches!(b.extra.get("adj"), Some(ExtraValue::Number(x)) if *x == 1.9));
        assert!(matches!(b.extra.get("note"), Some(ExtraValue::Text(t)) if t == "x"));
        assert_eq!(out.bars[1].volume, None);
        assert_eq!(out.bars[1].close, 2.75);
        assert_eq!(out.meta["currency"], "USD");
        assert!(read("return { bars = {} }").unwrap().bars.is_empty());
    }

    #[test]
    fn names_the_bar_and_field_of_the_first_problem() {
        let cases = [
            (
                r#"{ date = "2024-01-02", open = "1.5", high = 2, low = 0, close = 1 }"#,
                r#"bars[1].open: expected a number, got string "1.5" (convert it with tonumber)"#,
            ),
            (
                r#"{ date = "2024-01-02", open = 1, high = 2, low = 0 }"#,
                "bars[1].close: missing; every bar needs a number here",
            ),
            (
                r#"{ date = "2024-01-02", open = 1, high = true, low = 0, close = 1 }"#,
                "bars[1].high: expected a number, got boolean",
            ),
            (
                r#"{ open = 1, high = 2, low = 0, close = 1 }"#,
                r#"bars[1].date: missing; use "YYYY-MM-DD""#,
            ),
            (
                r#"{ date = 20240102, open = 1, high = 2, low = 0, close = 1 }"#,
                r#"bars[1].date: expected a "YYYY-MM-DD" string, got number (date.format(unix) makes one)"#,
            ),
            (
                r#"{ date = "2024-1-2", open = 1, high = 2, low = 0, close = 1 }"#,
                "bars[1].date: ",
            ),
            (
                r#"{ date = "2024-01-02", open = 1, high = 2, low = 0, close = 1, [1] = 5 }"#,
                "bars[1]: keys must be field names",
            ),
            (
                r#"{ date = "2024-01-02", open = 1, high = 2, low = 0, close = 1, x = {} }"#,
                "bars[1].x: extra fields must be numbers or strings, got table",
            ),
            (
                r#"{ date = "2024-01-02", open = 1, high = 2, low = 0, close = 1, ["\xff"] = 1 }"#,
                "bars[1]: a field name is not UTF-8",
            ),
        ];
        for (bar, want) in cases {
            let good = r#"{ date = "2024-01-01", open = 1, high = 2, low = 0, close = 1 }"#;
            let src = format!(
                "return {{ bars = {{ {good}, {} }} }}",
                bar.replace("bars[1]", "bars[2]")
            );
            let got = err(&src);
            let want = want.replace("bars[1]", "bars[2]");
            assert!(got.starts_with(&want), "for {bar}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_array_of_tables() {
        assert_eq!(err("return nil"), "fetch returned nothing; return { bars = { ... } }");
        assert!(err("return 5").starts_with("fetch returned a integer"));
        assert!(err("return {}").contains("has no bars"));
        assert_eq!(
            err("return { bars = 'x' }"),
            "bars must be an array of tables, got string"
        );
        let holes =
            "return { bars = { [1] = { date = '2024-01-02', open = 1, high = 1, low = 1, close = 1 }, [3] = {} } }";
        assert_eq!(err(holes), "bars must be an array (keys 1..n without holes)");
        assert_eq!(
            err("return { bars = { n = 1 } }"),
            "bars must be an array (keys 1..n without holes)"
        );
        assert_eq!(err("return { bars = { 5 } }"), "bars[1]: expected a table, got number");
        assert_eq!(
            err("return { bars = {}, meta = 3 }"),
            "meta must be a table, got integer"
        );
    }

    #[test]
    fn reads_many_bars_without_exhausting_the_stack() {
        let out = read(
            r#"local b = {}
               for i = 1, 5000 do b[i] = { date = "2024-01-02", open = i, high = i, low = i, close = i, x = "y" } end
               return { bars = b }"#,
        )
        .unwrap();
        assert_eq!(out.bars.len(), 5000);
        assert_eq!(out.bars[4999].open, 5000.0);
    }
}
