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
            match ymd(d) {
                Some(bytes) => lua.create_string(bytes),
                None => lua.create_string(d.to_string()),
            }
        })?,
    )?;
    lua.globals().raw_set("date", t)
}

/// `YYYY-MM-DD` written digit by digit: plugins call `date.format` once per
/// bar, and the formatter machinery showed in the plugin-overhead profile.
/// Years outside 0..=9999 (which Display writes with a sign) give `None`.
fn ymd(d: chrono::NaiveDate) -> Option<[u8; 10]> {
    use chrono::Datelike;
    let y = d.year();
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (m, day) = (d.month(), d.day());
    let digit = |n: u32| b'0' + (n % 10) as u8;
    let y = y as u32;
    Some([
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
        b'-',
        digit(day / 10),
        digit(day),
    ])
}

#[cfg(test)]
mod tests {
    use super::ymd;
    use chrono::NaiveDate;

    #[test]
    fn writes_dates_as_display_does() {
        for (y, m, d) in [(2024, 1, 2), (1999, 12, 31), (7, 3, 9), (9999, 12, 31), (0, 1, 1)] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            assert_eq!(
                ymd(date).map(|b| String::from_utf8(b.to_vec()).unwrap()),
                Some(date.to_string())
            );
        }
        assert_eq!(ymd(NaiveDate::from_ymd_opt(-1, 1, 1).unwrap()), None);
        assert_eq!(ymd(NaiveDate::from_ymd_opt(10000, 1, 1).unwrap()), None);
    }
}
