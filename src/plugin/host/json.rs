//! `json.encode(v)`, `json.decode(s)`, `json.null`, `json.object()`.

use mlua::{Lua, Table, Value};

use crate::plugin::convert::{OBJECT_MARK, json_to_lua, lua_to_json};

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let mark = lua.create_table()?;
    // Protected, so a plugin cannot reach the shared marker through
    // `getmetatable(json.object())` and give it a `__gc` that every later
    // `json.object()` would then carry (finalizers run unseen by the deadline).
    mark.raw_set("__metatable", "json.object")?;
    lua.set_named_registry_value(OBJECT_MARK, &mark)?;
    let t = lua.create_table()?;
    t.raw_set("null", Value::NULL)?;
    t.raw_set(
        "encode",
        lua.create_function(|lua, v: Value| {
            let j = lua_to_json(lua, &v, "value", 0).map_err(|m| mlua::Error::runtime(format!("json.encode: {m}")))?;
            serde_json::to_string(&j).map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))
        })?,
    )?;
    t.raw_set(
        "decode",
        lua.create_function(|lua, s: mlua::LuaString| {
            let j: serde_json::Value = serde_json::from_slice(&s.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("json.decode: invalid JSON: {e}")))?;
            json_to_lua(lua, &j, 0)
        })?,
    )?;
    t.raw_set(
        "object",
        lua.create_function(|lua, init: Option<Table>| {
            let t = match init {
                Some(t) => t,
                None => lua.create_table()?,
            };
            let mark: Table = lua.named_registry_value(OBJECT_MARK)?;
            t.set_metatable(Some(mark))?;
            Ok(t)
        })?,
    )?;
    lua.globals().raw_set("json", t)
}
