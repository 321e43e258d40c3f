use std::fmt;

use super::InvalidField;

/// A ticker symbol as the README's request rules ("HTTP API") allow it: `^[A-Za-z0-9.^=_-]{1,32}$`, upper-cased.
///
/// Upper-casing happens here so `aapl` and `AAPL` share one cache entry.
/// The allowed alphabet excludes `:` and `*`, so a ticker can never reach
/// outside its slot of a cache key or act as a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticker(String);

impl Ticker {
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidField::new(
                "ticker",
                format!(
                    "must be 1 to {} characters of A-Z a-z 0-9 . ^ = _ - (got {} characters)",
                    Self::MAX_LEN,
                    raw.len()
                ),
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '^' | '=' | '_' | '-')))
        {
            return Err(InvalidField::new(
                "ticker",
                format!("character {bad:?} is not allowed; use A-Z a-z 0-9 . ^ = _ -"),
            ));
        }
        Ok(Self(raw.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ticker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_cases_and_accepts_the_spec_alphabet() {
        assert_eq!(Ticker::parse("aapl").unwrap().as_str(), "AAPL");
        assert_eq!(Ticker::parse("^gspc").unwrap().as_str(), "^GSPC");
        assert_eq!(Ticker::parse("eurusd=x").unwrap().as_str(), "EURUSD=X");
        assert_eq!(Ticker::parse("brk-b.us_1").unwrap().as_str(), "BRK-B.US_1");
        assert!(Ticker::parse(&"A".repeat(32)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        for bad in ["", "AAPL:1", "A*", "A B", "a/b", "é", "{AAPL}", "A\n"] {
            let err = Ticker::parse(bad).unwrap_err();
            assert_eq!(err.field, "ticker", "{bad:?}");
        }
        assert!(Ticker::parse(&"A".repeat(33)).is_err());
    }
}
