//! An upstream budget as users write it (README "Rate limits"): `"10/s"`, `"5/min"`,
//! `"100/h"`, `"25/day"`, or a list of them that must all hold.
//!
//! Parsed once where it is declared (plugin file or `[plugins.<name>]`), so
//! the admission code only ever sees positive counts and known periods.

use std::fmt;
use std::time::Duration;

/// The period of one rate: a sliding window of this length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
            Period::Day => 86400,
        })
    }

    /// The unit as written in canonical form (`s`, `min`, `h`, `day`).
    pub fn unit(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "min",
            Period::Hour => "h",
            Period::Day => "day",
        }
    }

    fn parse(unit: &str) -> Option<Self> {
        Some(match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Period::Second,
            "min" | "minute" => Period::Minute,
            "h" | "hour" => Period::Hour,
            "d" | "day" => Period::Day,
            _ => return None,
        })
    }
}

/// At most `max` calls start in any sliding window of one `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub max: u32,
    pub period: Period,
}

/// Largest count accepted in one rate: beyond this a limit is no limit, and
/// the window of a sorted set in Redis would grow without use.
pub const MAX_RATE_COUNT: u32 = 100_000;

const FORM: &str = "a rate such as \"10/s\", \"5/min\", \"100/h\" or \"25/day\"";

impl Rate {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (n, unit) = raw.split_once('/').ok_or_else(|| format!("{raw:?} is not {FORM}"))?;
        let max: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?}: {:?} is not a whole number; expected {FORM}", n.trim()))?;
        if max == 0 || max > MAX_RATE_COUNT {
            return Err(format!(
                "{raw:?}: the count must be 1 to {MAX_RATE_COUNT} (to stop a plugin, remove it)"
            ));
        }
        let period = Period::parse(unit)
            .ok_or_else(|| format!("{raw:?}: unknown period {:?}; use s, min, h or day", unit.trim()))?;
        Ok(Rate { max, period })
    }

    /// The window length in milliseconds.
    pub fn window_ms(self) -> u64 {
        self.period.duration().as_millis() as u64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.max, self.period.unit())
    }
}

/// Every rate of one plugin; all must hold. Empty means "no limit".
/// Kept sorted by period and one rate per period (the smallest count wins),
/// so equal limits written differently compare equal and the Redis keys
/// (one per period) are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RateLimit(Vec<Rate>);

impl RateLimit {
    /// One rate string.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::from_rates(vec![Rate::parse(raw)?])
    }

    /// A list of rate strings (an empty list is "no limit").
    pub fn parse_list<S: AsRef<str>>(raw: &[S]) -> Result<Self, String> {
        let rates = raw
            .iter()
            .enumerate()
            .map(|(i, r)| Rate::parse(r.as_ref()).map_err(|m| format!("[{}]: {m}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_rates(rates)
    }

    fn from_rates(mut rates: Vec<Rate>) -> Result<Self, String> {
        rates.sort_by_key(|r| (r.period, r.max));
        rates.dedup_by_key(|r| r.period);
        Ok(Self(rates))
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn rates(&self) -> &[Rate] {
        &self.0
    }

    /// As users write it: `["5/min", "25/day"]`.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Rate::to_string).collect()
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.to_strings().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_period_and_alias() {
        for (raw, max, period) in [
            ("10/s", 10, Period::Second),
            (" 3 / sec ", 3, Period::Second),
            ("5/min", 5, Period::Minute),
            ("5/minute", 5, Period::Minute),
            ("100/h", 100, Period::Hour),
            ("100/HOUR", 100, Period::Hour),
            ("25/day", 25, Period::Day),
            ("25/d", 25, Period::Day),
        ] {
            assert_eq!(Rate::parse(raw), Ok(Rate { max, period }), "{raw}");
        }
    }

    #[test]
    fn rejects_with_a_message_that_says_what_is_wrong() {
        for (raw, needle) in [
            ("10", "is not a rate"),
            ("x/s", "not a whole number"),
            ("-1/s", "not a whole number"),
            ("1.5/s", "not a whole number"),
            ("0/s", "1 to 100000"),
            ("100001/s", "1 to 100000"),
            ("10/week", "unknown period"),
            ("10/", "unknown period"),
        ] {
            let e = Rate::parse(raw).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
        }
        let e = RateLimit::parse_list(&["5/min", "nope"]).unwrap_err();
        assert!(e.starts_with("[2]:"), "{e}");
    }

    #[test]
    fn lists_are_sorted_and_one_rate_per_period() {
        let l = RateLimit::parse_list(&["25/day", "5/min", "7/min"]).unwrap();
        assert_eq!(l.to_strings(), ["5/min", "25/day"]);
        assert_eq!(l.to_string(), "5/min, 25/day");
        assert!(RateLimit::parse_list::<&str>(&[]).unwrap().is_empty());
        assert_eq!(RateLimit::default().to_string(), "none");
        assert_eq!(Rate::parse("2/h").unwrap().window_ms(), 3_600_000);
    }
}
