//! Plugin error messages made fit for an HTTP body and a log line: cut to a
//! few KiB (a plugin can raise a 10 MB string), and an error object that is
//! not a string named by its type rather than by a heap address.

/// Longest message kept, in bytes; the rest is replaced by a note.
pub(crate) const MAX_MESSAGE: usize = 4 * 1024;

/// `msg` cut to [`MAX_MESSAGE`] bytes (on a character boundary) with a note
/// of its original size.
pub(crate) fn cut(msg: &str) -> String {
    if msg.len() <= MAX_MESSAGE {
        return msg.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [message cut: {} bytes in all]", &msg[..end], msg.len())
}

/// Lua renders an error object without `__tostring` as `table: 0x55d…`
/// (or `NAME: 0x…` with `__name`), and `error()` as `nil`: say what it is.
pub(crate) fn readable(msg: &str) -> String {
    if msg == "nil" {
        return "error object is nil (error() was called without a message)".to_owned();
    }
    if let Some((kind, addr)) = msg.split_once(": 0x")
        && !kind.is_empty()
        && !kind.contains(char::is_whitespace)
        && !addr.is_empty()
        && addr.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return format!("error object of type {kind} (raise a string, or give the object a __tostring metamethod)");
    }
    msg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_with_their_size() {
        let long = "E".repeat(10 * 1024 * 1024);
        let c = cut(&long);
        assert!(c.len() < MAX_MESSAGE + 100, "{}", c.len());
        assert!(
            c.ends_with("[message cut: 10485760 bytes in all]"),
            "{}",
            &c[c.len() - 60..]
        );
        assert_eq!(cut("short"), "short");
        // Never splits a character.
        let wide = "é".repeat(MAX_MESSAGE);
        assert!(cut(&wide).starts_with('é'));
    }

    #[test]
    fn error_objects_are_named_by_type() {
        assert!(readable("table: 0x7fd1a2b3c4d0").starts_with("error object of type table"));
        assert!(readable("function: 0x55d0").starts_with("error object of type function"));
        assert!(readable("nil").starts_with("error object is nil"));
        assert_eq!(readable("x.lua:3: table: 0xzz"), "x.lua:3: table: 0xzz");
        assert_eq!(readable("boom"), "boom");
    }
}
