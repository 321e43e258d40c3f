//! `date.parse("YYYY-MM-DD") -> unix seconds (UTC midnight)` and
//! `date.format(unix[, utc_offset_seconds]) -> "YYYY-MM-DD"`.
//!
//! The optional offset lets a plugin date a bar by the exchange's local day
//! (Yahoo's `gmtoffset`) without doing calendar arithmetic in Lua.

use chrono::{DateTime, NaiveDate};
use mlua::Lua;

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "parse",
        lua.create_function(|_, s: String| {
            let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .ok()
                .filter(|_| s.len() == 10)
                .ok_or_else(|| mlua::Error::runtime(format!("date.parse: {s:?} is not YYYY-MM-DD")))?;
            Ok(d.and_hms_opt(0, 0, 0).map(|dt| dt.and_utc().timestamp()).unwrap_or(0))
        })?,
    )?;
    t.raw_set(
        "format",
        lua.create_function(|lua, (ts, offset): (f64, Option<f64>)| {
            let secs = ts + offset.unwrap_or(0.0);
            if !secs.is_finite() {
                return Err(mlua::Error::runtime("date.format: timestamp is not a finite number"));
            }
            let dt = DateTime::from_timestamp(secs.floor() as i64, 0)
                .ok_or_else(|| mlua::Error::runtime(format!("date.format: {ts} is out of range")))?;
            let d = dt.date_naive();
            match crate::model::ymd(d) {
                Some(bytes) => lua.create_string(bytes),
                None => lua.create_string(d.to_string()),
            }
        })?,
    )?;
    lua.globals().raw_set("date", t)
}
