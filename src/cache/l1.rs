//! The optional in-process L1 in front of Redis (`cache.l1_ttl > 0`).
//!
//! A hot key then costs no Redis round trip. Coherence across daemons:
//! every invalidation and every `refresh` is published on
//! `{prefix}:invalidate`, and each daemon evicts matching L1 entries when it
//! hears one. L1 is only read while this daemon is subscribed; if the
//! subscription drops, L1 is emptied and bypassed until it is back, so a
//! daemon that cannot hear invalidations never serves from L1. Entries also
//! live at most `l1_ttl`, which bounds staleness in any case.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use super::{CacheKey, Envelope, KeySpace, Selector};
use crate::model::{DateRange, PluginName, Ticker};

pub struct L1 {
    entries: Cache<String, Arc<Envelope>>,
    coherent: AtomicBool,
    /// Identifies this daemon's own messages on the channel.
    origin: String,
}

/// An invalidation as it travels between daemons.
#[derive(Debug, Serialize, Deserialize)]
pub struct Invalidation {
    pub origin: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub plugin: Option<String>,
    #[serde(default)]
    pub ticker: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
}

impl L1 {
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries.max(1))
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .support_invalidation_closures()
                .build(),
            coherent: AtomicBool::new(false),
            origin: format!("{:016x}", rand::random::<u64>()),
        }
    }

    pub fn is_active(&self) -> bool {
        self.coherent.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Envelope>> {
        if !self.is_active() {
            return None;
        }
        self.entries.get(key.as_str())
    }

    pub fn insert(&self, key: &CacheKey, env: &Arc<Envelope>) {
        if self.is_active() {
            self.entries.insert(key.as_str().to_owned(), Arc::clone(env));
        }
    }

    pub fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    pub fn remove_matching(&self, space: &KeySpace, sel: &Selector) {
        let (space, sel) = (space.clone(), sel.clone());
        if self
            .entries
            .invalidate_entries_if(move |k, _| CacheKey::from(k.clone()).matches(&space, &sel))
            .is_err()
        {
            self.entries.invalidate_all();
        }
    }

    fn set_active(&self, on: bool) {
        if !on {
            self.entries.invalidate_all();
        }
        self.coherent.store(on, Ordering::Release);
    }

    pub fn message_for_key(&self, key: &CacheKey) -> Invalidation {
        Invalidation {
            origin: self.origin.clone(),
            key: Some(key.as_str().to_owned()),
            plugin: None,
            ticker: None,
            start: None,
            end: None,
        }
    }

    pub fn message_for_selector(&self, sel: &Selector) -> Invalidation {
        Invalidation {
            origin: self.origin.clone(),
            key: None,
            plugin: sel.plugin.as_ref().map(|p| p.to_string()),
            ticker: sel.ticker.as_ref().map(|t| t.to_string()),
            start: sel.range.map(|r| r.start().to_string()),
            end: sel.range.map(|r| r.end().to_string()),
        }
    }

    /// Applies a message heard on the channel.
    pub fn apply(&self, space: &KeySpace, msg: &Invalidation) {
        if msg.origin == self.origin {
            return;
        }
        if let Some(k) = &msg.key {
            self.remove(k);
            return;
        }
        let today = chrono::Utc::now().date_naive();
        let sel = Selector {
            plugin: msg.plugin.as_deref().and_then(|p| PluginName::parse(p).ok()),
            ticker: msg.ticker.as_deref().and_then(|t| Ticker::parse(t).ok()),
            range: match (&msg.start, &msg.end) {
                (Some(s), Some(e)) => DateRange::from_request(Some(s), Some(e), today).ok(),
                _ => None,
            },
        };
        if sel.plugin.is_none() && sel.ticker.is_none() {
            // Unreadable selector: be safe.
            self.entries.invalidate_all();
        } else {
            self.remove_matching(space, &sel);
        }
    }

    /// Keeps a subscription to the invalidation channel for the life of the
    /// daemon; L1 is active only while subscribed.
    pub fn spawn_listener(self: &Arc<Self>, url: String, space: KeySpace, backoff: Duration) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let channel = space.invalidation_channel();
            loop {
                let sub = async {
                    let client = redis::Client::open(url.as_str())?;
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                match tokio::time::timeout(Duration::from_secs(2), sub).await {
                    Ok(Ok(ps)) => {
                        this.set_active(true);
                        tracing::info!(channel = %channel, "L1 cache active: subscribed to invalidations");
                        let mut stream = ps.into_on_message();
                        while let Some(msg) = stream.next().await {
                            match serde_json::from_slice::<Invalidation>(msg.get_payload_bytes()) {
                                Ok(inv) => this.apply(&space, &inv),
                                Err(_) => this.entries.invalidate_all(),
                            }
                        }
                        this.set_active(false);
                        tracing::warn!("L1 cache bypassed: the invalidation subscription dropped; resubscribing");
                    }
                    _ => this.set_active(false),
                }
                tokio::time::sleep(backoff).await;
            }
        });
    }
}
