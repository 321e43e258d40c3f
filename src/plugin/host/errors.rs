//! `errors.upstream(msg)`, `errors.no_data(msg)` and
//! `errors.rate_limited(msg, secs)`: raise a failure that maps to
//! `upstream_error` (502), `no_data` (404) or an upstream refusal (a
//! fleet-wide cool-down of `secs`, then 429 `rate_limited`) instead of
//! `plugin_error`.

use std::time::Duration;

use mlua::Lua;

use super::HostError;

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "upstream",
        lua.create_function(|_, msg: Option<String>| -> mlua::Result<()> {
            Err(mlua::Error::external(HostError::Upstream(
                msg.unwrap_or_else(|| "the data source failed".into()),
            )))
        })?,
    )?;
    t.raw_set(
        "no_data",
        lua.create_function(|_, msg: Option<String>| -> mlua::Result<()> {
            Err(mlua::Error::external(HostError::NoData(msg.unwrap_or_else(|| {
                "the data source has no data for this request".into()
            }))))
        })?,
    )?;
    t.raw_set(
        "rate_limited",
        lua.create_function(|_, (msg, secs): (Option<String>, Option<f64>)| -> mlua::Result<()> {
            let retry_after = match secs {
                None => None,
                Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s.min(1.0e9))),
                Some(s) => {
                    return Err(mlua::Error::runtime(format!(
                        "errors.rate_limited(message, seconds): seconds must be a number >= 0, got {s}"
                    )));
                }
            };
            Err(mlua::Error::external(HostError::RateLimited {
                message: msg.unwrap_or_else(|| "the data source refused the call (rate limit)".into()),
                retry_after,
            }))
        })?,
    )?;
    lua.globals().raw_set("errors", t)
}
