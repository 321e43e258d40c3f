//! `csv.parse(text[, {header = true, separator = ","}])`.
//!
//! With `header = true` (the default) the first record names the fields and
//! the result is an array of tables keyed by those names (a short row leaves
//! the missing fields nil; extra fields are dropped), plus the header array
//! as a second result. With `header = false` it is an array of arrays of
//! strings. Values are always strings: convert them with `tonumber`.
//!
//! Accepted input (RFC 4180 and what real downloads do): quoted fields with
//! separators and newlines inside, `""` for a quote inside quotes, LF, CRLF
//! or CR line ends, a trailing newline or none, a UTF-8 byte order mark.
//! Blank lines are skipped. A quote in the middle of an unquoted field is
//! kept as a character; a quoted field left open is an error naming the line
//! its record starts on. The separator is one ASCII character.

use mlua::{Lua, Table, Value};

pub fn install(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "parse",
        lua.create_function(|lua, (text, opts): (mlua::LuaString, Option<Table>)| {
            let (header, sep) = read_opts(opts)?;
            let text = text
                .to_str()
                .map_err(|_| mlua::Error::runtime("csv.parse: text is not valid UTF-8"))?;
            let records = parse_records(&text, sep).map_err(|m| mlua::Error::runtime(format!("csv.parse: {m}")))?;
            to_lua(lua, records, header)
        })?,
    )?;
    lua.globals().raw_set("csv", t)
}

fn read_opts(opts: Option<Table>) -> mlua::Result<(bool, u8)> {
    let (mut header, mut sep) = (true, b',');
    let Some(opts) = opts else { return Ok((header, sep)) };
    for pair in opts.pairs::<Value, Value>() {
        let (k, v) = pair?;
        match (k.to_string()?.as_str(), v) {
            ("header", Value::Boolean(b)) => header = b,
            ("header", Value::Nil) => {}
            ("separator", Value::String(s)) => {
                sep = match s.as_bytes()[..] {
                    [c] if c.is_ascii() && !matches!(c, b'"' | b'\r' | b'\n') => c,
                    _ => {
                        return Err(mlua::Error::runtime(format!(
                            "csv.parse: separator must be one ASCII character other than a quote or a newline, got {:?}",
                            s.to_string_lossy()
                        )));
                    }
                };
            }
            ("header" | "separator", other) => {
                return Err(mlua::Error::runtime(format!(
                    "csv.parse: header must be a boolean and separator a one-character string, got a {}",
                    other.type_name()
                )));
            }
            (other, _) => {
                return Err(mlua::Error::runtime(format!(
                    "csv.parse: unknown option {other:?}; options are header, separator"
                )));
            }
        }
    }
    Ok((header, sep))
}

fn to_lua(lua: &Lua, records: Vec<Vec<String>>, header: bool) -> mlua::Result<(Table, Value)> {
    let mut records = records.into_iter();
    if !header {
        let out = lua.create_table_with_capacity(records.len(), 0)?;
        for (i, rec) in records.enumerate() {
            out.raw_set(i + 1, lua.create_sequence_from(rec)?)?;
        }
        return Ok((out, Value::Nil));
    }
    let names = records.next().unwrap_or_default();
    let out = lua.create_table_with_capacity(records.len(), 0)?;
    for (i, rec) in records.enumerate() {
        let row = lua.create_table_with_capacity(0, names.len())?;
        for (name, value) in names.iter().zip(rec) {
            row.raw_set(name.as_str(), value)?;
        }
        out.raw_set(i + 1, row)?;
    }
    Ok((out, Value::Table(lua.create_sequence_from(names)?)))
}

/// Splits `text` into records of fields, with the `csv` crate: `flexible`
/// because real downloads have short and long rows, no header handling
/// (done in [`to_lua`]), `\r`, `\n` and `\r\n` all end a record.
pub fn parse_records(text: &str, sep: u8) -> Result<Vec<Vec<String>>, String> {
    // The crate reads an open quoted field to the end of the input without
    // an error. A sentinel record after the text shows it: it only comes
    // back as a record of its own when every quote was closed.
    let sentinel = if sep == b'x' { "y" } else { "x" };
    let tail = [b'\n', sentinel.as_bytes()[0]];
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(sep)
        .from_reader(std::io::Read::chain(text.as_bytes(), &tail[..]));
    let mut records = Vec::new();
    let mut last_line = 1;
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        last_line = record.position().map_or(last_line, |p| p.line());
        records.push(record.iter().map(str::to_owned).collect::<Vec<_>>());
    }
    match records.pop() {
        Some(last) if last.len() == 1 && last[0] == sentinel => Ok(records),
        _ => Err(format!("line {last_line}: a quoted field is never closed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Vec<String>> {
        parse_records(s, b',').unwrap()
    }

    fn v(rows: &[&[&str]]) -> Vec<Vec<String>> {
        rows.iter().map(|r| r.iter().map(|s| s.to_string()).collect()).collect()
    }

    #[test]
    fn plain_lines_with_and_without_trailing_newline() {
        assert_eq!(p("a,b\n1,2\n"), v(&[&["a", "b"], &["1", "2"]]));
        assert_eq!(p("a,b\n1,2"), v(&[&["a", "b"], &["1", "2"]]));
        assert_eq!(p(""), Vec::<Vec<String>>::new());
        assert_eq!(p("\n\n"), Vec::<Vec<String>>::new());
    }

    #[test]
    fn crlf_cr_bom_and_blank_lines() {
        assert_eq!(
            p("\u{feff}Date,Close\r\n2024-01-02,1.5\r\n\r\n2024-01-03,2\r\n"),
            v(&[&["Date", "Close"], &["2024-01-02", "1.5"], &["2024-01-03", "2"]])
        );
        assert_eq!(p("a\rb\r"), v(&[&["a"], &["b"]]));
    }

    #[test]
    fn quotes_escapes_and_embedded_separators() {
        assert_eq!(p("\"a,b\",\"say \"\"hi\"\"\",c\n"), v(&[&["a,b", "say \"hi\"", "c"]]));
        assert_eq!(p("\"line\r\nbreak\",x"), v(&[&["line\r\nbreak", "x"]]));
        assert_eq!(p("\"\",x\n"), v(&[&["", "x"]]));
        assert_eq!(p("\"\"\n"), v(&[&[""]]));
        assert_eq!(p("5\"3,x"), v(&[&["5\"3", "x"]]));
    }

    #[test]
    fn empty_fields_are_kept() {
        assert_eq!(p(",a,\n"), v(&[&["", "a", ""]]));
    }

    #[test]
    fn other_separators() {
        assert_eq!(
            parse_records("a;b\n1;\"2;3\"\n", b';').unwrap(),
            v(&[&["a", "b"], &["1", "2;3"]])
        );
        assert_eq!(parse_records("a\tb\n", b'\t').unwrap(), v(&[&["a", "b"]]));
    }

    #[test]
    fn unclosed_quote_names_its_line() {
        let e = parse_records("a,b\n1,\"2\n3\n", b',').unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_records("\"a", b',').unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn input_that_looks_like_the_end_marker_is_kept() {
        assert_eq!(p("x\nx"), v(&[&["x"], &["x"]]));
        assert_eq!(parse_records("x\ny\n", b'x').unwrap(), v(&[&["", ""], &["y"]]));
        assert!(
            parse_records("a\n\"x", b',').is_err(),
            "an open quote ending in the marker letter"
        );
    }
}
