//! What a cache entry holds, and its encoding in Redis.
//!
//! The value is one JSON envelope carrying when it was stored and for how
//! long it is fresh, so any daemon can tell fresh from stale and compute
//! `age_s`/`ttl_s` without a second round trip for `TTL`. The data document
//! inside is kept as raw JSON text: a hit serves those bytes as they are
//! (adding only the `cache` object) instead of parsing and re-serialising
//! every bar, which was most of the hit path's CPU.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{Bars, DateRange};

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

/// A data document as JSON text, parsed into a [`DataDoc`] only when needed
/// (CSV, the producer, the status page).
#[derive(Debug)]
pub struct DataBody {
    json: Box<RawValue>,
    parsed: OnceLock<Option<DataDoc>>,
}

impl DataBody {
    pub fn from_doc(doc: DataDoc) -> Self {
        // Serialised straight into a RawValue: no second pass to re-validate.
        let json = serde_json::value::to_raw_value(&doc).unwrap_or_else(|_| empty_object());
        let parsed = OnceLock::new();
        let _ = parsed.set(Some(doc));
        Self { json, parsed }
    }

    pub fn json(&self) -> &str {
        self.json.get()
    }

    pub fn doc(&self) -> Option<&DataDoc> {
        self.parsed
            .get_or_init(|| serde_json::from_str(self.json.get()).ok())
            .as_ref()
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("{} is JSON")
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

/// The Redis encoding: `{"v":1,"stored_at_ms":..,"ttl_ms":..,"doc":{..}}`
/// or `{..,"no_data":"message"}`.
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
}

impl Envelope {
    pub const VERSION: u32 = 1;

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
        let (doc, no_data) = match &self.payload {
            Payload::Data(b) => (Some(b.json.as_ref()), None),
            Payload::NoData { message } => (None, Some(message.clone())),
        };
        serde_json::to_vec(&Wire {
            v: Self::VERSION,
            stored_at_ms: self.stored_at_ms,
            ttl_ms: self.ttl_ms,
            doc,
            no_data,
        })
        .unwrap_or_default()
    }

    /// Decodes what Redis returned. Anything written by another program, a
    /// truncated value, or a document for another range is refused, and the
    /// caller treats the key as a miss. The document's JSON syntax is checked
    /// in full; its bars were checked against the contract before they were
    /// first stored, and are parsed again only when a rendering needs them.
    pub fn decode(bytes: &[u8], range: &DateRange) -> Result<Self, DecodeError> {
        let wire: Wire = serde_json::from_slice(bytes)?;
        if wire.v != Self::VERSION {
            return Err(DecodeError::Version(wire.v));
        }
        let payload = match (wire.doc, wire.no_data) {
            (Some(doc), None) => {
                let text = doc.get();
                let expect = format!("\"start\":\"{}\",\"end\":\"{}\",\"bars\":[", range.start(), range.end());
                let head = &text.as_bytes()[..text.len().min(256)];
                let shaped = text.starts_with("{\"plugin\":")
                    && text.ends_with('}')
                    && head.windows(expect.len()).any(|w| w == expect.as_bytes());
                if !shaped {
                    return Err(DecodeError::Shape(range.to_string()));
                }
                Payload::Data(Arc::new(DataBody {
                    json: doc.to_owned(),
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
}
