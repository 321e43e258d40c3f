//! The storage interface between the pipeline and the places series live.
//!
//! Typed operations, one per thing the pipeline needs: read a range, take
//! the per-(plugin, ticker) fleet lock, write an answer (bars, coverage and
//! lock release together), release the lock after a failure, invalidate.
//! Implemented by the Redis store, by the bounded in-process layer (the
//! same model, used when Redis cannot be asked and as the L1), and by the
//! composite [`super::Cache`] that puts them together. Unit tests of the
//! pipeline run against the in-process layer as a fake.
//!
//! Methods return boxed futures so the pipeline can hold `Arc<dyn Store>`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::series::{Snapshot, Write};
use super::{Layer, StoreError};
use crate::model::{DateRange, PluginName, Ticker};

pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// One cached series: a plugin, its `cache_version`, a ticker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesId {
    pub plugin: PluginName,
    pub version: u32,
    pub ticker: Ticker,
}

impl SeriesId {
    /// `plugin:version:TICKER`: the in-process layers' key, and the tail of
    /// the Redis keys.
    pub fn local_key(&self) -> String {
        // By hand, not format!: every L1 hit builds one.
        let (plugin, ticker) = (self.plugin.as_str(), self.ticker.as_str());
        let mut version = itoa::Buffer::new();
        let version = version.format(self.version);
        let mut k = String::with_capacity(plugin.len() + version.len() + ticker.len() + 2);
        k.push_str(plugin);
        k.push(':');
        k.push_str(version);
        k.push(':');
        k.push_str(ticker);
        k
    }
}

/// Proof of holding the fleet lock of one series (compare-and-delete token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    pub token: String,
}

impl LockGuard {
    pub fn new() -> Self {
        Self {
            token: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

impl Default for LockGuard {
    fn default() -> Self {
        Self::new()
    }
}

/// What a fetch that failed leaves for the daemons that waited on its lock,
/// so they answer its error instead of calling the upstream again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailureMarker {
    /// The error itself (`{"code": ..., "message": ...}`).
    pub error: crate::error::FetchError,
    pub at_ms: u64,
}

/// The answer to a lock attempt, with the series' coverage text and failure
/// marker read in the same round trip: a lock holder compares the coverage
/// with what it read before, and re-reads only when another writer moved it.
#[derive(Debug, Clone, Default)]
pub struct LockAnswer {
    /// `Some` when the lock is ours.
    pub guard: Option<LockGuard>,
    pub coverage: Option<Bytes>,
    pub failure: Option<FailureMarker>,
}

/// A read: the snapshot of the range, which layer answered, and how many
/// stored values were not usable (counted as cache errors and refetched).
#[derive(Debug, Clone)]
pub struct Read {
    pub snapshot: Snapshot,
    pub layer: Layer,
    pub corrupt: u32,
}

/// What a write stored, for the caller's counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub layer: Layer,
}

pub trait Store: Send + Sync {
    /// An in-process view (the L1) asked before [`Store::read`]; only a
    /// view that answers the whole request is used. It is the whole stored
    /// series, shared, not a copy cut to the range: callers look inside the
    /// range only, and a hit then copies nothing but the bars it answers.
    fn read_hot(&self, _id: &SeriesId) -> Option<Arc<Snapshot>> {
        None
    }

    /// Coverage, bars and meta of `id` inside `range`.
    fn read<'a>(&'a self, id: &'a SeriesId, range: DateRange) -> StoreFuture<'a, Read>;

    /// Tries to take the fleet lock of `id` for `ttl`.
    fn lock<'a>(&'a self, id: &'a SeriesId, ttl: Duration) -> StoreFuture<'a, LockAnswer>;

    /// Stores one answer; releases `lock` in the same step. `keep` is how
    /// long the series is worth keeping at all.
    fn write<'a>(
        &'a self,
        id: &'a SeriesId,
        w: &'a Write,
        keep: Duration,
        lock: Option<&'a LockGuard>,
    ) -> StoreFuture<'a, Written>;

    /// Releases the lock without a write, leaving `failure` for waiters.
    fn unlock<'a>(
        &'a self,
        id: &'a SeriesId,
        lock: &'a LockGuard,
        failure: Option<&'a FailureMarker>,
    ) -> StoreFuture<'a, ()>;

    /// Removes the series, or only `range` of it. Returns 1 when something
    /// was removed, else 0.
    fn invalidate<'a>(&'a self, id: &'a SeriesId, range: Option<DateRange>) -> StoreFuture<'a, u64>;
}
