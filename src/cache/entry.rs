//! What a cache entry holds, and its encoding in Redis.
//!
//! The value is one JSON envelope carrying when it was stored and for how
//! long it is fresh, so any daemon can tell fresh from stale and compute
//! `age_s`/`ttl_s` without a second round trip for `TTL`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::{Bars, DateRange};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The data answer without its `cache` object, exactly as served.
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    Data(DataDoc),
    /// A remembered "no data" answer (negative caching).
    NoData {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Encoding version, so a future layout is read as a miss, not garbage.
    pub v: u32,
    pub stored_at_ms: u64,
    pub ttl_ms: u64,
    pub payload: Payload,
}

/// Why a stored value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a tickerd cache entry: {0}")]
    Json(#[from] serde_json::Error),
    #[error("entry encoding version {0} is not 1")]
    Version(u32),
    #[error("entry breaks the output contract: {0}")]
    Contract(String),
}

impl Envelope {
    pub const VERSION: u32 = 1;

    pub fn new(payload: Payload, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            v: Self::VERSION,
            stored_at_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
            payload,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and re-checks what Redis returned: anything written by
    /// another program, a truncated value, or bars that no longer satisfy the
    /// contract are refused, and the caller treats the key as a miss.
    pub fn decode(bytes: &[u8], range: &DateRange) -> Result<Self, DecodeError> {
        let env: Envelope = serde_json::from_slice(bytes)?;
        if env.v != Self::VERSION {
            return Err(DecodeError::Version(env.v));
        }
        if let Payload::Data(doc) = &env.payload {
            Bars::check(doc.bars.as_slice(), range).map_err(|e| DecodeError::Contract(e.to_string()))?;
            if doc.bars.is_empty() {
                return Err(DecodeError::Contract("no bars".into()));
            }
            if doc.start != range.start().to_string() || doc.end != range.end().to_string() {
                return Err(DecodeError::Contract(format!(
                    "stored for {}..{}, asked for {range}",
                    doc.start, doc.end
                )));
            }
        }
        Ok(env)
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
