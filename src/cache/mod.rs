//! The two cache layers behind one interface: Redis first, the bounded
//! in-process memory layer whenever Redis cannot be asked.

mod entry;
mod fleet_lock;
mod key;
mod l1;
mod memory;
mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;

pub use entry::{DataBody, DataDoc, DecodeError, Envelope, Payload, now_ms};
pub use fleet_lock::{LockGuard, Waited};
pub use key::{CacheKey, KeySpace, Selector};
pub use l1::{Invalidation, L1};
pub use memory::MemoryLayer;
pub use redis_store::{Conn, RedisStore, StoreError, own_connections};

use crate::config::{CacheConfig, RedisConfig};
use crate::metrics::{Metrics, PluginMetrics};
use crate::model::DateRange;

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

/// An entry found in a layer; fresh or stale is for the caller to decide.
#[derive(Clone)]
pub struct Found {
    pub env: Arc<Envelope>,
    pub layer: Layer,
}

pub struct Cache {
    space: KeySpace,
    redis: Arc<RedisStore>,
    memory: MemoryLayer,
    l1: Option<Arc<L1>>,
    settings: ArcSwap<CacheConfig>,
}

/// `SET key value PX ms`, its buffer sized for the value up front: growing
/// it while a document of a few KB is appended copied it several times
/// (visible in the plugin-overhead profile).
fn set_px(key: &str, value: &[u8], ms: u64) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(5, key.len() + value.len() + 32);
    cmd.arg("SET").arg(key).arg(value).arg("PX").arg(ms);
    cmd
}

/// How long index sets outlive their newest entry, so an index never
/// disappears while it still names live keys.
const INDEX_SLACK: Duration = Duration::from_secs(86400);

impl Cache {
    pub fn new(redis_cfg: RedisConfig, cache_cfg: CacheConfig, metrics: Arc<Metrics>) -> Self {
        let space = KeySpace::new(&redis_cfg.key_prefix, redis_cfg.cluster);
        Self {
            space,
            memory: MemoryLayer::new(cache_cfg.memory_max_entries),
            l1: (!cache_cfg.l1_ttl.is_zero()).then(|| Arc::new(L1::new(cache_cfg.l1_ttl, cache_cfg.l1_max_entries))),
            redis: RedisStore::new(redis_cfg, metrics),
            settings: ArcSwap::from_pointee(cache_cfg),
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

    /// Applies a reloaded `[cache]` section (the memory bound stays until restart).
    pub fn set_settings(&self, cfg: CacheConfig) {
        self.settings.store(Arc::new(cfg));
    }

    pub fn memory_entries(&self) -> u64 {
        self.memory.entry_count()
    }

    /// Reads the entry for `key`: Redis when it answers, else the memory layer.
    /// A value that does not decode counts as a cache error and reads as absent,
    /// so the caller fetches and overwrites it.
    pub async fn read(&self, key: &CacheKey, range: &DateRange, pm: &PluginMetrics) -> Option<Found> {
        if let Some(l1) = &self.l1
            && let Some(env) = l1.get(key)
            && env.is_fresh(now_ms())
        {
            return Some(Found { env, layer: Layer::L1 });
        }
        let found = self.read_at(key.as_str(), range, pm).await;
        if let (Some(l1), Some(f)) = (&self.l1, &found)
            && f.layer == Layer::Redis
            && f.env.is_fresh(now_ms())
        {
            l1.insert(key, &f.env);
        }
        found
    }

    /// `off` (not configured), `active`, or `bypassed` (not subscribed).
    pub fn l1_state(&self) -> &'static str {
        match &self.l1 {
            None => "off",
            Some(l1) if l1.is_active() => "active",
            Some(_) => "bypassed",
        }
    }

    /// Subscribes the L1 (if configured) to invalidations; `serve` calls this.
    pub fn start_l1(&self) {
        if let Some(l1) = &self.l1 {
            let cfg = self.redis.config();
            let url = cfg.nodes.first().cloned().unwrap_or_else(|| cfg.url.clone());
            l1.spawn_listener(url, self.space.clone(), cfg.backoff);
        }
    }

    /// Tells every daemon's L1 that `key` was rewritten (a `refresh`).
    pub async fn announce_rewrite(&self, key: &CacheKey) {
        if let Some(l1) = &self.l1 {
            self.publish(l1.message_for_key(key)).await;
        }
    }

    async fn publish(&self, msg: Invalidation) {
        let Ok(bytes) = serde_json::to_vec(&msg) else { return };
        let channel = self.space.invalidation_channel();
        let _ = self
            .redis
            .call("PUBLISH", move |mut c| {
                async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(bytes)
                        .query_async::<i64>(&mut c)
                        .await
                }
                .boxed()
            })
            .await;
    }

    /// Reads the stale-if-error copy of `key`.
    pub async fn read_stale(&self, key: &CacheKey, range: &DateRange, pm: &PluginMetrics) -> Option<Found> {
        if let Some(f) = self.read_at(&self.space.stale(key.as_str()), range, pm).await {
            return Some(f);
        }
        // The memory layer keeps entries for TTL + stale window under the main key.
        self.memory.get(key.as_str()).map(|env| Found {
            env,
            layer: Layer::Memory,
        })
    }

    async fn read_at(&self, key: &str, range: &DateRange, pm: &PluginMetrics) -> Option<Found> {
        let k = key.to_owned();
        let got = self
            .redis
            .call("GET", move |mut c| {
                async move { redis::cmd("GET").arg(&k).query_async::<Option<Vec<u8>>>(&mut c).await }.boxed()
            })
            .await;
        match got {
            Ok(Some(bytes)) => match Envelope::decode(&bytes, range) {
                Ok(env) => Some(Found {
                    env: Arc::new(env),
                    layer: Layer::Redis,
                }),
                Err(e) => {
                    pm.errors.inc();
                    tracing::warn!(key, error = %e, "corrupt cache value in redis; treating it as a miss and overwriting it");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                if !matches!(e, StoreError::Skipped) {
                    pm.errors.inc();
                }
                self.memory.get(key).map(|env| Found {
                    env,
                    layer: Layer::Memory,
                })
            }
        }
    }

    /// Stores an entry in both layers. Returns the layer that will serve it.
    pub async fn write(
        &self,
        key: &CacheKey,
        plugin: &str,
        ticker: &str,
        env: Arc<Envelope>,
        pm: &PluginMetrics,
        release: Option<&LockGuard>,
    ) -> Layer {
        let stale = self.settings.load().stale_if_error;
        self.memory.insert(key.as_str(), Arc::clone(&env), stale);
        let ttl = Duration::from_millis(env.ttl_ms.max(1));
        let keep_stale = env.is_data() && !stale.is_zero();
        let bytes = env.encode();
        let mut pipe = redis::Pipeline::with_capacity(10);
        pipe.add_command(set_px(key.as_str(), &bytes, ttl.as_millis() as u64))
            .ignore();
        if keep_stale {
            let stale_key = self.space.stale(key.as_str());
            pipe.add_command(set_px(&stale_key, &bytes, (ttl + stale).as_millis() as u64))
                .ignore();
        }
        let index = self.space.ticker_index(plugin, ticker);
        let index_life = (ttl + stale + INDEX_SLACK).as_millis() as u64;
        pipe.cmd("SADD").arg(&index).arg(key.as_str()).ignore();
        pipe.cmd("PEXPIRE").arg(&index).arg(index_life).arg("GT").ignore();
        // PEXPIRE GT does nothing on a key without expiry: set one if missing.
        pipe.cmd("PEXPIRE").arg(&index).arg(index_life).arg("NX").ignore();
        if !self.space_is_cluster() {
            pipe.cmd("SADD")
                .arg(self.space.plugin_index(plugin))
                .arg(ticker)
                .ignore();
            pipe.cmd("SADD").arg(self.space.plugins_index()).arg(plugin).ignore();
        }
        if let Some(g) = release {
            Cache::release_in(&mut pipe, g);
        }
        let res = self
            .redis
            .call("SET", move |mut c| {
                async move { pipe.query_async::<()>(&mut c).await }.boxed()
            })
            .await;
        if self.space_is_cluster() && res.is_ok() {
            // Index sets of other slots: separate calls (a cluster pipeline
            // must not mix slots).
            for (set, member) in [
                (self.space.plugin_index(plugin), ticker.to_owned()),
                (self.space.plugins_index(), plugin.to_owned()),
            ] {
                let _ = self
                    .redis
                    .call("SADD", move |mut c| {
                        async move { redis::cmd("SADD").arg(set).arg(member).query_async::<()>(&mut c).await }.boxed()
                    })
                    .await;
            }
        }
        match res {
            Ok(()) => {
                if let Some(l1) = &self.l1 {
                    l1.insert(key, &env);
                }
                Layer::Redis
            }
            Err(e) => {
                if !matches!(e, StoreError::Skipped) {
                    pm.errors.inc();
                }
                Layer::Memory
            }
        }
    }

    /// Mirrors an entry another daemon stored into the memory layer, so this
    /// daemon can serve it during a later Redis outage.
    pub fn remember_locally(&self, key: &CacheKey, env: &Arc<Envelope>) {
        let stale = self.settings.load().stale_if_error;
        self.memory.insert(key.as_str(), Arc::clone(env), stale);
    }

    fn space_is_cluster(&self) -> bool {
        self.redis.config().cluster
    }

    /// Deletes entries matching `sel` from both layers without `KEYS`: the
    /// per-ticker index sets name every entry key. `known_plugins` widens a
    /// ticker-only selection to plugins the index may not list yet.
    /// Returns how many entries were deleted.
    pub async fn invalidate(&self, sel: &Selector, known_plugins: &[String]) -> Result<u64, StoreError> {
        let space = self.space.clone();
        let s = sel.clone();
        self.memory
            .remove_matching(move |k| CacheKey::from(k.to_owned()).matches(&space, &s));
        if let Some(l1) = &self.l1 {
            l1.remove_matching(&self.space, sel);
            self.publish(l1.message_for_selector(sel)).await;
        }

        let plugins: Vec<String> = match &sel.plugin {
            Some(p) => vec![p.to_string()],
            None => {
                let set = self.space.plugins_index();
                let mut names: Vec<String> = self
                    .redis
                    .call("SMEMBERS", move |mut c| {
                        async move { redis::cmd("SMEMBERS").arg(set).query_async::<Vec<String>>(&mut c).await }.boxed()
                    })
                    .await?;
                names.extend(known_plugins.iter().cloned());
                names.sort();
                names.dedup();
                names
            }
        };
        let mut deleted = 0u64;
        for plugin in plugins {
            let tickers: Vec<String> = match &sel.ticker {
                Some(t) => vec![t.to_string()],
                None => {
                    let set = self.space.plugin_index(&plugin);
                    self.redis
                        .call("SMEMBERS", move |mut c| {
                            async move { redis::cmd("SMEMBERS").arg(set).query_async::<Vec<String>>(&mut c).await }
                                .boxed()
                        })
                        .await?
                }
            };
            for ticker in tickers {
                deleted += self.invalidate_ticker(&plugin, &ticker, sel.range.as_ref()).await?;
            }
            if sel.ticker.is_none() && sel.range.is_none() {
                let set = self.space.plugin_index(&plugin);
                self.redis
                    .call("DEL", move |mut c| {
                        async move { redis::cmd("DEL").arg(set).query_async::<()>(&mut c).await }.boxed()
                    })
                    .await?;
            }
        }
        tracing::debug!(deleted, "invalidated");
        Ok(deleted)
    }

    async fn invalidate_ticker(
        &self,
        plugin: &str,
        ticker: &str,
        range: Option<&DateRange>,
    ) -> Result<u64, StoreError> {
        let index = self.space.ticker_index(plugin, ticker);
        let idx = index.clone();
        let members: Vec<String> = self
            .redis
            .call("SMEMBERS", move |mut c| {
                async move { redis::cmd("SMEMBERS").arg(idx).query_async::<Vec<String>>(&mut c).await }.boxed()
            })
            .await?;
        let targets: Vec<String> = members
            .into_iter()
            .filter(|k| range.is_none_or(|r| CacheKey::has_range(k, r)))
            .collect();
        if targets.is_empty() {
            return Ok(0);
        }
        let whole = range.is_none();
        let space = self.space.clone();
        let t = targets.clone();
        let deleted: u64 = self
            .redis
            .call("DEL", move |mut c| {
                async move {
                    // Entries and their stale copies share the hash tag in
                    // cluster mode, so one DEL per key set stays in one slot.
                    let mut pipe = redis::pipe();
                    pipe.cmd("DEL").arg(&t);
                    let stale: Vec<String> = t.iter().map(|k| space.stale(k)).collect();
                    pipe.cmd("DEL").arg(&stale).ignore();
                    if whole {
                        pipe.cmd("DEL").arg(&index).ignore();
                    } else {
                        pipe.cmd("SREM").arg(&index).arg(&t).ignore();
                    }
                    let (n,): (u64,) = pipe.query_async(&mut c).await?;
                    Ok(n)
                }
                .boxed()
            })
            .await?;
        Ok(deleted)
    }
}
