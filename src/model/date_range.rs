use std::fmt;

use chrono::{Days, NaiveDate};

use super::InvalidField;

/// Parses a strict `YYYY-MM-DD` calendar date (no times, no short forms).
pub fn parse_date(field: &'static str, raw: &str) -> Result<NaiveDate, InvalidField> {
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return Err(InvalidField::new(
            field,
            format!("{raw:?} is not a date; use YYYY-MM-DD"),
        ));
    }
    // The shape is checked above, so the parts are digits: no format-string parsing per call.
    let num = |r: std::ops::Range<usize>| raw[r].parse::<u32>().unwrap_or(0);
    NaiveDate::from_ymd_opt(num(0..4) as i32, num(5..7), num(8..10))
        .ok_or_else(|| InvalidField::new(field, format!("{raw:?} is not a calendar date (YYYY-MM-DD)")))
}

/// An inclusive range of trading dates with `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateRange {
    start: NaiveDate,
    end: NaiveDate,
}

impl DateRange {
    pub fn new(start: NaiveDate, end: NaiveDate) -> Result<Self, InvalidField> {
        if start > end {
            return Err(InvalidField::new("start", format!("start {start} is after end {end}")));
        }
        Ok(Self { start, end })
    }

    /// Applies the request rules (README, "HTTP API"): both missing means yesterday..yesterday,
    /// a missing `end` means today, and `end` alone is refused because a range
    /// with an implied start would silently cover an unknown span.
    pub fn from_request(start: Option<&str>, end: Option<&str>, today: NaiveDate) -> Result<Self, InvalidField> {
        match (start, end) {
            (None, None) => {
                let yesterday = today.checked_sub_days(Days::new(1)).unwrap_or(today);
                Self::new(yesterday, yesterday)
            }
            (Some(s), None) => Self::new(parse_date("start", s)?, today),
            (Some(s), Some(e)) => Self::new(parse_date("start", s)?, parse_date("end", e)?),
            (None, Some(_)) => Err(InvalidField::new(
                "start",
                "start is required when end is given (YYYY-MM-DD)",
            )),
        }
    }

    /// Days covered, both ends included.
    pub fn days(&self) -> u64 {
        (self.end - self.start).num_days().unsigned_abs() + 1
    }

    /// Refuses a range longer than `max_days` (`max_range_days`): a century
    /// of daily bars is megabytes per request, to build, cache and send.
    pub fn check_span(&self, max_days: u32) -> Result<(), InvalidField> {
        let days = self.days();
        if days > u64::from(max_days) {
            return Err(InvalidField::new(
                "start",
                format!(
                    "the range {self} covers {days} days; the limit is {max_days} days (max_range_days); ask for a shorter range"
                ),
            ));
        }
        Ok(())
    }

    pub fn start(&self) -> NaiveDate {
        self.start
    }

    pub fn end(&self) -> NaiveDate {
        self.end
    }

    pub fn contains(&self, d: NaiveDate) -> bool {
        self.start <= d && d <= self.end
    }
}

impl fmt::Display for DateRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// Appends `YYYY-MM-DD` to `out` (see [`ymd`]); cache keys, stored documents
/// and the hit-path shape check all write dates on every request.
pub fn push_ymd(out: &mut String, d: chrono::NaiveDate) {
    match ymd(d) {
        // ymd writes ASCII digits and dashes only.
        Some(b) => out.push_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => {
            use std::fmt::Write as _;
            let _ = write!(out, "{d}");
        }
    }
}

/// `YYYY-MM-DD` as a new string, through [`push_ymd`].
pub fn ymd_string(d: chrono::NaiveDate) -> String {
    let mut s = String::with_capacity(10);
    push_ymd(&mut s, d);
    s
}

/// `YYYY-MM-DD` written digit by digit: `date.format` runs once per bar and
/// every stored bar serialises its date, and chrono's formatter machinery
/// (a `write_char` per character) showed in the plugin-overhead profile.
/// Years outside 0..=9999 (which Display writes with a sign) give `None`.
pub fn ymd(d: chrono::NaiveDate) -> Option<[u8; 10]> {
    use chrono::Datelike;
    let y = d.year();
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (m, day) = (d.month(), d.day());
    let digit = |n: u32| b'0' + (n % 10) as u8;
    let y = y as u32;
    Some([
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
        b'-',
        digit(day / 10),
        digit(day),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_range_longer_than_the_limit_is_refused_naming_it() {
        let r = DateRange::new(d("1900-01-01"), d("2100-12-31")).unwrap();
        let e = r.check_span(36525).unwrap_err();
        assert_eq!(e.field, "start");
        assert!(e.message.contains("36525 days (max_range_days)"), "{}", e.message);
        let r = DateRange::new(d("2024-01-01"), d("2024-01-01")).unwrap();
        assert_eq!(r.days(), 1);
        assert!(r.check_span(1).is_ok());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let today = d("2026-11-25");
        let r = DateRange::from_request(None, None, today).unwrap();
        assert_eq!((r.start(), r.end()), (d("2026-11-24"), d("2026-11-24")));
        let r = DateRange::from_request(Some("2026-11-01"), None, today).unwrap();
        assert_eq!((r.start(), r.end()), (d("2026-11-01"), today));
    }

    #[test]
    fn rejects_bad_dates_naming_the_field() {
        let today = d("2026-11-25");
        let cases = [
            (Some("2024-1-01"), Some("2024-01-31"), "start"),
            (Some("2024-01-01"), Some("2024-02-30"), "end"),
            (Some("2024-02-01"), Some("2024-01-31"), "start"),
            (Some("20240101"), None, "start"),
            (None, Some("2024-01-31"), "start"),
            (Some("2024-01-01"), Some("2024-01-31T00:00"), "end"),
            (Some("+024-01-01"), Some("2024-01-31"), "start"),
        ];
        for (s, e, field) in cases {
            let err = DateRange::from_request(s, e, today).unwrap_err();
            assert_eq!(err.field, field, "{s:?} {e:?}");
        }
    }

    #[test]
    fn single_day_range_is_fine() {
        let r = DateRange::from_request(Some("2024-01-02"), Some("2024-01-02"), d("2026-01-01"));
        assert!(r.is_ok());
    }

    #[test]
    fn writes_dates_as_display_does() {
        for (y, m, d) in [(2024, 1, 2), (1999, 12, 31), (7, 3, 9), (9999, 12, 31), (0, 1, 1)] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            assert_eq!(
                ymd(date).map(|b| String::from_utf8(b.to_vec()).unwrap()),
                Some(date.to_string())
            );
        }
        assert_eq!(ymd(NaiveDate::from_ymd_opt(-1, 1, 1).unwrap()), None);
        assert_eq!(ymd(NaiveDate::from_ymd_opt(10000, 1, 1).unwrap()), None);
    }

    #[test]
    fn pushes_dates_as_display_does() {
        for d in [
            NaiveDate::from_ymd_opt(2024, 2, 29).unwrap(),
            NaiveDate::from_ymd_opt(-5, 1, 1).unwrap(),
        ] {
            assert_eq!(ymd_string(d), d.to_string());
        }
    }
}
