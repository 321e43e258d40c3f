//! The pure part of the pipeline (README, "Cache behaviour"): which dates of a request are
//! fresh, which interval to ask the plugin for, whether a failed fetch can
//! be answered stale, and how the answer is put together from a snapshot.
//! No I/O here: unit tests drive it with hand-made snapshots.

use bytes::Bytes;
use chrono::NaiveDate;

use crate::cache::series::{Freshness, Snapshot, date_of, day_of};
use crate::model::DateRange;

fn days(range: DateRange) -> impl Iterator<Item = NaiveDate> {
    range.start().iter_days().take_while(move |d| *d <= range.end())
}

/// The smallest interval spanning every date of `range` that is missing or
/// stale at `now`; `None` when every date is covered and fresh (a hit).
///
/// Worked out span by span, not date by date: every hit runs it, and a
/// span's dates fall in at most two runs of one freshness each (settled
/// history, then the live edge), so a year-long range costs a few
/// comparisons instead of 365 date lookups.
pub fn gap(snap: &Snapshot, range: DateRange, fresh: &Freshness, now: u64) -> Option<DateRange> {
    let (start, end) = (day_of(range.start()), day_of(range.end()));
    let (mut first, mut last): (Option<i64>, Option<i64>) = (None, None);
    let mut bad = |a: i64, b: i64| {
        if a <= b {
            first.get_or_insert(a);
            last = Some(b);
        }
    };
    // The first day not yet accounted for.
    let mut next = start;
    for s in snap.coverage.spans() {
        let (from, to) = (day_of(s.from).max(start), day_of(s.to).min(end));
        if to < next {
            continue;
        }
        if from > end {
            break;
        }
        bad(next, from - 1);
        // Days before `live` are settled for this span's fetch.
        let live = fresh.live_from(s).clamp(from, to + 1);
        if fresh.fresh_until_settled(s, true) <= now {
            bad(from, live - 1);
        }
        if fresh.fresh_until_settled(s, false) <= now {
            bad(live, to);
        }
        next = to + 1;
    }
    bad(next, end);
    DateRange::new(date_of(first?)?, date_of(last?)?).ok()
}

/// Whether every date of `range` can be served after a failed fetch: each is
/// covered, and fresh or stale for less than `window` (stale-if-error).
pub fn stale_servable(snap: &Snapshot, range: DateRange, fresh: &Freshness, now: u64, window_ms: u64) -> bool {
    window_ms > 0
        && days(range).all(|d| {
            snap.coverage
                .span_of(d)
                .is_some_and(|s| fresh.fresh_until(d, s).saturating_add(window_ms) > now)
        })
}

/// An answer's bars and the figures of its `cache` object.
#[derive(Debug, Clone, Default)]
pub struct Assembled {
    pub bars: Vec<Bytes>,
    /// Bars served from the cache (not from this answer's fetch).
    pub from_cache: usize,
    /// Fetch time of the oldest bar served from the cache.
    pub oldest_cached_ms: Option<u64>,
    /// When the first date of the range goes stale.
    pub first_stale_ms: Option<u64>,
    /// Fetch time of the oldest date of the range.
    pub oldest_fetch_ms: Option<u64>,
}

/// Puts the answer for `range` together from `snap`; `fetched` is what this
/// answer's own plugin call covered (bars there are not "from the cache").
pub fn assemble(snap: &Snapshot, range: DateRange, fresh: &Freshness, fetched: Option<DateRange>) -> Assembled {
    let mut a = Assembled {
        bars: Vec::with_capacity(snap.bars.len()),
        ..Assembled::default()
    };
    for (d, b) in snap.bars.range(range.start()..=range.end()) {
        a.bars.push(b.clone());
        if fetched.is_some_and(|f| f.contains(*d)) {
            continue;
        }
        a.from_cache += 1;
        if let Some(s) = snap.coverage.span_of(*d) {
            a.oldest_cached_ms = Some(a.oldest_cached_ms.map_or(s.fetched_ms, |o| o.min(s.fetched_ms)));
        }
    }
    for s in snap.coverage.clip(range).spans() {
        // Within a span the live dates (the later ones) go stale first.
        let until = fresh.fresh_until(s.to, s).min(fresh.fresh_until(s.from, s));
        a.first_stale_ms = Some(a.first_stale_ms.map_or(until, |o| o.min(until)));
        a.oldest_fetch_ms = Some(a.oldest_fetch_ms.map_or(s.fetched_ms, |o| o.min(s.fetched_ms)));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::series::tests::{d, r};
    use crate::cache::series::{Span, Write, date_of, day_of};
    use std::time::Duration;

    const H: u64 = 3_600_000;

    fn fresh() -> Freshness {
        Freshness::new(
            Duration::from_secs(3 * 86400),
            Duration::from_secs(30 * 86400),
            Duration::from_secs(3600),
            Duration::from_secs(60),
        )
    }

    /// Noon UTC of a date, in ms.
    fn noon(s: &str) -> u64 {
        day_of(d(s)) as u64 * 86_400_000 + 12 * H
    }

    fn bar(s: &str) -> (NaiveDate, Bytes) {
        (d(s), Bytes::from(format!("{{\"date\":\"{s}\"}}")))
    }

    fn weekdays(a: &str, b: &str) -> Vec<(NaiveDate, Bytes)> {
        use chrono::Datelike;
        days(r(a, b))
            .filter(|x| x.weekday().number_from_monday() <= 5)
            .map(|x| bar(&x.to_string()))
            .collect()
    }

    fn fetched(a: &str, b: &str, at: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.apply(&Write {
            span: Span {
                from: d(a),
                to: d(b),
                fetched_ms: at,
                empty: false,
            },
            bars: weekdays(a, b),
            meta: None,
        });
        s
    }

    #[test]
    fn a_covered_fresh_range_is_a_hit_and_an_overlap_asks_only_the_rest() {
        let now = noon("2024-03-01");
        let snap = fetched("2024-01-01", "2024-01-31", now - H / 2);
        assert_eq!(gap(&snap, r("2024-01-01", "2024-01-31"), &fresh(), now), None);
        assert_eq!(
            gap(&snap, r("2024-01-06", "2024-01-07"), &fresh(), now),
            None,
            "weekend"
        );
        assert_eq!(
            gap(&snap, r("2024-01-15", "2024-02-15"), &fresh(), now),
            Some(r("2024-02-01", "2024-02-15"))
        );
        assert_eq!(
            gap(&snap, r("2023-12-20", "2024-01-10"), &fresh(), now),
            Some(r("2023-12-20", "2023-12-31"))
        );
        // Missing dates on both sides: one call spanning both (the hole is
        // fetched again rather than making two calls).
        assert_eq!(
            gap(&snap, r("2023-12-31", "2024-02-01"), &fresh(), now),
            Some(r("2023-12-31", "2024-02-01"))
        );
    }

    #[test]
    fn a_sliding_window_asks_only_its_live_edge_once_history_is_settled() {
        let t0 = noon("2024-03-10");
        let snap = fetched("2024-01-01", "2024-03-10", t0);
        // Two hours later the ttl (1h) of the live edge has passed, the
        // settled history (before 03-07) is fresh for 30 days.
        let now = t0 + 2 * H;
        assert_eq!(
            gap(&snap, r("2024-01-10", "2024-03-10"), &fresh(), now),
            Some(r("2024-03-07", "2024-03-10"))
        );
        // 31 days later everything is stale.
        assert_eq!(
            gap(&snap, r("2024-01-10", "2024-03-10"), &fresh(), t0 + 31 * 24 * H),
            Some(r("2024-01-10", "2024-03-10"))
        );
    }

    #[test]
    fn stale_if_error_serves_only_covered_dates_within_the_window() {
        let t0 = noon("2024-03-10");
        let snap = fetched("2024-03-01", "2024-03-10", t0);
        let now = t0 + 2 * H; // live edge stale for 1h
        assert!(stale_servable(
            &snap,
            r("2024-03-01", "2024-03-10"),
            &fresh(),
            now,
            2 * H
        ));
        assert!(!stale_servable(
            &snap,
            r("2024-03-01", "2024-03-10"),
            &fresh(),
            now,
            H / 2
        ));
        assert!(
            !stale_servable(&snap, r("2024-02-28", "2024-03-10"), &fresh(), now, 2 * H),
            "a date never fetched cannot be served stale"
        );
        assert!(!stale_servable(&snap, r("2024-03-01", "2024-03-10"), &fresh(), now, 0));
    }

    #[test]
    fn assembly_counts_cached_bars_ages_and_first_staleness() {
        let t0 = noon("2024-03-01");
        let mut snap = fetched("2024-01-01", "2024-01-31", t0 - 10 * H);
        snap.apply(&Write {
            span: Span {
                from: d("2024-02-01"),
                to: d("2024-02-15"),
                fetched_ms: t0,
                empty: false,
            },
            bars: weekdays("2024-02-01", "2024-02-15"),
            meta: None,
        });
        let a = assemble(
            &snap,
            r("2024-01-15", "2024-02-15"),
            &fresh(),
            Some(r("2024-02-01", "2024-02-15")),
        );
        assert_eq!(a.bars.len(), 13 + 11);
        assert_eq!(a.from_cache, 13);
        assert_eq!(a.oldest_cached_ms, Some(t0 - 10 * H));
        // January was fetched 10 h before 03-01: settled, fresh 30 days.
        // February's 02-01..02-15 were settled when fetched on 03-01 too.
        assert_eq!(a.first_stale_ms, Some(t0 - 10 * H + 30 * 24 * H));
        assert!(a.bars[0].starts_with(b"{\"date\":\"2024-01-15\""));
    }

    /// The definition `gap` must keep: date by date.
    fn gap_by_date(snap: &Snapshot, range: DateRange, fresh: &Freshness, now: u64) -> Option<DateRange> {
        let bad: Vec<NaiveDate> = days(range)
            .filter(|d| {
                snap.coverage
                    .span_of(*d)
                    .is_none_or(|s| fresh.fresh_until(*d, s) <= now)
            })
            .collect();
        DateRange::new(*bad.first()?, *bad.last()?).ok()
    }

    proptest::proptest! {
        #[test]
        fn gap_span_by_span_is_gap_date_by_date(
            spans in proptest::collection::vec((0i64..120, 0i64..20, 0u64..200, proptest::bool::ANY), 0..6),
            start in 0i64..140,
            len in 0i64..60,
            now_h in 0u64..(24 * 200),
            settle in 0u64..5,
        ) {
            let base = day_of(d("2024-01-01"));
            let fresh = Freshness::new(
                std::time::Duration::from_secs(settle * 86_400),
                std::time::Duration::from_secs(30 * 86_400),
                std::time::Duration::from_secs(3_600),
                std::time::Duration::from_secs(600),
            );
            let mut snap = Snapshot::default();
            for (from, days, fetched_h, empty) in spans {
                snap.apply(&Write {
                    span: Span {
                        from: date_of(base + from).unwrap(),
                        to: date_of(base + from + days).unwrap(),
                        fetched_ms: (base as u64) * 86_400_000 + fetched_h * H * 12,
                        empty,
                    },
                    bars: Vec::new(),
                    meta: None,
                });
            }
            let range = DateRange::new(date_of(base + start).unwrap(), date_of(base + start + len).unwrap()).unwrap();
            let now = (base as u64) * 86_400_000 + now_h * H;
            proptest::prop_assert_eq!(gap(&snap, range, &fresh, now), gap_by_date(&snap, range, &fresh, now));
        }
    }
}
