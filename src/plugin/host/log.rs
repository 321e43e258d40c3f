//! `log.debug/info/warn/error(msg)`: tracing events carrying the plugin name.

use mlua::{Lua, MultiValue};

use super::HostCtx;

fn join(args: MultiValue) -> String {
    args.iter()
        .map(|v| v.to_string().unwrap_or_else(|_| format!("<{}>", v.type_name())))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn install(lua: &Lua, ctx: &HostCtx) -> mlua::Result<()> {
    let t = lua.create_table()?;
    macro_rules! level {
        ($name:literal, $mac:ident) => {{
            let plugin = ctx.plugin.clone();
            t.raw_set(
                $name,
                lua.create_function(move |_, args: MultiValue| {
                    tracing::$mac!(target: "tickerd::plugin", plugin = %plugin, "{}", join(args));
                    Ok(())
                })?,
            )?;
        }};
    }
    level!("debug", debug);
    level!("info", info);
    level!("warn", warn);
    level!("error", error);
    let plugin = ctx.plugin.clone();
    lua.globals().raw_set(
        "print",
        lua.create_function(move |_, args: MultiValue| {
            tracing::info!(target: "tickerd::plugin", plugin = %plugin, "{}", join(args));
            Ok(())
        })?,
    )?;
    lua.globals().raw_set("log", t)
}
