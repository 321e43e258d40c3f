//! Where series live (README, "Cache behaviour"): Redis first, the bounded in-process memory
//! layer whenever Redis cannot be asked, the optional L1 in front.
//!
//! [`Cache`] puts the layers together behind the [`Store`] interface the
//! pipeline uses: reads fall back to memory when Redis fails, every write
//! is mirrored into memory, a failed Redis write is logged (rate-limited),
//! counted by reason, shown as "writes failing", and its lock released.

mod key;
mod l1;
mod memory;
mod redis_series;
mod redis_store;
mod redis_target;
pub mod series;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::FutureExt;

pub use key::{KeySpace, Selector, parse_index_member};
pub use l1::L1;
pub use memory::MemoryStore;
pub use redis_series::RedisSeries;
pub use redis_store::{RedisStore, StoreError, own_connections};
pub use store::{FailureMarker, LockAnswer, LockGuard, Read, SeriesId, Store, StoreFuture, Written};

use crate::config::{CacheConfig, RedisConfig};
use crate::metrics::Metrics;
use crate::model::{DateRange, PluginName, Ticker};
use series::{Snapshot, Write};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Redis,
    Memory,
    /// The optional in-process hot cache in front of Redis (`cache.l1_ttl`).
    L1,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Redis => "redis",
            Layer::Memory => "memory",
            Layer::L1 => "l1",
        }
    }
}

/// How long a failed write keeps "writes failing" up without another failure.
const WRITES_FAILING_FOR_MS: u64 = 60_000;
/// At most one log line per reason in this interval.
const WRITE_LOG_EVERY_MS: u64 = 30_000;

/// Why a Redis write failed, as the `reason` label says it.
fn write_failure_reason(e: &StoreError) -> &'static str {
    match e {
        StoreError::Skipped => "redis_down",
        StoreError::Timeout { .. } => "timeout",
        StoreError::Redis { message, .. } if message.contains("OOM") => "oom",
        StoreError::Redis { message, .. } if message.contains("NOPERM") || message.contains("NOAUTH") => "denied",
        StoreError::Redis { .. } => "error",
    }
}

/// What an invalidation did: how many series it removed or trimmed, and
/// what it could not reach (it still removed everything else).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Invalidated {
    pub deleted: u64,
    pub problems: Vec<String>,
}

/// The L1's state in `/v1/stats`: `off` (not configured), `active`, or
/// `bypassed` (not subscribed to invalidations, so not read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L1State {
    Off,
    Active,
    Bypassed,
}

/// Redis reachable or not: `up` / `down` in the JSON answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisLink {
    Up,
    Down,
}

impl RedisLink {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisLink::Up => "up",
            RedisLink::Down => "down",
        }
    }
}

/// Redis writes: `ok`, or `failing` lately (answers served but not cached).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteHealth {
    Ok,
    Failing,
}

pub struct Cache {
    space: KeySpace,
    redis: Arc<RedisStore>,
    series: RedisSeries,
    memory: MemoryStore,
    l1: Option<Arc<L1>>,
    settings: ArcSwap<CacheConfig>,
    metrics: Arc<Metrics>,
    last_write_failure_ms: AtomicU64,
    last_write_ok_ms: AtomicU64,
    last_write_log_ms: AtomicU64,
    suppressed_write_logs: AtomicU64,
}

impl Cache {
    pub fn new(redis_cfg: RedisConfig, cache_cfg: CacheConfig, metrics: Arc<Metrics>) -> Self {
        let space = KeySpace::new(&redis_cfg.key_prefix);
        let origin = format!("{:016x}", rand::random::<u64>());
        let redis = RedisStore::new(redis_cfg, Arc::clone(&metrics));
        Self {
            series: RedisSeries::new(Arc::clone(&redis), space.clone(), origin.clone()),
            space,
            memory: MemoryStore::new(
                cache_cfg.memory_max_entries,
                cache_cfg.memory_max_bytes,
                Layer::Memory,
                None,
            ),
            l1: (!cache_cfg.l1_ttl.is_zero()).then(|| {
                Arc::new(L1::new(
                    cache_cfg.l1_ttl,
                    cache_cfg.l1_max_entries,
                    cache_cfg.memory_max_bytes,
                    origin,
                ))
            }),
            redis,
            settings: ArcSwap::from_pointee(cache_cfg),
            metrics,
            last_write_failure_ms: AtomicU64::new(0),
            last_write_ok_ms: AtomicU64::new(0),
            last_write_log_ms: AtomicU64::new(0),
            suppressed_write_logs: AtomicU64::new(0),
        }
    }

    pub fn keys(&self) -> &KeySpace {
        &self.space
    }

    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.redis
    }

    pub fn settings(&self) -> Arc<CacheConfig> {
        self.settings.load_full()
    }

    /// Applies a reloaded `[cache]` section (the memory bounds stay until restart).
    pub fn set_settings(&self, cfg: CacheConfig) {
        self.settings.store(Arc::new(cfg));
    }

    pub fn memory_entries(&self) -> u64 {
        self.memory.entry_count()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.weighted_size()
    }

    /// Whether Redis writes have been failing lately (readyz, stats).
    pub fn writes_failing(&self) -> bool {
        let failed = self.last_write_failure_ms.load(Ordering::Acquire);
        failed > self.last_write_ok_ms.load(Ordering::Acquire)
            && now_ms().saturating_sub(failed) < WRITES_FAILING_FOR_MS
    }

    /// Whether the L1 is configured and, if so, trusted right now.
    pub fn l1_state(&self) -> L1State {
        match &self.l1 {
            None => L1State::Off,
            Some(l1) if l1.is_active() => L1State::Active,
            Some(_) => L1State::Bypassed,
        }
    }

    /// Whether Redis answers, as `/readyz`, `/v1/stats` and the status page say it.
    pub fn redis_link(&self) -> RedisLink {
        if self.redis.is_up() {
            RedisLink::Up
        } else {
            RedisLink::Down
        }
    }

    /// Whether Redis writes have been failing lately, as `/readyz` and `/v1/stats` say it.
    pub fn write_health(&self) -> WriteHealth {
        if self.writes_failing() {
            WriteHealth::Failing
        } else {
            WriteHealth::Ok
        }
    }

    /// Subscribes the L1 (if configured) to invalidations; `serve` calls this.
    pub fn start_l1(&self) {
        if let Some(l1) = &self.l1 {
            let target = Arc::clone(self.redis.target());
            l1.spawn_listener(target, self.space.clone(), self.redis.config().backoff);
        }
    }

    fn write_failed(&self, id: &SeriesId, e: &StoreError) {
        let reason = write_failure_reason(e);
        self.metrics.cache_write_error(id.plugin.as_str(), reason);
        if matches!(e, StoreError::Skipped) {
            return;
        }
        let now = now_ms();
        self.last_write_failure_ms.store(now, Ordering::Release);
        let last = self.last_write_log_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) >= WRITE_LOG_EVERY_MS
            && self
                .last_write_log_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let suppressed = self.suppressed_write_logs.swap(0, Ordering::AcqRel);
            let hint = match reason {
                "oom" => "redis is at maxmemory: raise maxmemory or set an eviction policy (allkeys-lru)",
                "timeout" => "redis is slow to answer: check its latency and [redis] op_timeout",
                "denied" => "the redis user may not run this: check the ACL rule in the README",
                _ => "check the redis log",
            };
            tracing::warn!(
                plugin = %id.plugin, ticker = %id.ticker, reason, error = %e, similar_since_last_line = suppressed,
                "redis write failed; the answer was served and kept in the memory layer only. {hint}"
            );
        } else {
            self.suppressed_write_logs.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Deletes series matching `sel` from every layer without `KEYS`: the
    /// plugin index sets name every series, and `known` (plugin name,
    /// current version) widens the search to plugins loaded now, so an index
    /// that is missing or holds garbage does not hide their series.
    pub async fn invalidate_selected(&self, sel: &Selector, known: &[(PluginName, u32)]) -> Invalidated {
        let mut out = Invalidated::default();
        let s = sel.clone();
        self.memory.remove_matching(move |k| s.matches_local(k));
        if let Some(l1) = &self.l1 {
            l1.forget_matching(sel);
            if let Err(e) = self.series.publish(&l1.notice_for(sel)).await {
                out.problems.push(format!("other daemons' L1 could not be told: {e}"));
            }
        }
        let mut plugins: Vec<String> = match &sel.plugin {
            Some(p) => vec![p.to_string()],
            None => {
                let mut names = match self.series.indexed_plugins().await {
                    Ok(n) => n,
                    Err(e) => {
                        self.index_problem(&mut out, self.space.plugins_index(), e).await;
                        Vec::new()
                    }
                };
                names.extend(known.iter().map(|(n, _)| n.to_string()));
                names
            }
        };
        plugins.sort();
        plugins.dedup();
        for plugin in plugins {
            let Ok(pname) = PluginName::parse(&plugin) else {
                continue;
            };
            let members = match self.series.indexed(&plugin).await {
                // A whole plugin (or every ticker of it) also looks by SCAN
                // (never KEYS), so series a damaged index lost are found.
                Ok(mut members) if sel.ticker.is_none() => {
                    match self.series.scan_series(&plugin).await {
                        Ok(found) => members.extend(found),
                        Err(e) => out.problems.push(format!("scanning for {plugin}'s series: {e}")),
                    }
                    members
                }
                Ok(members) => members,
                Err(e) => {
                    self.index_problem(&mut out, self.space.plugin_index(&plugin), e).await;
                    // The index cannot say: look the series up by SCAN.
                    match self.series.scan_series(&plugin).await {
                        Ok(found) => {
                            if sel.ticker.is_some() || sel.range.is_some() {
                                // Series stay: list them again (repair).
                                if let Err(e) = self.series.reindex(&plugin, &found).await {
                                    out.problems.push(format!("re-indexing {plugin}: {e}"));
                                }
                            }
                            found
                        }
                        Err(e) => {
                            out.problems.push(format!("scanning for {plugin}'s series: {e}"));
                            Vec::new()
                        }
                    }
                }
            };
            let mut ids: Vec<(u32, Ticker)> = members.iter().filter_map(|m| parse_index_member(m)).collect();
            if let (Some(t), Some((_, v))) = (&sel.ticker, known.iter().find(|(n, _)| n.as_str() == plugin)) {
                ids.push((*v, t.clone()));
            }
            ids.retain(|(_, t)| sel.ticker.as_ref().is_none_or(|x| x == t));
            ids.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
            ids.dedup();
            for (version, ticker) in ids {
                let id = SeriesId {
                    plugin: pname.clone(),
                    version,
                    ticker,
                };
                match self.series.invalidate(&id, sel.range).await {
                    Ok(n) => out.deleted += n,
                    Err(e) => out.problems.push(format!("{}: {e}", self.space.series(&id))),
                }
            }
            if sel.ticker.is_none()
                && sel.range.is_none()
                && let Err(e) = self.series.drop_key(self.space.plugin_index(&plugin)).await
            {
                out.problems.push(format!("{}: {e}", self.space.plugin_index(&plugin)));
            }
        }
        tracing::debug!(deleted = out.deleted, problems = out.problems.len(), "invalidated");
        out
    }

    /// An index set that could not be read: a key of the wrong type is
    /// removed (it only ever holds what tickerd rebuilds), anything else is
    /// reported.
    async fn index_problem(&self, out: &mut Invalidated, key: String, e: StoreError) {
        let wrong_type = matches!(&e, StoreError::Redis { message, .. } if message.contains("WRONGTYPE"));
        if wrong_type {
            tracing::warn!(
                key,
                "an index key holds the wrong type; removing it (tickerd rebuilds it on the next new series)"
            );
            self.metrics.plugin("(index)").errors.inc();
            match self.series.drop_key(key.clone()).await {
                Ok(()) => out.problems.push(format!(
                    "{key} held the wrong type and was removed (tickerd rebuilds it)"
                )),
                Err(e2) => out.problems.push(format!("{key}: {e2}")),
            }
        } else {
            out.problems.push(format!("{key}: {e}"));
        }
    }
}

impl Store for Cache {
    /// The L1's view, when configured and coherent.
    fn read_hot(&self, id: &SeriesId) -> Option<Arc<Snapshot>> {
        self.l1.as_ref()?.get(id)
    }

    fn read<'a>(&'a self, id: &'a SeriesId, range: DateRange) -> StoreFuture<'a, Read> {
        async move {
            let epoch = self.l1.as_ref().map(|l| l.epoch());
            match self.series.read(id, range).await {
                Ok(read) => {
                    if let (Some(l1), Some(epoch)) = (&self.l1, epoch) {
                        l1.remember(id, range, &read.snapshot, epoch);
                    }
                    Ok(read)
                }
                Err(e) => {
                    if !matches!(e, StoreError::Skipped) {
                        self.metrics.plugin(id.plugin.as_str()).errors.inc();
                    }
                    Ok(Read {
                        snapshot: self.memory.read_now(id, range),
                        layer: Layer::Memory,
                        corrupt: 0,
                    })
                }
            }
        }
        .boxed()
    }

    fn lock<'a>(&'a self, id: &'a SeriesId, ttl: Duration) -> StoreFuture<'a, LockAnswer> {
        self.series.lock(id, ttl)
    }

    fn write<'a>(
        &'a self,
        id: &'a SeriesId,
        w: &'a Write,
        keep: Duration,
        lock: Option<&'a LockGuard>,
    ) -> StoreFuture<'a, Written> {
        async move {
            self.memory.apply(id, w, keep);
            match self.series.write(id, w, keep, lock).await {
                Ok(written) => {
                    self.last_write_ok_ms.store(now_ms(), Ordering::Release);
                    if let Some(l1) = &self.l1 {
                        l1.apply(id, w);
                    }
                    Ok(written)
                }
                Err(e) => {
                    self.write_failed(id, &e);
                    if let Some(g) = lock
                        && let Err(e) = self.series.unlock(id, g, None).await
                    {
                        tracing::debug!(error = %e, "could not release the fleet lock after a failed write; it expires by itself");
                    }
                    if let Some(l1) = &self.l1 {
                        l1.forget(id);
                    }
                    Ok(Written { layer: Layer::Memory })
                }
            }
        }
        .boxed()
    }

    fn unlock<'a>(
        &'a self,
        id: &'a SeriesId,
        lock: &'a LockGuard,
        failure: Option<&'a FailureMarker>,
    ) -> StoreFuture<'a, ()> {
        self.series.unlock(id, lock, failure)
    }

    fn invalidate<'a>(&'a self, id: &'a SeriesId, range: Option<DateRange>) -> StoreFuture<'a, u64> {
        async move {
            self.memory.remove(id, range);
            if let Some(l1) = &self.l1 {
                l1.forget(id);
            }
            self.series.invalidate(id, range).await
        }
        .boxed()
    }
}
