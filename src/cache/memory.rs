//! The bounded in-process layer: the same series model as Redis, in a moka
//! cache bounded by **bytes** and by entries.
//!
//! It stands in while Redis cannot be asked (mirroring every write so an
//! outage starts warm), serves as the L1 in front of Redis when configured,
//! and is the fake store of the pipeline's unit tests (it implements the
//! lock with a token and an expiry, as Redis does).
//!
//! Both bounds with one weigher: an entry weighs its bytes, but never less
//! than `max_bytes / max_entries`, so at most `max_entries` entries fit and
//! never more than `max_bytes` in all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use moka::sync::Cache;

use super::series::{Snapshot, Write};
use super::store::{FailureMarker, LockAnswer, LockGuard, Read, SeriesId, Store, StoreFuture, Written};
use super::{Layer, StoreError};
use crate::model::DateRange;

#[derive(Clone)]
struct Stored {
    snap: Arc<Snapshot>,
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

struct HeldLock {
    token: String,
    until: tokio::time::Instant,
}

pub struct MemoryStore {
    entries: Cache<String, Stored>,
    locks: Mutex<HashMap<String, HeldLock>>,
    failures: Mutex<HashMap<String, FailureMarker>>,
    layer: Layer,
}

impl MemoryStore {
    /// `layer` is what reads from it report (`memory`, or `l1`); `ttl`, when
    /// given, caps every entry's life (the L1's `l1_ttl`).
    pub fn new(max_entries: u64, max_bytes: u64, layer: Layer, ttl: Option<Duration>) -> Self {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(1);
        let floor = (max_bytes / max_entries).clamp(1, u64::from(u32::MAX)) as u32;
        let mut b = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_k: &String, v: &Stored| (v.snap.weight().min(u32::MAX as usize) as u32).max(floor))
            .expire_after(KeepFor)
            .support_invalidation_closures();
        if let Some(t) = ttl {
            b = b.time_to_live(t.max(Duration::from_millis(1)));
        }
        Self {
            entries: b.build(),
            locks: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            layer,
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Bytes held (as weighed), for `/v1/stats`.
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// The whole stored series, if any.
    pub fn get(&self, id: &SeriesId) -> Option<Arc<Snapshot>> {
        self.entries.get(&id.local_key()).map(|s| s.snap)
    }

    pub fn read_now(&self, id: &SeriesId, range: DateRange) -> Snapshot {
        self.entries
            .get(&id.local_key())
            .map(|s| s.snap.clip(range))
            .unwrap_or_default()
    }

    /// Takes `snap`'s view of `window` into the stored series.
    pub fn merge(&self, id: &SeriesId, window: DateRange, snap: &Snapshot, keep: Duration) {
        let key = id.local_key();
        let mut next = self.entries.get(&key).map(|s| (*s.snap).clone()).unwrap_or_default();
        next.overlay(window, snap);
        self.entries.insert(
            key,
            Stored {
                snap: Arc::new(next),
                keep_for: keep,
            },
        );
    }

    pub fn apply(&self, id: &SeriesId, w: &Write, keep: Duration) {
        let key = id.local_key();
        let mut next = self.entries.get(&key).map(|s| (*s.snap).clone()).unwrap_or_default();
        next.apply(w);
        self.entries.insert(
            key,
            Stored {
                snap: Arc::new(next),
                keep_for: keep,
            },
        );
    }

    pub fn remove(&self, id: &SeriesId, range: Option<DateRange>) -> u64 {
        let key = id.local_key();
        let Some(old) = self.entries.get(&key) else { return 0 };
        match range {
            None => self.entries.invalidate(&key),
            Some(r) => {
                let mut next = (*old.snap).clone();
                next.remove(r);
                self.entries.insert(
                    key,
                    Stored {
                        snap: Arc::new(next),
                        keep_for: old.keep_for,
                    },
                );
            }
        }
        1
    }

    /// Drops every series whose key matches (selector invalidations).
    pub fn remove_matching(&self, pred: impl Fn(&str) -> bool + Send + Sync + 'static) {
        if self
            .entries
            .invalidate_entries_if(move |k, _| pred(k.as_str()))
            .is_err()
        {
            self.entries.invalidate_all();
        }
    }

    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    fn try_lock(&self, id: &SeriesId, ttl: Duration) -> LockAnswer {
        let key = id.local_key();
        let now = tokio::time::Instant::now();
        let guard = match self.locks.lock() {
            Ok(mut locks) => match locks.get(&key) {
                Some(l) if l.until > now => None,
                _ => {
                    let g = LockGuard::new();
                    locks.insert(
                        key.clone(),
                        HeldLock {
                            token: g.token.clone(),
                            until: now + ttl,
                        },
                    );
                    Some(g)
                }
            },
            Err(_) => Some(LockGuard::new()),
        };
        let coverage = self
            .entries
            .get(&key)
            .map(|s| bytes::Bytes::from(s.snap.coverage.encode()));
        let failure = self.failures.lock().ok().and_then(|f| f.get(&key).cloned());
        LockAnswer {
            guard,
            coverage,
            failure,
        }
    }

    fn release(&self, id: &SeriesId, lock: &LockGuard) {
        if let Ok(mut locks) = self.locks.lock() {
            let key = id.local_key();
            if locks.get(&key).is_some_and(|l| l.token == lock.token) {
                locks.remove(&key);
            }
        }
    }
}

impl Store for MemoryStore {
    fn read<'a>(&'a self, id: &'a SeriesId, range: DateRange) -> StoreFuture<'a, Read> {
        let snapshot = self.read_now(id, range);
        let layer = self.layer;
        async move {
            Ok(Read {
                snapshot,
                layer,
                corrupt: 0,
            })
        }
        .boxed()
    }

    fn lock<'a>(&'a self, id: &'a SeriesId, ttl: Duration) -> StoreFuture<'a, LockAnswer> {
        let answer = self.try_lock(id, ttl);
        async move { Ok(answer) }.boxed()
    }

    fn write<'a>(
        &'a self,
        id: &'a SeriesId,
        w: &'a Write,
        keep: Duration,
        lock: Option<&'a LockGuard>,
    ) -> StoreFuture<'a, Written> {
        self.apply(id, w, keep);
        if let Some(g) = lock {
            self.release(id, g);
        }
        let layer = self.layer;
        async move { Ok(Written { layer }) }.boxed()
    }

    fn unlock<'a>(
        &'a self,
        id: &'a SeriesId,
        lock: &'a LockGuard,
        failure: Option<&'a FailureMarker>,
    ) -> StoreFuture<'a, ()> {
        if let (Some(f), Ok(mut map)) = (failure, self.failures.lock()) {
            map.insert(id.local_key(), f.clone());
        }
        self.release(id, lock);
        async move { Ok::<(), StoreError>(()) }.boxed()
    }

    fn invalidate<'a>(&'a self, id: &'a SeriesId, range: Option<DateRange>) -> StoreFuture<'a, u64> {
        let n = self.remove(id, range);
        async move { Ok(n) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::series::{Span, tests::d};
    use crate::model::{PluginName, Ticker};
    use bytes::Bytes;

    fn id(t: &str) -> SeriesId {
        SeriesId {
            plugin: PluginName::parse("p").unwrap(),
            version: 1,
            ticker: Ticker::parse(t).unwrap(),
        }
    }

    fn write_of(bytes_per_bar: usize) -> Write {
        let bars = (1..=20)
            .map(|i| {
                let date = d("2024-01-01") + chrono::Days::new(i);
                (date, Bytes::from(vec![b'x'; bytes_per_bar]))
            })
            .collect();
        Write {
            span: Span {
                from: d("2024-01-01"),
                to: d("2024-01-31"),
                fetched_ms: 1,
                empty: false,
            },
            bars,
            meta: None,
        }
    }

    #[test]
    fn bounded_by_bytes_as_well_as_entries() {
        // 1000 entries allowed, but only 200 KB: ten 20 KB series fit, not fifty.
        let m = MemoryStore::new(1000, 200_000, Layer::Memory, None);
        for i in 0..50 {
            m.apply(&id(&format!("T{i}")), &write_of(1000), Duration::from_secs(60));
        }
        assert!(m.weighted_size() <= 200_000, "{}", m.weighted_size());
        assert!(m.entry_count() <= 10, "{}", m.entry_count());

        // 3 entries allowed with plenty of bytes: tiny entries still count.
        let m = MemoryStore::new(3, 100_000_000, Layer::Memory, None);
        for i in 0..20 {
            m.apply(&id(&format!("T{i}")), &write_of(1), Duration::from_secs(60));
        }
        assert!(m.entry_count() <= 3, "{}", m.entry_count());
    }

    #[tokio::test(start_paused = true)]
    async fn the_lock_is_exclusive_until_released_or_expired() {
        let m = MemoryStore::new(10, 1_000_000, Layer::Memory, None);
        let a = m.lock(&id("A"), Duration::from_secs(5)).await.unwrap();
        let g = a.guard.expect("first taker gets it");
        assert!(m.lock(&id("A"), Duration::from_secs(5)).await.unwrap().guard.is_none());
        m.unlock(&id("A"), &g, None).await.unwrap();
        let g2 = m.lock(&id("A"), Duration::from_secs(5)).await.unwrap().guard.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        let g3 = m.lock(&id("A"), Duration::from_secs(5)).await.unwrap().guard;
        assert!(g3.is_some(), "an expired lock is free");
        // The old holder's release does not free the new holder's lock.
        m.unlock(&id("A"), &g2, None).await.unwrap();
        assert!(m.lock(&id("A"), Duration::from_secs(5)).await.unwrap().guard.is_none());
    }
}
