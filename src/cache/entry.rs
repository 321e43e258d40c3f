//! What a cache entry holds, and its encoding in Redis.
//!
//! The value is one JSON envelope carrying when it was stored and for how
//! long it is fresh, so any daemon can tell fresh from stale and compute
//! `age_s`/`ttl_s` without a second round trip for `TTL`. The data document
//! inside is kept as raw JSON text: a hit serves those bytes as they are
//! (adding only the `cache` object) instead of parsing and re-serialising
//! every bar, which was most of the hit path's CPU.
//!
//! Data entries carry a CRC-32 of the document (`"v":2`), so a hit checks
//! the whole document with one checksum pass instead of a JSON parse (the
//! parse was the largest user-space cost of a Redis hit after HTTP), and a
//! damaged byte is caught even where the JSON would still parse. Version 1
//! values (no checksum) are still read, with a full JSON check.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{Bars, DateRange, json_into, push_ymd};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The data answer without its `cache` object. Field order is the wire
/// order, which [`Envelope::decode`] relies on for its shape check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataDoc {
    pub plugin: String,
    pub ticker: String,
    pub start: String,
    pub end: String,
    pub bars: Bars,
    #[serde(default)]
    pub meta: serde_json::Map<String, serde_json::Value>,
    pub fetched_at: String,
}

impl DataDoc {
    /// The document as JSON, the same bytes as `serde_json::to_string`
    /// (property test below), with the bars written by [`Bars::write_json`]
    /// into a buffer sized for them up front.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256 + 112 * self.bars.len());
        out.extend_from_slice(b"{\"plugin\":");
        json_into(&mut out, &self.plugin);
        out.extend_from_slice(b",\"ticker\":");
        json_into(&mut out, &self.ticker);
        out.extend_from_slice(b",\"start\":");
        json_into(&mut out, &self.start);
        out.extend_from_slice(b",\"end\":");
        json_into(&mut out, &self.end);
        out.extend_from_slice(b",\"bars\":");
        self.bars.write_json(&mut out);
        out.extend_from_slice(b",\"meta\":");
        json_into(&mut out, &self.meta);
        out.extend_from_slice(b",\"fetched_at\":");
        json_into(&mut out, &self.fetched_at);
        out.push(b'}');
        // serde_json writes UTF-8 only; the fallback is never expected.
        String::from_utf8(out).unwrap_or_else(|_| serde_json::to_string(self).unwrap_or_else(|_| "{}".into()))
    }
}

/// A data document as JSON text, parsed into a [`DataDoc`] only when needed
/// (CSV, the producer, the status page).
#[derive(Debug)]
pub struct DataBody {
    /// Always a JSON object: written by serde here, or read back from Redis
    /// after its checksum (v2) or a full parse (v1) vouched for it.
    json: Box<str>,
    parsed: OnceLock<Option<DataDoc>>,
}

impl DataBody {
    pub fn from_doc(doc: DataDoc) -> Self {
        let json = doc.to_json().into_boxed_str();
        let parsed = OnceLock::new();
        let _ = parsed.set(Some(doc));
        Self { json, parsed }
    }

    pub fn json(&self) -> &str {
        &self.json
    }

    pub fn doc(&self) -> Option<&DataDoc> {
        self.parsed
            .get_or_init(|| serde_json::from_str(&self.json).ok())
            .as_ref()
    }
}

#[derive(Debug, Clone)]
pub enum Payload {
    Data(Arc<DataBody>),
    /// A remembered "no data" answer (negative caching).
    NoData {
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub stored_at_ms: u64,
    pub ttl_ms: u64,
    pub payload: Payload,
}

/// The Redis encoding of a no-data entry, and of data entries written by
/// version 1: `{"v":1,"stored_at_ms":..,"ttl_ms":..,"doc":{..}}` or
/// `{..,"no_data":"message"}`. Data entries are now written as
/// `{"v":2,"stored_at_ms":..,"ttl_ms":..,"crc32":..,"doc":{..}}` (see
/// [`Envelope::encode`]).
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    v: u32,
    stored_at_ms: u64,
    ttl_ms: u64,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    doc: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    no_data: Option<String>,
}

/// Why a stored value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a tickerd cache entry: {0}")]
    Json(#[from] serde_json::Error),
    #[error("entry encoding version {0} is not 1")]
    Version(u32),
    #[error("entry has neither a document nor a no-data message")]
    Empty,
    #[error("entry is not the document for {0}")]
    Shape(String),
    #[error("entry is damaged: its document does not match its checksum")]
    Checksum,
}

impl Envelope {
    /// Version of no-data entries (and of data entries before checksums).
    pub const VERSION: u32 = 1;
    /// Version of data entries: a checksum, and the document last.
    pub const DATA_VERSION: u32 = 2;

    pub fn data(doc: DataDoc, ttl: Duration) -> Arc<Self> {
        Self::new(Payload::Data(Arc::new(DataBody::from_doc(doc))), ttl)
    }

    pub fn no_data(message: String, ttl: Duration) -> Arc<Self> {
        Self::new(Payload::NoData { message }, ttl)
    }

    fn new(payload: Payload, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            stored_at_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
            payload,
        })
    }

    pub fn is_data(&self) -> bool {
        matches!(self.payload, Payload::Data(_))
    }

    pub fn encode(&self) -> Vec<u8> {
        match &self.payload {
            Payload::Data(b) => {
                let doc = b.json();
                let head = format!(
                    "{{\"v\":{},\"stored_at_ms\":{},\"ttl_ms\":{},\"crc32\":{},\"doc\":",
                    Self::DATA_VERSION,
                    self.stored_at_ms,
                    self.ttl_ms,
                    crc32fast::hash(doc.as_bytes())
                );
                let mut out = Vec::with_capacity(head.len() + doc.len() + 1);
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(doc.as_bytes());
                out.push(b'}');
                out
            }
            Payload::NoData { message } => serde_json::to_vec(&Wire {
                v: Self::VERSION,
                stored_at_ms: self.stored_at_ms,
                ttl_ms: self.ttl_ms,
                doc: None,
                no_data: Some(message.clone()),
            })
            .unwrap_or_default(),
        }
    }

    /// Decodes what Redis returned. Anything written by another program, a
    /// truncated or damaged value, or a document for another range is
    /// refused, and the caller treats the key as a miss. A v2 document is
    /// checked against its CRC-32 (it was checked against the contract
    /// before it was first stored); a v1 document's JSON is parsed in full.
    /// Bars are parsed again only when a rendering needs them.
    pub fn decode(bytes: &[u8], range: &DateRange) -> Result<Self, DecodeError> {
        if let Some(fast) = Self::decode_v2(bytes) {
            let (stored_at_ms, ttl_ms, doc) = fast?;
            check_shape(doc, range)?;
            return Ok(Self {
                stored_at_ms,
                ttl_ms,
                payload: Payload::Data(Arc::new(DataBody {
                    json: doc.into(),
                    parsed: OnceLock::new(),
                })),
            });
        }
        let wire: Wire = serde_json::from_slice(bytes)?;
        if wire.v != Self::VERSION {
            return Err(DecodeError::Version(wire.v));
        }
        let payload = match (wire.doc, wire.no_data) {
            (Some(doc), None) => {
                check_shape(doc.get(), range)?;
                Payload::Data(Arc::new(DataBody {
                    json: doc.get().into(),
                    parsed: OnceLock::new(),
                }))
            }
            (None, Some(message)) => Payload::NoData { message },
            _ => return Err(DecodeError::Empty),
        };
        Ok(Self {
            stored_at_ms: wire.stored_at_ms,
            ttl_ms: wire.ttl_ms,
            payload,
        })
    }

    /// The v2 layout exactly as [`Envelope::encode`] writes it; `None` when
    /// the value does not start like one (another version, or not ours).
    fn decode_v2(bytes: &[u8]) -> Option<Result<(u64, u64, &str), DecodeError>> {
        let rest = bytes.strip_prefix(b"{\"v\":2,\"stored_at_ms\":")?;
        Some((|| {
            let bad = || DecodeError::Shape("a v2 entry with a malformed header".into());
            let (stored_at_ms, rest) = number_then(rest, b",\"ttl_ms\":").ok_or_else(bad)?;
            let (ttl_ms, rest) = number_then(rest, b",\"crc32\":").ok_or_else(bad)?;
            let (sum, rest) = number_then(rest, b",\"doc\":").ok_or_else(bad)?;
            let doc = rest.strip_suffix(b"}").ok_or_else(bad)?;
            if u64::from(crc32fast::hash(doc)) != sum {
                return Err(DecodeError::Checksum);
            }
            // The checksum matched what encode() wrote from a `&str`.
            let doc = std::str::from_utf8(doc).map_err(|_| DecodeError::Checksum)?;
            Ok((stored_at_ms, ttl_ms, doc))
        })())
    }
    pub fn age_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_at_ms)
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        self.age_ms(now) < self.ttl_ms
    }

    /// Seconds of freshness left, rounded up so a fresh entry shows its full
    /// TTL (0 once stale).
    pub fn ttl_left_s(&self, now: u64) -> u64 {
        self.ttl_ms.saturating_sub(self.age_ms(now)).div_ceil(1000)
    }
}

/// A decimal number (at most 20 digits) followed by `sep`.
fn number_then<'a>(bytes: &'a [u8], sep: &[u8]) -> Option<(u64, &'a [u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let n = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
    Some((n, bytes[digits..].strip_prefix(sep)?))
}

/// The document must be a data answer for exactly this range (a key
/// collision or a value written by another program is refused).
fn check_shape(text: &str, range: &DateRange) -> Result<(), DecodeError> {
    let mut expect = String::with_capacity(48);
    expect.push_str("\"start\":\"");
    push_ymd(&mut expect, range.start());
    expect.push_str("\",\"end\":\"");
    push_ymd(&mut expect, range.end());
    expect.push_str("\",\"bars\":[");
    let head = &text.as_bytes()[..text.len().min(256)];
    let shaped = text.starts_with("{\"plugin\":")
        && text.ends_with('}')
        && head.windows(expect.len()).any(|w| w == expect.as_bytes());
    if shaped {
        Ok(())
    } else {
        Err(DecodeError::Shape(range.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn range() -> DateRange {
        DateRange::new(
            NaiveDate::from_ymd_opt(2024, 1, 2).unwrap(),
            NaiveDate::from_ymd_opt(2024, 1, 3).unwrap(),
        )
        .unwrap()
    }

    fn doc() -> DataDoc {
        serde_json::from_str(
            r#"{"plugin":"p","ticker":"A","start":"2024-01-02","end":"2024-01-03",
                "bars":[{"date":"2024-01-02","open":1,"high":2,"low":0.5,"close":1.5}],"meta":{},"fetched_at":"x"}"#,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_serves_the_stored_bytes() {
        let env = Envelope::data(doc(), Duration::from_secs(60));
        let back = Envelope::decode(&env.encode(), &range()).unwrap();
        let (Payload::Data(a), Payload::Data(b)) = (&env.payload, &back.payload) else {
            panic!()
        };
        assert_eq!(a.json(), b.json());
        assert_eq!(b.doc().unwrap(), &doc());
        assert_eq!(back.ttl_ms, 60_000);
    }

    #[test]
    fn refuses_garbage_other_versions_and_other_ranges() {
        let r = range();
        assert!(Envelope::decode(b"{\"not\": \"ours\"", &r).is_err());
        assert!(Envelope::decode(b"hello", &r).is_err());
        assert!(Envelope::decode(br#"{"v":2,"stored_at_ms":1,"ttl_ms":1,"no_data":"x"}"#, &r).is_err());
        assert!(Envelope::decode(br#"{"v":1,"stored_at_ms":1,"ttl_ms":1}"#, &r).is_err());
        let env = Envelope::data(doc(), Duration::from_secs(60));
        let other = DateRange::new(r.start(), r.start()).unwrap();
        assert!(Envelope::decode(&env.encode(), &other).is_err());
        let bytes = env.encode();
        assert!(Envelope::decode(&bytes[..bytes.len() - 3], &r).is_err(), "truncated");
    }

    #[test]
    fn catches_damage_that_still_parses_and_reads_version_1() {
        let r = range();
        let env = Envelope::data(doc(), Duration::from_secs(60));
        let bytes = env.encode();
        assert!(bytes.starts_with(b"{\"v\":2,"), "data entries are v2");
        // One digit of a price changed: valid JSON, wrong data.
        let at = bytes.windows(8).position(|w| w == b"\"high\":2").unwrap() + 7;
        let mut damaged = bytes.clone();
        damaged[at] = b'3';
        assert!(serde_json::from_slice::<serde_json::Value>(&damaged).is_ok());
        assert!(matches!(Envelope::decode(&damaged, &r), Err(DecodeError::Checksum)));

        let v1 = format!(
            r#"{{"v":1,"stored_at_ms":5,"ttl_ms":60000,"doc":{}}}"#,
            serde_json::to_string(&doc()).unwrap()
        );
        let back = Envelope::decode(v1.as_bytes(), &r).unwrap();
        assert_eq!((back.stored_at_ms, back.ttl_ms), (5, 60_000));
        let Payload::Data(b) = &back.payload else { panic!() };
        assert_eq!(b.doc().unwrap(), &doc());
        // A v1 document that is not JSON is refused.
        let broken = v1.replacen("\"bars\":[", "\"bars\":[[", 1);
        assert!(Envelope::decode(broken.as_bytes(), &r).is_err());

        let nd = Envelope::no_data("none".into(), Duration::from_secs(5));
        let back = Envelope::decode(&nd.encode(), &r).unwrap();
        assert!(matches!(back.payload, Payload::NoData { ref message } if message == "none"));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::model::{Bar, ExtraValue};
    use chrono::NaiveDate;
    use proptest::prelude::*;

    /// Strings with what JSON must escape: quotes, backslashes, control
    /// characters, and non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 \"\\\\\u{0}-\u{1f}\u{7f}é€😀]{0,10}"
    }

    fn bar() -> impl Strategy<Value = Bar> {
        (
            // Years 1900 to past 9999, where the fast date writer hands over to chrono.
            0i64..3_000_000,
            proptest::array::uniform4(proptest::num::f64::ANY),
            proptest::option::of(prop_oneof![
                proptest::num::f64::ANY,
                (0u64..20_000_000_000_000_000).prop_map(|n| n as f64),
            ]),
            proptest::collection::btree_map(
                text(),
                prop_oneof![
                    proptest::num::f64::ANY.prop_map(ExtraValue::Number),
                    text().prop_map(ExtraValue::Text),
                ],
                0..3,
            ),
        )
            .prop_map(|(days, [open, high, low, close], volume, extra)| Bar {
                date: NaiveDate::from_ymd_opt(1900, 1, 1).unwrap() + chrono::Days::new(days as u64),
                open,
                high,
                low,
                close,
                volume,
                extra,
            })
    }

    proptest! {
        /// The hand-written writer and serde agree byte for byte, so stored
        /// values, checksums and answers are what serde would have made.
        #[test]
        fn to_json_is_what_serde_writes(
            names in proptest::array::uniform5(text()),
            bars in proptest::collection::vec(bar(), 0..6),
            meta in proptest::collection::btree_map(text(), text(), 0..3),
        ) {
            let [plugin, ticker, start, end, fetched_at] = names;
            let doc = DataDoc {
                plugin,
                ticker,
                start,
                end,
                // Order and range do not matter to serialisation.
                bars: Bars::from_unchecked(bars),
                meta: meta.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect(),
                fetched_at,
            };
            prop_assert_eq!(doc.to_json(), serde_json::to_string(&doc).unwrap());
        }
    }
}
