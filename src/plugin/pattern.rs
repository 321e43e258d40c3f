//! Lua 5.4 patterns (the language of `string.find`, `match`, `gmatch` and
//! `gsub`), matched by a backtracking matcher that counts its steps.
//!
//! Why our own matcher: Lua's C matcher never returns to the VM while it
//! works, so the deadline hook cannot stop it, and a pattern such as
//! `.-.-.-.-b` on a long subject backtracks for hours. This one asks its
//! `stop` callback every [`CHECK_EVERY`] steps and gives up with
//! [`PatternError::Stopped`] once it says so. The language, its error
//! messages and its limits (32 captures, nesting depth 200) follow the Lua
//! 5.4 manual (§6.4.1), so plugins see no difference.

/// Most captures one pattern may hold (Lua's `LUA_MAXCAPTURES`).
pub(crate) const MAX_CAPTURES: usize = 32;
/// Deepest nesting of backtracking points, as in Lua ("pattern too complex").
const MAX_DEPTH: usize = 200;
/// Steps between two calls of the `stop` callback: a step is a few
/// nanoseconds, so the callback runs about every ten microseconds.
const CHECK_EVERY: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatternError {
    /// The pattern is not valid; the message is Lua's wording.
    Malformed(String),
    /// The `stop` callback asked to give up (the fetch's deadline passed).
    Stopped,
}

/// One capture of a successful match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capture {
    /// A substring of the subject: `start..end` (byte offsets).
    Text(usize, usize),
    /// A position capture `()`: the 1-based position it stood at.
    Position(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Open,
    Position,
    Closed(usize),
}

/// Characters that make a pattern more than a plain substring.
pub(crate) fn has_specials(pat: &[u8]) -> bool {
    pat.iter().any(|b| b"^$*+?.([%-".contains(b))
}

/// A matcher over one subject and one pattern. Reuse it across start
/// positions (`find_at`) so the step count, and with it the budget, spans
/// the whole call.
pub(crate) struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: usize,
    level: usize,
    caps: [(usize, Slot); MAX_CAPTURES],
    steps: u32,
    stop: &'a dyn Fn() -> bool,
}

type Step = Result<Option<usize>, PatternError>;

fn malformed<T>(msg: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError::Malformed(msg.into()))
}

/// `%a`, `%d`, ... on one byte, in the C locale; an upper-case class letter is
/// the complement; any other character after `%` stands for itself.
fn class_matches(c: u8, class: u8) -> bool {
    let hit = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's isspace also counts the vertical tab, which Rust's does not.
        b's' => c.is_ascii_whitespace() || c == 0x0b,
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        // Deprecated since Lua 5.2 but still understood by 5.4.
        b'z' => c == 0,
        _ => return class == c,
    };
    if class.is_ascii_uppercase() { !hit } else { hit }
}

impl<'a> Matcher<'a> {
    pub(crate) fn new(src: &'a [u8], pat: &'a [u8], stop: &'a dyn Fn() -> bool) -> Self {
        Self {
            src,
            pat,
            depth: MAX_DEPTH,
            level: 0,
            caps: [(0, Slot::Open); MAX_CAPTURES],
            steps: 0,
            stop,
        }
    }

    /// Tries to match the pattern (from `pat_start`, after any `^`) at
    /// exactly `at`; returns the end of the match.
    pub(crate) fn match_at(&mut self, at: usize, pat_start: usize) -> Step {
        self.level = 0;
        self.depth = MAX_DEPTH;
        self.run(at, pat_start)
    }

    /// The captures of the last successful match from `start` to `end`;
    /// with `whole_if_none`, a pattern without captures yields the match.
    pub(crate) fn captures(&self, start: usize, end: usize, whole_if_none: bool) -> Result<Vec<Capture>, PatternError> {
        if self.level == 0 {
            return Ok(if whole_if_none {
                vec![Capture::Text(start, end)]
            } else {
                Vec::new()
            });
        }
        (0..self.level).map(|i| self.capture(i, start, end)).collect()
    }

    /// Capture `i` (0-based) as `gsub`'s `%1`...`%9` sees it: with no
    /// captures at all, `%1` is the whole match.
    pub(crate) fn capture(&self, i: usize, start: usize, end: usize) -> Result<Capture, PatternError> {
        if i >= self.level {
            return if i == 0 {
                Ok(Capture::Text(start, end))
            } else {
                malformed(format!("invalid capture index %{}", i + 1))
            };
        }
        match self.caps[i] {
            (s, Slot::Closed(len)) => Ok(Capture::Text(s, s + len)),
            (s, Slot::Position) => Ok(Capture::Position(s + 1)),
            (_, Slot::Open) => malformed("unfinished capture"),
        }
    }

    fn tick(&mut self) -> Result<(), PatternError> {
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(CHECK_EVERY) && (self.stop)() {
            return Err(PatternError::Stopped);
        }
        Ok(())
    }

    /// Index just past the single-character class starting at `p`.
    fn class_end(&self, p: usize) -> Result<usize, PatternError> {
        let pat = self.pat;
        match pat[p] {
            b'%' => {
                if p + 1 >= pat.len() {
                    return malformed("malformed pattern (ends with '%')");
                }
                Ok(p + 2)
            }
            b'[' => {
                let mut q = p + 1;
                if pat.get(q) == Some(&b'^') {
                    q += 1;
                }
                // The first character of a set is taken as is, so `[]]` and
                // `[^]]` are sets holding `]`.
                loop {
                    let Some(&c) = pat.get(q) else {
                        return malformed("malformed pattern (missing ']')");
                    };
                    q += 1;
                    if c == b'%' {
                        if q >= pat.len() {
                            return malformed("malformed pattern (missing ']')");
                        }
                        q += 1;
                    }
                    if pat.get(q) == Some(&b']') {
                        return Ok(q + 1);
                    }
                }
            }
            _ => Ok(p + 1),
        }
    }

    /// Whether `c` is in the set `[...]` opening at `open` and closing at `close`.
    fn set_matches(&self, c: u8, open: usize, close: usize) -> bool {
        let pat = self.pat;
        let mut i = open + 1;
        let negate = pat[i] == b'^';
        if negate {
            i += 1;
        }
        while i < close {
            if pat[i] == b'%' && i + 1 < close {
                if class_matches(c, pat[i + 1]) {
                    return !negate;
                }
                i += 2;
            } else if i + 2 < close && pat[i + 1] == b'-' {
                if pat[i] <= c && c <= pat[i + 2] {
                    return !negate;
                }
                i += 3;
            } else {
                if pat[i] == c {
                    return !negate;
                }
                i += 1;
            }
        }
        negate
    }

    /// Whether the subject byte at `s` matches the class `p..ep`.
    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else { return false };
        match self.pat[p] {
            b'.' => true,
            b'%' => class_matches(c, self.pat[p + 1]),
            b'[' => self.set_matches(c, p, ep - 1),
            other => other == c,
        }
    }

    /// One nesting level deeper, as Lua counts it.
    fn run(&mut self, s: usize, p: usize) -> Step {
        if self.depth == 0 {
            return malformed("pattern too complex");
        }
        self.depth -= 1;
        let r = self.run_here(s, p);
        self.depth += 1;
        r
    }

    fn run_here(&mut self, mut s: usize, mut p: usize) -> Step {
        let pat = self.pat;
        loop {
            self.tick()?;
            if p == pat.len() {
                return Ok(Some(s));
            }
            match pat[p] {
                b'(' if pat.get(p + 1) == Some(&b')') => return self.open_capture(s, p + 2, Slot::Position),
                b'(' => return self.open_capture(s, p + 1, Slot::Open),
                b')' => return self.close_capture(s, p + 1),
                b'$' if p + 1 == pat.len() => return Ok((s == self.src.len()).then_some(s)),
                b'%' if pat.get(p + 1) == Some(&b'b') => match self.balanced(s, p + 2)? {
                    Some(next) => {
                        s = next;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                b'%' if pat.get(p + 1) == Some(&b'f') => {
                    p += 2;
                    if pat.get(p) != Some(&b'[') {
                        return malformed("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let before = if s == 0 { 0 } else { self.src[s - 1] };
                    let here = self.src.get(s).copied().unwrap_or(0);
                    if !self.set_matches(before, p, ep - 1) && self.set_matches(here, p, ep - 1) {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                b'%' if pat.get(p + 1).is_some_and(u8::is_ascii_digit) => match self.back_reference(s, pat[p + 1])? {
                    Some(next) => {
                        s = next;
                        p += 2;
                        continue;
                    }
                    None => return Ok(None),
                },
                _ => {}
            }
            let ep = self.class_end(p)?;
            let suffix = pat.get(ep).copied();
            if !self.single(s, p, ep) {
                if matches!(suffix, Some(b'*' | b'?' | b'-')) {
                    // Zero repetitions are allowed: go on after the suffix.
                    p = ep + 1;
                    continue;
                }
                return Ok(None);
            }
            match suffix {
                Some(b'?') => {
                    if let Some(end) = self.run(s + 1, ep + 1)? {
                        return Ok(Some(end));
                    }
                    p = ep + 1;
                }
                Some(b'+') => return self.longest(s + 1, p, ep),
                Some(b'*') => return self.longest(s, p, ep),
                Some(b'-') => return self.shortest(s, p, ep),
                _ => {
                    s += 1;
                    p = ep;
                }
            }
        }
    }

    /// `x*` (and `x+` after its first match): as many as possible, then back off.
    fn longest(&mut self, s: usize, p: usize, ep: usize) -> Step {
        let mut n = 0;
        while self.single(s + n, p, ep) {
            self.tick()?;
            n += 1;
        }
        loop {
            if let Some(end) = self.run(s + n, ep + 1)? {
                return Ok(Some(end));
            }
            if n == 0 {
                return Ok(None);
            }
            n -= 1;
        }
    }

    /// `x-`: as few as possible, one more at a time.
    fn shortest(&mut self, mut s: usize, p: usize, ep: usize) -> Step {
        loop {
            if let Some(end) = self.run(s, ep + 1)? {
                return Ok(Some(end));
            }
            if !self.single(s, p, ep) {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn open_capture(&mut self, s: usize, p: usize, slot: Slot) -> Step {
        if self.level >= MAX_CAPTURES {
            return malformed("too many captures");
        }
        self.caps[self.level] = (s, slot);
        self.level += 1;
        let r = self.run(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn close_capture(&mut self, s: usize, p: usize) -> Step {
        let Some(i) = (0..self.level).rev().find(|&i| self.caps[i].1 == Slot::Open) else {
            return malformed("invalid pattern capture");
        };
        self.caps[i].1 = Slot::Closed(s - self.caps[i].0);
        let r = self.run(s, p)?;
        if r.is_none() {
            self.caps[i].1 = Slot::Open;
        }
        Ok(r)
    }

    /// `%bxy` at `p` (pointing at `x`): a balanced run from `x` to its `y`.
    fn balanced(&mut self, s: usize, p: usize) -> Step {
        let (Some(&open), Some(&close)) = (self.pat.get(p), self.pat.get(p + 1)) else {
            return malformed("malformed pattern (missing arguments to '%b')");
        };
        if self.src.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1usize;
        for i in s + 1..self.src.len() {
            self.tick()?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        Ok(None)
    }

    /// `%1`...`%9` inside a pattern: the same text as that closed capture.
    fn back_reference(&mut self, s: usize, digit: u8) -> Step {
        let i = usize::from(digit.wrapping_sub(b'1'));
        if digit == b'0' || i >= self.level || self.caps[i].1 == Slot::Open {
            return malformed(format!("invalid capture index %{}", digit - b'0'));
        }
        let (start, Slot::Closed(len)) = self.caps[i] else {
            // A position capture holds no text to repeat.
            return Ok(None);
        };
        let end = s + len;
        if end <= self.src.len() && self.src[start..start + len] == self.src[s..end] {
            Ok(Some(end))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    /// `string.find(src, pat)` without init: (start, end) 0-based, end exclusive.
    fn find(src: &str, pat: &str) -> Result<Option<(usize, usize)>, PatternError> {
        let (src, pat) = (src.as_bytes(), pat.as_bytes());
        let anchored = pat.first() == Some(&b'^');
        let p0 = usize::from(anchored);
        let stop = never;
        let mut m = Matcher::new(src, pat, &stop);
        for s in 0..=src.len() {
            if let Some(e) = m.match_at(s, p0)? {
                m.captures(s, e, false)?;
                return Ok(Some((s, e)));
            }
            if anchored {
                break;
            }
        }
        Ok(None)
    }

    fn caps(src: &str, pat: &str) -> Vec<String> {
        let stop = never;
        let mut m = Matcher::new(src.as_bytes(), pat.as_bytes(), &stop);
        for s in 0..=src.len() {
            if let Some(e) = m.match_at(s, 0).unwrap() {
                return m
                    .captures(s, e, true)
                    .unwrap()
                    .into_iter()
                    .map(|c| match c {
                        Capture::Text(a, b) => src[a..b].to_owned(),
                        Capture::Position(p) => format!("@{p}"),
                    })
                    .collect();
            }
        }
        vec![]
    }

    #[test]
    fn matches_like_lua() {
        assert_eq!(find("hello world", "o w").unwrap(), Some((4, 7)));
        assert_eq!(find("hello", "l+").unwrap(), Some((2, 4)));
        assert_eq!(find("hello", "^h").unwrap(), Some((0, 1)));
        assert_eq!(find("hello", "^e").unwrap(), None);
        assert_eq!(find("hello", "o$").unwrap(), Some((4, 5)));
        assert_eq!(find("a$b", "$b").unwrap(), Some((1, 3)));
        assert_eq!(find("abc", "").unwrap(), Some((0, 0)));
        assert_eq!(find("x = 12.5;", "%d+%.?%d*").unwrap(), Some((4, 8)));
        assert_eq!(find("THE (quick) fox", "%((%a+)%)").unwrap(), Some((4, 11)));
        assert_eq!(find("f(a(b)c) d", "%b()").unwrap(), Some((1, 8)));
        assert_eq!(find("THE (quick) fox", "%f[%a]%a+%f[%A]").unwrap(), Some((0, 3)));
        assert_eq!(find("aaab", "a-b").unwrap(), Some((0, 4)));
        assert_eq!(find("]x", "[]]").unwrap(), Some((0, 1)));
        assert_eq!(find("a-b", "[%-]").unwrap(), Some((1, 2)));
        assert_eq!(find("q", "[^%a]").unwrap(), None);
        assert_eq!(find("k7", "[a-z][0-9]").unwrap(), Some((0, 2)));
        assert_eq!(find("\x0b", "%s").unwrap(), Some((0, 1)));
        assert_eq!(caps("key = value", "(%w+)%s*=%s*(%w+)"), ["key", "value"]);
        assert_eq!(caps("hello", "()ll()"), ["@3", "@5"]);
        assert_eq!(caps("say 'hi' now", "(['\"])(.-)%1"), ["'", "hi"]);
        assert_eq!(caps("2024-01-02", "(%d+)-(%d+)-(%d+)"), ["2024", "01", "02"]);
        assert_eq!(caps("abc", "b"), ["b"]);
    }

    #[test]
    fn malformed_patterns_use_luas_words() {
        let err = |p: &str| match find("abc", p) {
            Err(PatternError::Malformed(m)) => m,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(err("%"), "malformed pattern (ends with '%')");
        assert_eq!(err("[a"), "malformed pattern (missing ']')");
        assert_eq!(err("%f"), "missing '[' after '%f' in pattern");
        assert_eq!(err("(a"), "unfinished capture");
        assert_eq!(err("a)"), "invalid pattern capture");
        assert_eq!(err("%b"), "malformed pattern (missing arguments to '%b')");
        assert_eq!(err("(a)%2"), "invalid capture index %2");
        assert_eq!(err(&"(".repeat(33)), "too many captures");
        let deep = "a".repeat(300);
        assert_eq!(
            find(&deep, &"a?".repeat(300)),
            Err(PatternError::Malformed("pattern too complex".into()))
        );
    }

    #[test]
    fn a_pathological_pattern_stops_when_asked() {
        let subject = "a".repeat(100_000);
        let calls = std::cell::Cell::new(0u32);
        let stop = || {
            calls.set(calls.get() + 1);
            calls.get() > 10
        };
        let mut m = Matcher::new(subject.as_bytes(), b".-.-.-.-b", &stop);
        let started = std::time::Instant::now();
        let mut result = Ok(None);
        for s in 0..=subject.len() {
            result = m.match_at(s, 0);
            if !matches!(result, Ok(None)) {
                break;
            }
        }
        assert_eq!(result, Err(PatternError::Stopped));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
