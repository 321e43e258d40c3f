//! What is cached (README, "Cache behaviour"): for one (plugin, cache_version, TICKER), the
//! bars fetched, one per date, and their **coverage**: the date intervals the
//! plugin was asked for (or declared), each with the time it was fetched.
//!
//! A date inside a covered interval without a bar is known-empty (a weekend,
//! a holiday). Bars are kept as the JSON text the answer writes, so a hit
//! copies bytes instead of serialising numbers again.
//!
//! Coverage travels as text, `from:to:fetched_ms:kind` items separated by a
//! space (`from`/`to` in days since 1970-01-01, `kind` `d` for an answer with
//! data, `e` for an empty one), because the Redis write script merges it
//! with plain Lua patterns and integer arithmetic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use chrono::NaiveDate;

use crate::model::{DateRange, push_ymd};

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

/// Days since 1970-01-01 (negative before).
pub fn day_of(d: NaiveDate) -> i64 {
    (d - EPOCH).num_days()
}

pub fn date_of(day: i64) -> Option<NaiveDate> {
    EPOCH.checked_add_signed(chrono::TimeDelta::try_days(day)?)
}

/// One fetched interval: the plugin was asked for (or declared) `from..=to`
/// at `fetched_ms`; `empty` when that answer had no bar at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub fetched_ms: u64,
    pub empty: bool,
}

impl Span {
    pub fn range(&self) -> DateRange {
        // from <= to holds for every span built here or parsed.
        DateRange::new(self.from, self.to).unwrap_or_else(|_| DateRange::new(self.to, self.to).expect("one day"))
    }
}

/// A stored value that is not what tickerd writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt cached {what}: {detail}")]
pub struct Corrupt {
    pub what: &'static str,
    pub detail: String,
}

fn corrupt(what: &'static str, detail: impl Into<String>) -> Corrupt {
    Corrupt {
        what,
        detail: detail.into(),
    }
}

/// Covered intervals, sorted by start, never overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage(Vec<Span>);

impl Coverage {
    pub fn spans(&self) -> &[Span] {
        &self.0
    }

    /// Reads the stored text; anything else than what [`Coverage::encode`]
    /// writes (overlaps and inverted intervals included) is refused whole.
    pub fn parse(text: &[u8]) -> Result<Self, Corrupt> {
        let text = std::str::from_utf8(text).map_err(|_| corrupt("coverage", "not UTF-8"))?;
        let mut spans = Vec::new();
        for item in text.split(' ').filter(|s| !s.is_empty()) {
            let mut parts = item.split(':');
            let mut num = || parts.next().and_then(|p| p.parse::<i64>().ok());
            let (Some(from), Some(to), Some(fetched)) = (num(), num(), num()) else {
                return Err(corrupt(
                    "coverage",
                    format!("item {item:?} is not from:to:fetched_ms:kind"),
                ));
            };
            let empty = match parts.next() {
                Some("d") => false,
                Some("e") => true,
                _ => return Err(corrupt("coverage", format!("item {item:?} has no kind d or e"))),
            };
            let (Some(from), Some(to)) = (date_of(from), date_of(to)) else {
                return Err(corrupt("coverage", format!("item {item:?} is out of the calendar")));
            };
            if from > to || fetched < 0 || parts.next().is_some() {
                return Err(corrupt("coverage", format!("item {item:?} is malformed")));
            }
            spans.push(Span {
                from,
                to,
                fetched_ms: fetched as u64,
                empty,
            });
        }
        if spans.windows(2).any(|w| w[0].to >= w[1].from) {
            return Err(corrupt("coverage", "intervals overlap or are not sorted"));
        }
        Ok(Self(spans))
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 32);
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(
                out,
                "{}:{}:{}:{}",
                day_of(s.from),
                day_of(s.to),
                s.fetched_ms,
                if s.empty { 'e' } else { 'd' }
            );
        }
        out
    }

    /// Removes `range` from every interval (what the write script and a
    /// range invalidation do).
    pub fn remove(&mut self, range: DateRange) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for s in self.0.drain(..) {
            if s.to < range.start() || s.from > range.end() {
                out.push(s);
                continue;
            }
            if s.from < range.start()
                && let Some(before) = range.start().pred_opt()
            {
                out.push(Span { to: before, ..s });
            }
            if s.to > range.end()
                && let Some(after) = range.end().succ_opt()
            {
                out.push(Span { from: after, ..s });
            }
        }
        self.0 = out;
    }

    /// Replaces whatever covered `span`'s dates by `span`.
    pub fn overlay(&mut self, span: Span) {
        self.remove(span.range());
        let at = self.0.partition_point(|s| s.from < span.from);
        self.0.insert(at, span);
    }

    /// The part inside `range`.
    pub fn clip(&self, range: DateRange) -> Coverage {
        Coverage(
            self.0
                .iter()
                .filter(|s| s.to >= range.start() && s.from <= range.end())
                .map(|s| Span {
                    from: s.from.max(range.start()),
                    to: s.to.min(range.end()),
                    ..*s
                })
                .collect(),
        )
    }

    /// The interval that covers `d`, if any.
    pub fn span_of(&self, d: NaiveDate) -> Option<&Span> {
        let at = self.0.partition_point(|s| s.to < d);
        self.0.get(at).filter(|s| s.from <= d)
    }
}

/// When a cached date goes stale (README, "Cache behaviour").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// A date is settled once it is this many whole days before the day it
    /// was fetched.
    pub settle_days: i64,
    pub settled_ttl: Duration,
    /// The plugin's `ttl`: how long the live edge stays fresh.
    pub ttl: Duration,
    /// Caps the life of an answer that had no bar at all (`negative_ttl`).
    pub negative_ttl: Duration,
}

impl Freshness {
    pub fn new(settle: Duration, settled_ttl: Duration, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            settle_days: settle.as_secs().div_ceil(86_400) as i64,
            settled_ttl,
            ttl,
            negative_ttl,
        }
    }

    /// Until when (unix ms) the copy of `date` fetched in `span` is fresh.
    /// A copy fetched while its date was still on the live edge lives for
    /// `ttl` only, even once the date has settled: it may have been an
    /// intraday bar, so it is fetched once more after settling.
    pub fn fresh_until(&self, date: NaiveDate, span: &Span) -> u64 {
        self.fresh_until_settled(span, day_of(date) < self.live_from(span))
    }

    /// The first day (days since 1970-01-01) that was still on the live
    /// edge when `span` was fetched: earlier days had settled.
    pub fn live_from(&self, span: &Span) -> i64 {
        (span.fetched_ms / 86_400_000) as i64 - self.settle_days
    }

    /// Until when (unix ms) a date of `span` is fresh, given whether it had
    /// settled when fetched.
    pub fn fresh_until_settled(&self, span: &Span, settled: bool) -> u64 {
        let mut life = if settled { self.settled_ttl } else { self.ttl };
        if span.empty {
            life = life.min(self.negative_ttl);
        }
        span.fetched_ms.saturating_add(life.as_millis() as u64)
    }

    /// How long a stored series is worth keeping at all: the longest any of
    /// its dates can be fresh, plus the stale-if-error window.
    pub fn keep_for(&self, stale_if_error: Duration) -> Duration {
        self.settled_ttl.max(self.ttl) + stale_if_error
    }
}

/// What one store read returned: coverage, bars and meta of one series,
/// complete inside the range that was read (and only there).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub coverage: Coverage,
    pub bars: BTreeMap<NaiveDate, Bytes>,
    /// The `meta` object of the latest fetch, as JSON text.
    pub meta: Option<Bytes>,
}

/// One plugin answer as it is stored: its coverage interval, its bars
/// (already checked against the output contract and serialised), its meta.
#[derive(Debug, Clone)]
pub struct Write {
    pub span: Span,
    pub bars: Vec<(NaiveDate, Bytes)>,
    pub meta: Option<Bytes>,
}

impl Write {
    /// Bytes this write stores (the bound on stored answers counts these).
    pub fn payload_bytes(&self) -> usize {
        self.bars.iter().map(|(_, b)| b.len() + 12).sum::<usize>() + self.meta.as_ref().map_or(0, |m| m.len())
    }

    /// Dates of the span that have no bar in this answer: their old bars,
    /// if any, must go.
    pub fn dates_without_bars(&self) -> Vec<NaiveDate> {
        let mut out = Vec::new();
        let mut bars = self.bars.iter().map(|(d, _)| *d).peekable();
        let mut d = self.span.from;
        while d <= self.span.to {
            while bars.peek().is_some_and(|b| *b < d) {
                bars.next();
            }
            if bars.peek() != Some(&d) {
                out.push(d);
            }
            match d.succ_opt() {
                Some(n) => d = n,
                None => break,
            }
        }
        out
    }
}

impl Snapshot {
    /// Applies a write, as the Redis script does: the span replaces what
    /// covered its dates, its bars replace every bar of those dates.
    pub fn apply(&mut self, w: &Write) {
        self.coverage.overlay(w.span);
        let stale: Vec<NaiveDate> = self.bars.range(w.span.from..=w.span.to).map(|(d, _)| *d).collect();
        for d in stale {
            self.bars.remove(&d);
        }
        for (d, b) in &w.bars {
            self.bars.insert(*d, b.clone());
        }
        if w.meta.is_some() {
            self.meta = w.meta.clone();
        }
    }

    /// Forgets coverage and bars of `range`.
    pub fn remove(&mut self, range: DateRange) {
        self.coverage.remove(range);
        let gone: Vec<NaiveDate> = self.bars.range(range.start()..=range.end()).map(|(d, _)| *d).collect();
        for d in gone {
            self.bars.remove(&d);
        }
    }

    /// The part inside `range`.
    pub fn clip(&self, range: DateRange) -> Snapshot {
        Snapshot {
            coverage: self.coverage.clip(range),
            bars: self
                .bars
                .range(range.start()..=range.end())
                .map(|(d, b)| (*d, b.clone()))
                .collect(),
            meta: self.meta.clone(),
        }
    }

    /// Takes `other`'s view of `window` (newer), keeping ours elsewhere.
    pub fn overlay(&mut self, window: DateRange, other: &Snapshot) {
        self.remove(window);
        for s in other.coverage.clip(window).spans() {
            self.coverage.overlay(*s);
        }
        for (d, b) in other.bars.range(window.start()..=window.end()) {
            self.bars.insert(*d, b.clone());
        }
        if other.meta.is_some() {
            self.meta = other.meta.clone();
        }
    }

    /// Approximate bytes held, for the memory layer's byte bound.
    pub fn weight(&self) -> usize {
        64 + self.coverage.spans().len() * 32
            + self.bars.values().map(|b| b.len() + 48).sum::<usize>()
            + self.meta.as_ref().map_or(0, |m| m.len())
    }
}

/// The hash field of one date's bar: `YYYY-MM-DD`.
pub fn bar_field(d: NaiveDate) -> String {
    let mut s = String::with_capacity(10);
    push_ymd(&mut s, d);
    s
}

/// Whether stored bar text is a bar of `date` as tickerd writes it: a JSON
/// object starting with its date, valid UTF-8. Cheap enough for every bar of
/// every hit; the contract was checked before it was first stored.
pub fn bar_is_sound(date: NaiveDate, text: &[u8]) -> bool {
    let Some(rest) = text.strip_prefix(b"{\"date\":\"") else {
        return false;
    };
    let Some(ymd) = crate::model::ymd(date) else {
        return false;
    };
    // Bars are ASCII in practice, and the ASCII check is several times
    // cheaper than full UTF-8 validation (it showed in the hit-path profile).
    rest.starts_with(&ymd)
        && rest.get(10) == Some(&b'"')
        && text.ends_with(b"}")
        && (text.is_ascii() || std::str::from_utf8(text).is_ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    pub fn r(a: &str, b: &str) -> DateRange {
        DateRange::new(d(a), d(b)).unwrap()
    }

    fn span(a: &str, b: &str, t: u64) -> Span {
        Span {
            from: d(a),
            to: d(b),
            fetched_ms: t,
            empty: false,
        }
    }

    #[test]
    fn coverage_round_trips_and_refuses_garbage() {
        let mut c = Coverage::default();
        c.overlay(span("2024-01-01", "2024-01-31", 5));
        c.overlay(Span {
            empty: true,
            ..span("2024-03-01", "2024-03-02", 7)
        });
        let text = c.encode();
        assert_eq!(text, "19723:19753:5:d 19783:19784:7:e");
        assert_eq!(Coverage::parse(text.as_bytes()).unwrap(), c);
        assert_eq!(Coverage::parse(b"").unwrap(), Coverage::default());
        for bad in [
            &b"x"[..],
            b"1:2:3",
            b"1:2:3:q",
            b"2:1:3:d",
            b"1:5:3:d 4:6:3:d",
            b"1:2:-3:d",
            b"1:2:3:d:9",
            b"\xff",
        ] {
            assert!(Coverage::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn overlay_replaces_only_the_dates_it_covers() {
        let mut c = Coverage::default();
        c.overlay(span("2024-01-01", "2024-01-31", 1));
        c.overlay(span("2024-01-10", "2024-02-10", 2));
        let got: Vec<_> = c.spans().iter().map(|s| (s.from, s.to, s.fetched_ms)).collect();
        assert_eq!(
            got,
            vec![
                (d("2024-01-01"), d("2024-01-09"), 1),
                (d("2024-01-10"), d("2024-02-10"), 2)
            ]
        );
        c.remove(r("2024-01-05", "2024-01-12"));
        let got: Vec<_> = c.spans().iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(
            got,
            vec![(d("2024-01-01"), d("2024-01-04")), (d("2024-01-13"), d("2024-02-10"))]
        );
        assert_eq!(c.span_of(d("2024-01-13")).map(|s| s.fetched_ms), Some(2));
        assert!(c.span_of(d("2024-01-07")).is_none());
        assert!(c.span_of(d("2023-12-31")).is_none());
        assert!(c.span_of(d("2024-02-11")).is_none());
        let clipped = c.clip(r("2024-01-03", "2024-01-20"));
        let got: Vec<_> = clipped.spans().iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(
            got,
            vec![(d("2024-01-03"), d("2024-01-04")), (d("2024-01-13"), d("2024-01-20"))]
        );
    }

    #[test]
    fn settled_dates_live_long_the_live_edge_short_empty_answers_shortest() {
        let h = Duration::from_secs(3600);
        let f = Freshness::new(Duration::from_secs(3 * 86400), 30 * 24 * h, h, Duration::from_secs(60));
        let fetched = day_of(d("2024-03-10")) as u64 * 86_400_000 + 12 * 3_600_000;
        let s = span("2024-01-01", "2024-03-10", fetched);
        // 2024-03-06 is before 03-10 minus 3 days: settled.
        assert_eq!(f.fresh_until(d("2024-03-06"), &s), fetched + 30 * 24 * 3_600_000);
        // 03-07 is not (today - settle is the first live date).
        assert_eq!(f.fresh_until(d("2024-03-07"), &s), fetched + 3_600_000);
        let e = Span { empty: true, ..s };
        assert_eq!(f.fresh_until(d("2024-01-05"), &e), fetched + 60_000);
    }

    #[test]
    fn a_write_replaces_the_bars_of_its_span_and_names_dates_without_bars() {
        let b = |s: &str| Bytes::from(format!("{{\"date\":\"{s}\"}}"));
        let mut snap = Snapshot::default();
        snap.apply(&Write {
            span: span("2024-01-01", "2024-01-05", 1),
            bars: vec![(d("2024-01-02"), b("2024-01-02")), (d("2024-01-03"), b("2024-01-03"))],
            meta: Some(Bytes::from_static(b"{}")),
        });
        let w = Write {
            span: span("2024-01-03", "2024-01-04", 2),
            bars: vec![(d("2024-01-04"), b("2024-01-04"))],
            meta: None,
        };
        assert_eq!(w.dates_without_bars(), vec![d("2024-01-03")]);
        snap.apply(&w);
        assert_eq!(
            snap.bars.keys().copied().collect::<Vec<_>>(),
            vec![d("2024-01-02"), d("2024-01-04")]
        );
        assert_eq!(snap.meta.as_deref(), Some(&b"{}"[..]));
        assert!(bar_is_sound(d("2024-01-04"), &b("2024-01-04")));
        assert!(!bar_is_sound(d("2024-01-05"), &b("2024-01-04")));
        assert!(!bar_is_sound(d("2024-01-04"), b"{\"date\":\"2024-01-04\""));
        assert!(!bar_is_sound(d("2024-01-04"), b"garbage"));
        // Non-ASCII text is fine when it is UTF-8, refused when it is not.
        assert!(bar_is_sound(
            d("2024-01-04"),
            "{\"date\":\"2024-01-04\",\"note\":\"é\"}".as_bytes()
        ));
        assert!(!bar_is_sound(
            d("2024-01-04"),
            b"{\"date\":\"2024-01-04\",\"note\":\"\xff\"}"
        ));

        let mut other = Snapshot::default();
        other.apply(&Write {
            span: span("2024-01-01", "2024-01-02", 9),
            bars: vec![],
            meta: None,
        });
        snap.overlay(r("2024-01-01", "2024-01-02"), &other);
        assert!(!snap.bars.contains_key(&d("2024-01-02")));
        assert_eq!(snap.coverage.span_of(d("2024-01-01")).map(|s| s.fetched_ms), Some(9));
        assert_eq!(snap.coverage.span_of(d("2024-01-04")).map(|s| s.fetched_ms), Some(2));
    }
}
