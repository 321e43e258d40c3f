//! A data answer and its two renderings (JSON with the `cache` object, CSV).
//!
//! The bars are the stored JSON text of each bar, so JSON rendering copies
//! bytes; CSV and the producer parse them when they need numbers.

use bytes::Bytes;

use crate::cache::Layer;
use crate::cache::series::date_of;
use crate::model::{Bar, DateRange, PluginName, Ticker, json_into, push_ymd, ymd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    /// Some bars from the cache, the rest fetched for this answer.
    Partial,
    Miss,
    Stale,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Partial => "partial",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }

    /// The `X-Cache` header value.
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Partial => "PARTIAL",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub plugin: PluginName,
    pub ticker: Ticker,
    pub range: DateRange,
    /// Each bar's JSON object, sorted by date.
    pub bars: Vec<Bytes>,
    /// The `meta` object of the latest fetch (JSON text).
    pub meta: Option<Bytes>,
    /// Fetch time of the oldest date served (unix ms).
    pub fetched_at_ms: u64,
    pub status: CacheStatus,
    pub layer: Layer,
    pub age_s: u64,
    pub ttl_s: u64,
    /// Days asked of the plugin for this answer.
    pub fetched_days: u64,
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `YYYY-MM-DDTHH:MM:SSZ` (what [`rfc3339`] writes) digit by digit: every
/// answer carries one, and chrono's formatter showed in the hit-path profile.
fn push_rfc3339(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let Some(date) = date_of((secs / 86_400) as i64).and_then(ymd) else {
        out.extend_from_slice(rfc3339(ms).as_bytes());
        return;
    };
    let s = secs % 86_400;
    let two = |n: u64| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    out.extend_from_slice(&date);
    out.push(b'T');
    out.extend_from_slice(&two(s / 3600));
    out.push(b':');
    out.extend_from_slice(&two(s / 60 % 60));
    out.push(b':');
    out.extend_from_slice(&two(s % 60));
    out.push(b'Z');
}

impl Answer {
    pub fn fetched_at(&self) -> String {
        let mut out = Vec::with_capacity(20);
        push_rfc3339(&mut out, self.fetched_at_ms);
        // push_rfc3339 writes ASCII only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The bars as one JSON array.
    pub fn bars_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.bars.iter().map(|b| b.len() + 1).sum::<usize>());
        out.push(b'[');
        for (i, b) in self.bars.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b);
        }
        out.push(b']');
        out
    }

    /// The bars parsed; `None` if a stored bar does not parse (it was
    /// checked when stored, so this means damage in the store).
    pub fn parsed_bars(&self) -> Option<Vec<Bar>> {
        self.bars.iter().map(|b| serde_json::from_slice(b).ok()).collect()
    }

    /// The JSON answer (README, "HTTP API"), written by hand (the bars are copied as
    /// stored).
    pub fn to_json(&self) -> Vec<u8> {
        let size: usize = self.bars.iter().map(|b| b.len() + 1).sum();
        let mut out = Vec::with_capacity(size + self.meta.as_ref().map_or(2, |m| m.len()) + 320);
        out.extend_from_slice(b"{\"plugin\":");
        json_into(&mut out, self.plugin.as_str());
        out.extend_from_slice(b",\"ticker\":");
        json_into(&mut out, self.ticker.as_str());
        let mut dates = String::with_capacity(48);
        dates.push_str(",\"start\":\"");
        push_ymd(&mut dates, self.range.start());
        dates.push_str("\",\"end\":\"");
        push_ymd(&mut dates, self.range.end());
        dates.push_str("\",\"bars\":[");
        out.extend_from_slice(dates.as_bytes());
        for (i, b) in self.bars.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b);
        }
        out.extend_from_slice(b"],\"meta\":");
        out.extend_from_slice(self.meta.as_deref().unwrap_or(b"{}"));
        out.extend_from_slice(b",\"fetched_at\":\"");
        push_rfc3339(&mut out, self.fetched_at_ms);
        out.extend_from_slice(b"\",\"cache\":{\"status\":\"");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"layer\":\"");
        out.extend_from_slice(self.layer.as_str().as_bytes());
        out.extend_from_slice(b"\",\"age_s\":");
        push_u64(&mut out, self.age_s);
        out.extend_from_slice(b",\"ttl_s\":");
        push_u64(&mut out, self.ttl_s);
        out.extend_from_slice(b",\"fetched_days\":");
        push_u64(&mut out, self.fetched_days);
        out.extend_from_slice(b"}}");
        out
    }

    pub fn to_csv(&self) -> Option<String> {
        let bars = self.parsed_bars()?;
        let mut out = String::with_capacity(32 + bars.len() * 64);
        out.push_str("date,open,high,low,close,volume\n");
        for b in &bars {
            use std::fmt::Write as _;
            let _ = write!(out, "{},{},{},{},{},", b.date, b.open, b.high, b.low, b.close);
            match b.volume {
                Some(v) if v.fract() == 0.0 && (0.0..9.0e15).contains(&v) => {
                    let _ = write!(out, "{}", v as u64);
                }
                Some(v) => {
                    let _ = write!(out, "{v}");
                }
                None => {}
            }
            out.push('\n');
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::series::tests::r;

    #[test]
    fn the_hand_written_timestamp_is_chronos() {
        for ms in [
            0,
            999,
            1_000,
            86_399_999,
            1_700_000_000_000,
            1_709_164_800_000,
            4_102_444_799_999,
        ] {
            let mut out = Vec::new();
            push_rfc3339(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), rfc3339(ms), "{ms}");
        }
    }

    #[test]
    fn json_is_valid_and_carries_the_cache_object() {
        let a = Answer {
            plugin: PluginName::parse("p").unwrap(),
            ticker: Ticker::parse("aapl").unwrap(),
            range: r("2024-01-02", "2024-01-03"),
            bars: vec![
                Bytes::from_static(br#"{"date":"2024-01-02","open":1,"high":2,"low":0.5,"close":1.5,"volume":10}"#),
                Bytes::from_static(br#"{"date":"2024-01-03","open":1,"high":2,"low":0.5,"close":1.5}"#),
            ],
            meta: Some(Bytes::from_static(br#"{"currency":"USD"}"#)),
            fetched_at_ms: 1_700_000_000_000,
            status: CacheStatus::Partial,
            layer: Layer::Redis,
            age_s: 5,
            ttl_s: 7,
            fetched_days: 1,
        };
        let v: serde_json::Value = serde_json::from_slice(&a.to_json()).unwrap();
        assert_eq!(v["ticker"], "AAPL");
        assert_eq!(v["bars"][1]["date"], "2024-01-03");
        assert_eq!(v["meta"]["currency"], "USD");
        assert_eq!(v["fetched_at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["cache"]["status"], "partial");
        assert_eq!(v["cache"]["fetched_days"], 1);
        assert_eq!(
            a.to_csv().unwrap(),
            "date,open,high,low,close,volume\n2024-01-02,1,2,0.5,1.5,10\n2024-01-03,1,2,0.5,1.5,\n"
        );
    }
}
