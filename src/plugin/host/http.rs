//! `http.get/post/request`. (Filled in by the plugin-runtime work.)

use mlua::Lua;

use super::HostCtx;

pub fn install(_lua: &Lua, _ctx: &HostCtx) -> mlua::Result<()> {
    Ok(())
}
