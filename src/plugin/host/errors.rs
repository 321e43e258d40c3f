//! `errors.upstream(msg)` and `errors.no_data(msg)`: raise a failure that
//! maps to `upstream_error` (502) or `no_data` (404) instead of `plugin_error`.

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
    lua.globals().raw_set("errors", t)
}
