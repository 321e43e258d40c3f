//! `string.find`, `string.match`, `string.gmatch` and `string.gsub` on our
//! step-counting matcher ([`super::pattern`]), so the fetch deadline stops a
//! pattern match the way the instruction hook stops Lua code. Arguments,
//! results and messages follow the Lua 5.4 manual.

use std::cell::Cell;

use mlua::{Lua, LuaString, MultiValue, Table, Value};

use super::pattern::{Capture, Matcher, PatternError, has_specials};
use super::sandbox::{deadline_passed, timeout_error};

fn stop() -> bool {
    deadline_passed().is_some()
}

fn fail(e: PatternError, func: &str) -> mlua::Error {
    match e {
        PatternError::Malformed(m) => mlua::Error::runtime(m),
        PatternError::Stopped => timeout_error(deadline_passed().unwrap_or_default(), &format!("string.{func}")),
    }
}

/// Lua's start position: 1-based, negative counts from the end, clamped to 1.
/// Returned 0-based (it may be past the end).
fn start_offset(init: Option<i64>, len: usize) -> usize {
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let one_based = match init.unwrap_or(1) {
        i if i > 0 => usize::try_from(i).unwrap_or(usize::MAX),
        0 => 1,
        i if i < -len_i => 1,
        i => (len_i + i + 1) as usize,
    };
    one_based - 1
}

fn capture_value(lua: &Lua, src: &[u8], c: Capture) -> mlua::Result<Value> {
    Ok(match c {
        Capture::Text(a, b) => Value::String(lua.create_string(&src[a..b])?),
        Capture::Position(p) => Value::Integer(p as i64),
    })
}

fn capture_values(lua: &Lua, src: &[u8], caps: Vec<Capture>, func: &str) -> mlua::Result<Vec<Value>> {
    caps.into_iter()
        .map(|c| capture_value(lua, src, c))
        .collect::<mlua::Result<_>>()
        .map_err(|e| {
            // Keep the function's name on a memory error raised while copying captures.
            match e {
                mlua::Error::MemoryError(_) => e,
                other => mlua::Error::runtime(format!("string.{func}: {other}")),
            }
        })
}

fn nil() -> MultiValue {
    MultiValue::from_vec(vec![Value::Nil])
}

/// `string.find` (with `find`) or `string.match`.
fn find_or_match(
    lua: &Lua,
    (s, pat, init, plain): (LuaString, LuaString, Option<i64>, Option<Value>),
    find: bool,
) -> mlua::Result<MultiValue> {
    let func = if find { "find" } else { "match" };
    let src = s.as_bytes();
    let p = pat.as_bytes();
    let at = start_offset(init, src.len());
    if at > src.len() {
        return Ok(nil());
    }
    let plain = plain.is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
    if find && (plain || !has_specials(&p)) {
        // memmem is linear in the subject; a naive search is not.
        return Ok(match memchr::memmem::find(&src[at..], &p) {
            Some(i) => MultiValue::from_vec(vec![
                Value::Integer((at + i + 1) as i64),
                Value::Integer((at + i + p.len()) as i64),
            ]),
            None => nil(),
        });
    }
    let anchored = p.first() == Some(&b'^');
    let stop_fn = stop;
    let mut m = Matcher::new(&src, &p, &stop_fn);
    let mut start = at;
    loop {
        if let Some(end) = m.match_at(start, usize::from(anchored)).map_err(|e| fail(e, func))? {
            let caps = m.captures(start, end, !find).map_err(|e| fail(e, func))?;
            let mut out = Vec::with_capacity(caps.len() + 2);
            if find {
                out.push(Value::Integer((start + 1) as i64));
                out.push(Value::Integer(end as i64));
            }
            out.extend(capture_values(lua, &src, caps, func)?);
            return Ok(MultiValue::from_vec(out));
        }
        start += 1;
        if anchored || start > src.len() {
            return Ok(nil());
        }
    }
}

fn gmatch(lua: &Lua, (s, pat, init): (LuaString, LuaString, Option<i64>)) -> mlua::Result<mlua::Function> {
    let len = s.as_bytes().len();
    let next = Cell::new(start_offset(init, len).min(len + 1));
    let last: Cell<Option<usize>> = Cell::new(None);
    lua.create_function(move |lua, ()| {
        let src = s.as_bytes();
        let p = pat.as_bytes();
        let stop_fn = stop;
        let mut m = Matcher::new(&src, &p, &stop_fn);
        let mut start = next.get();
        while start <= src.len() {
            if let Some(end) = m.match_at(start, 0).map_err(|e| fail(e, "gmatch"))?
                && Some(end) != last.get()
            {
                next.set(end);
                last.set(Some(end));
                let caps = m.captures(start, end, true).map_err(|e| fail(e, "gmatch"))?;
                return Ok(MultiValue::from_vec(capture_values(lua, &src, caps, "gmatch")?));
            }
            start += 1;
        }
        next.set(start);
        Ok(MultiValue::new())
    })
}

enum Replacement {
    Text(LuaString),
    Table(Table),
    Function(mlua::Function),
}

/// Appends what replaces the match `start..end` to `out`.
fn replace(
    lua: &Lua,
    m: &Matcher<'_>,
    src: &[u8],
    (start, end): (usize, usize),
    repl: &Replacement,
    out: &mut Vec<u8>,
) -> mlua::Result<()> {
    let value = match repl {
        Replacement::Text(t) => {
            let t = t.as_bytes();
            let mut i = 0;
            while i < t.len() {
                let c = t[i];
                i += 1;
                if c != b'%' {
                    out.push(c);
                    continue;
                }
                match t.get(i) {
                    Some(b'%') => out.push(b'%'),
                    Some(&d) if d.is_ascii_digit() => {
                        let cap = if d == b'0' {
                            Capture::Text(start, end)
                        } else {
                            m.capture(usize::from(d - b'1'), start, end).map_err(|e| match e {
                                PatternError::Malformed(msg) if msg.starts_with("invalid capture index") => {
                                    mlua::Error::runtime(format!("{msg} in replacement string"))
                                }
                                other => fail(other, "gsub"),
                            })?
                        };
                        match cap {
                            Capture::Text(a, b) => out.extend_from_slice(&src[a..b]),
                            Capture::Position(p) => out.extend_from_slice(p.to_string().as_bytes()),
                        }
                    }
                    _ => return Err(mlua::Error::runtime("invalid use of '%' in replacement string")),
                }
                i += 1;
            }
            return Ok(());
        }
        Replacement::Table(t) => {
            let first = m.capture(0, start, end).map_err(|e| fail(e, "gsub"))?;
            t.get::<Value>(capture_value(lua, src, first)?)?
        }
        Replacement::Function(f) => {
            let caps = m.captures(start, end, true).map_err(|e| fail(e, "gsub"))?;
            f.call::<Value>(MultiValue::from_vec(capture_values(lua, src, caps, "gsub")?))?
        }
    };
    match value {
        Value::Nil | Value::Boolean(false) => out.extend_from_slice(&src[start..end]),
        Value::String(s) => out.extend_from_slice(&s.as_bytes()),
        v @ (Value::Integer(_) | Value::Number(_)) => {
            if let Some(s) = lua.coerce_string(v)? {
                out.extend_from_slice(&s.as_bytes());
            }
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "invalid replacement value (a {})",
                other.type_name()
            )));
        }
    }
    Ok(())
}

fn gsub(
    lua: &Lua,
    (s, pat, repl, max): (LuaString, LuaString, Value, Option<i64>),
    memory_limit: usize,
) -> mlua::Result<(LuaString, i64)> {
    let repl = match repl {
        Value::String(t) => Replacement::Text(t),
        v @ (Value::Integer(_) | Value::Number(_)) => match lua.coerce_string(v)? {
            Some(t) => Replacement::Text(t),
            None => return Err(mlua::Error::runtime("bad argument #3 to 'gsub' (string expected)")),
        },
        Value::Table(t) => Replacement::Table(t),
        Value::Function(f) => Replacement::Function(f),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                other.type_name()
            )));
        }
    };
    let src = s.as_bytes();
    let p = pat.as_bytes();
    let max = max.unwrap_or(i64::try_from(src.len()).unwrap_or(i64::MAX).saturating_add(1));
    let anchored = p.first() == Some(&b'^');
    let stop_fn = stop;
    let mut m = Matcher::new(&src, &p, &stop_fn);
    // Built outside Lua's allocator, so held to the state's memory limit by hand.
    let too_big = |out: &Vec<u8>| out.len() > memory_limit;
    let mut out = Vec::new();
    let (mut at, mut last, mut n) = (0usize, None, 0i64);
    while n < max {
        match m.match_at(at, usize::from(anchored)).map_err(|e| fail(e, "gsub"))? {
            Some(end) if Some(end) != last => {
                n += 1;
                replace(lua, &m, &src, (at, end), &repl, &mut out)?;
                at = end;
                last = Some(end);
            }
            _ if at < src.len() => {
                out.push(src[at]);
                at += 1;
            }
            _ => break,
        }
        if too_big(&out) {
            return Err(mlua::Error::MemoryError("not enough memory".into()));
        }
        if anchored {
            break;
        }
    }
    out.extend_from_slice(&src[at.min(src.len())..]);
    if too_big(&out) {
        return Err(mlua::Error::MemoryError("not enough memory".into()));
    }
    Ok((lua.create_string(&out)?, n))
}

/// Replaces the four pattern functions in `string` (also reached as
/// methods, `s:find(...)`, through the string metatable).
pub(crate) fn install(lua: &Lua, string: &Table, memory_limit: usize) -> mlua::Result<()> {
    string.raw_set("find", lua.create_function(|lua, a| find_or_match(lua, a, true))?)?;
    string.raw_set(
        "match",
        lua.create_function(|lua, (s, p, init): (LuaString, LuaString, Option<i64>)| {
            find_or_match(lua, (s, p, init, None), false)
        })?,
    )?;
    string.raw_set("gmatch", lua.create_function(gmatch)?)?;
    string.raw_set("gsub", lua.create_function(move |lua, a| gsub(lua, a, memory_limit))?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(code: &str) -> String {
        let lua = Lua::new();
        let string: Table = lua.globals().get("string").unwrap();
        install(&lua, &string, 64 << 20).unwrap();
        lua.load(code)
            .eval::<String>()
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn behaves_like_the_lua_manual() {
        let cases = [
            ("return table.concat({string.find('hello world', 'o w')}, ',')", "5,7"),
            ("return table.concat({string.find('hello', 'l', -2)}, ',')", "4,4"),
            ("return tostring(string.find('hello', 'x'))", "nil"),
            ("return tostring(string.find('abc', '', 10))", "nil"),
            ("return table.concat({string.find('abc', '', 4)}, ',')", "4,3"),
            ("return table.concat({string.find('a.b', '.', 1, true)}, ',')", "2,2"),
            (
                "return table.concat({string.find('key=val', '(%w+)=(%w+)')}, ',')",
                "1,7,key,val",
            ),
            ("return string.match('  trim  ', '^%s*(.-)%s*$')", "trim"),
            ("return tostring(string.match('hello', '()ll'))", "3"),
            ("return ('2024-01-02'):match('(%d+)-(%d+)')", "2024"),
            (
                "local t = {} for w in string.gmatch('one two  three', '%a+') do t[#t+1] = w end return table.concat(t, '|')",
                "one|two|three",
            ),
            (
                "local t = {} for k, v in string.gmatch('a=1, b=2', '(%w+)=(%w+)') do t[#t+1] = k .. v end return table.concat(t)",
                "a1b2",
            ),
            (
                "local t = {} for w in string.gmatch('abc', '') do t[#t+1] = 'x' end return #t",
                "4",
            ),
            (
                "local t = {} for w in ('one two'):gmatch('%a+', 4) do t[#t+1] = w end return table.concat(t, '|')",
                "two",
            ),
            ("return (string.gsub('hello world', 'o', '0'))", "hell0 w0rld"),
            ("return select(2, string.gsub('hello world', 'o', '0'))", "2"),
            (
                "return (string.gsub('hello world', '(%w+)', '<%1>'))",
                "<hello> <world>",
            ),
            ("return (string.gsub('hello', '', '-'))", "-h-e-l-l-o-"),
            ("return (string.gsub('abc', '%w', '%0%0', 2))", "aabbc"),
            (
                "return (string.gsub('$name is $age', '%$(%w+)', {name = 'ann', age = 7}))",
                "ann is 7",
            ),
            (
                "return (string.gsub('x y', '%w', function(c) return c:upper() end))",
                "X Y",
            ),
            ("return (string.gsub('x y', '%w', function(c) return nil end))", "x y"),
            ("return (string.gsub('abc', '^a', 'z'))", "zbc"),
            ("return (string.gsub('hello', 'l+', '%%'))", "he%o"),
            (
                "return (string.gsub('abc', 'b', '%2'))",
                "error: invalid capture index %2 in replacement string",
            ),
            (
                "return (string.gsub('abc', 'b', '%x'))",
                "error: invalid use of '%' in replacement string",
            ),
        ];
        for (code, want) in cases {
            let got = eval(code);
            assert!(
                got == want || (want.starts_with("error: ") && got.contains(&want[7..])),
                "{code}: got {got:?}, want {want:?}"
            );
        }
    }

    /// Our four functions against Lua's own C ones on a corpus of subjects
    /// and patterns: same results, same errors.
    #[test]
    fn agrees_with_luas_c_matcher() {
        let lua = Lua::new();
        let string: Table = lua.globals().get("string").unwrap();
        for f in ["find", "match", "gmatch", "gsub"] {
            let c: mlua::Function = string.get(f).unwrap();
            lua.globals().set(format!("c_{f}"), c).unwrap();
        }
        install(&lua, &string, 64 << 20).unwrap();
        let verdict: LuaString = lua
            .load(
                r##"
local subjects = { "", "a", "hello world", "  key = value ; x=1 ", "f(a(b)c) [x] {y}", "aaab",
  "THE (quick) fox", "2024-01-02,1.5,-3e2\n2024-01-03,,7", "a.b-c%d", "\0bin\255ary", "]]--[[" }
local patterns = { "", "a", "^a", "a$", "^$", ".", "%a+", "%A+", "%d+%.?%d*", "(%w+)%s*=%s*(%w+)",
  "%b()", "%b[]", "%f[%a]%a+", "%f[%w]%w+%f[%W]", "[%w_]+", "[^,]*", "[]]", "[^]]+", "[a-c]+",
  "a-b", "a*", "a+b", "a?b", "()a()", "(a)(a)%1", "(h)(e)", "%s*(.-)%s*$", "[%-%.]", "%p+",
  "%c", "%x+", "%u%l+", "%g+", "([^,]*),?", "(%d+)-(%d+)-(%d+)", "%z", ".-b", "^(.-)%s", "%%",
  "(()b)", "[a-]", "[-a]", "%", "[a", "(a", "a)", "%b", "%f", "%1", "(a)%2" }
local function show(ok, ...)
  -- A Rust callback's error carries mlua's prefix and a traceback.
  if not ok then return "E:" .. tostring((...)):gsub("^runtime error: ", ""):gsub("\n.*", ""):gsub("^corpus:%d+: ", "") end
  local t = {}
  for i = 1, select("#", ...) do t[#t + 1] = tostring((select(i, ...))) end
  return table.concat(t, ",")
end
local function all(gm, s, p)
  return pcall(function()
    local out = {}
    for a, b in gm(s, p) do out[#out + 1] = tostring(a) .. "/" .. tostring(b) end
    return table.concat(out, ";")
  end)
end
for _, s in ipairs(subjects) do
  for _, p in ipairs(patterns) do
    for _, init in ipairs({ 1, 3, -2, 40 }) do
      local pairs_ = {
        { show(pcall(string.find, s, p, init)), show(pcall(c_find, s, p, init)), "find" },
        { show(pcall(string.find, s, p, init, true)), show(pcall(c_find, s, p, init, true)), "plain find" },
        { show(pcall(string.match, s, p, init)), show(pcall(c_match, s, p, init)), "match" },
      }
      for _, pr in ipairs(pairs_) do
        if pr[1] ~= pr[2] then return pr[3] .. "(" .. s .. ", " .. p .. ", " .. init .. "): ours " .. pr[1] .. " lua " .. pr[2] end
      end
    end
    local a, b = show(all(string.gmatch, s, p)), show(all(c_gmatch, s, p))
    if a ~= b then return "gmatch(" .. s .. ", " .. p .. "): ours " .. a .. " lua " .. b end
    for _, r in ipairs({ "<%0>", "%1", "x", "%%" }) do
      a, b = show(pcall(string.gsub, s, p, r)), show(pcall(c_gsub, s, p, r))
      if a ~= b then return "gsub(" .. s .. ", " .. p .. ", " .. r .. "): ours " .. a .. " lua " .. b end
    end
    a, b = show(pcall(string.gsub, s, p, string.upper, 2)), show(pcall(c_gsub, s, p, string.upper, 2))
    if a ~= b then return "gsub fn(" .. s .. ", " .. p .. "): ours " .. a .. " lua " .. b end
  end
end
return "same"
"##,
            )
            .set_name("=corpus")
            .eval()
            .unwrap();
        assert_eq!(verdict.to_string_lossy(), "same");
    }

    #[test]
    fn gsub_output_is_held_to_the_memory_limit() {
        let lua = Lua::new();
        let string: Table = lua.globals().get("string").unwrap();
        install(&lua, &string, 1 << 20).unwrap();
        let err = lua
            .load("return string.gsub(string.rep('x', 100000), 'x', string.rep('y', 100))")
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains("not enough memory"), "{err}");
    }
}
