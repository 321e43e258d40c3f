//! The bounded in-process layer that stands in while Redis is unreachable.
//!
//! It mirrors every write so that a Redis outage starts with warm data, and
//! is only read when Redis cannot be asked. Entries live for their TTL plus
//! the stale-if-error window, like their Redis copies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::entry::Envelope;

#[derive(Clone)]
struct Stored {
    env: Arc<Envelope>,
    keep_for: Duration,
}

struct KeepFor;

impl moka::Expiry<String, Stored> for KeepFor {
    fn expire_after_create(&self, _k: &String, v: &Stored, _now: Instant) -> Option<Duration> {
        Some(v.keep_for)
    }

    fn expire_after_update(&self, _k: &String, v: &Stored, _now: Instant, _left: Option<Duration>) -> Option<Duration> {
        Some(v.keep_for)
    }
}

pub struct MemoryLayer {
    entries: Cache<String, Stored>,
}

impl MemoryLayer {
    pub fn new(max_entries: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(KeepFor)
                .support_invalidation_closures()
                .build(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Envelope>> {
        self.entries.get(key).map(|s| s.env)
    }

    pub fn insert(&self, key: &str, env: Arc<Envelope>, stale_window: Duration) {
        let ttl = Duration::from_millis(env.ttl_ms);
        let keep_for = if env.is_data() { ttl + stale_window } else { ttl };
        self.entries.insert(key.to_owned(), Stored { env, keep_for });
    }

    /// Removes matching entries (closures are enabled in `new`, so this
    /// cannot fail; if it ever did, everything goes, which is still correct).
    pub fn remove_matching(&self, pred: impl Fn(&str) -> bool + Send + Sync + 'static) {
        if self
            .entries
            .invalidate_entries_if(move |k, _| pred(k.as_str()))
            .is_err()
        {
            self.entries.invalidate_all();
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}
