//! A data answer and its two renderings (JSON with the `cache` object, CSV).

use std::sync::Arc;

use crate::cache::{DataDoc, Envelope, Layer, Payload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }

    /// The `X-Cache` header value.
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

#[derive(Clone)]
pub struct Answer {
    pub env: Arc<Envelope>,
    pub status: CacheStatus,
    pub layer: Layer,
    pub age_s: u64,
    pub ttl_s: u64,
}

impl Answer {
    pub fn doc(&self) -> Option<&DataDoc> {
        match &self.env.payload {
            Payload::Data(d) => d.doc(),
            Payload::NoData { .. } => None,
        }
    }

    /// The JSON answer (README, "HTTP API"): the stored document plus the `cache` object.
    pub fn to_json(&self) -> Vec<u8> {
        let Payload::Data(body) = &self.env.payload else {
            return b"{}".to_vec();
        };
        let json = body.json();
        let mut out = Vec::with_capacity(json.len() + 96);
        // The stored document without its closing brace, then the cache object.
        out.extend_from_slice(&json.as_bytes()[..json.len().saturating_sub(1)]);
        out.extend_from_slice(
            format!(
                ",\"cache\":{{\"status\":\"{}\",\"layer\":\"{}\",\"age_s\":{},\"ttl_s\":{}}}}}",
                self.status.as_str(),
                self.layer.as_str(),
                self.age_s,
                self.ttl_s
            )
            .as_bytes(),
        );
        out
    }

    pub fn to_csv(&self) -> String {
        self.doc().map(|d| d.bars.to_csv()).unwrap_or_default()
    }
}
