//! `env.get(name)`: only names the plugin declares in `env = {...}` or the
//! config lists in `[plugins.<name>] env`; anything else is an error, so a
//! plugin cannot read the daemon's secrets by guessing names.

use mlua::Lua;

use super::HostCtx;

pub fn install(lua: &Lua, ctx: &HostCtx) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let settings = ctx.settings.clone();
    let plugin = ctx.plugin.clone();
    t.raw_set(
        "get",
        lua.create_function(move |_, name: String| {
            let s = settings.load();
            if !s.env.iter().any(|e| e == &name) {
                return Err(mlua::Error::runtime(format!(
                    "env.get({name:?}): not allowed; add {name:?} to the plugin's env list or to [plugins.{plugin}] env in the config"
                )));
            }
            Ok(std::env::var(&name).ok())
        })?,
    )?;
    lua.globals().raw_set("env", t)
}
