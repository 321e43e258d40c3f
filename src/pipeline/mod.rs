//! The request pipeline (README, "Cache behaviour"; docs/ARCHITECTURE.md,
//! "One request"): validated request -> cache key -> cache
//! read -> on a miss one plugin call (single-flight) -> output contract ->
//! cache write -> answer. The HTTP API, the CLI and the producer all go
//! through [`Pipeline::get`], so they count and cache the same way.

mod answer;
mod singleflight;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use answer::{Answer, CacheStatus};
pub use singleflight::{Role, SingleFlight};

use crate::cache::{
    Cache, CacheKey, DataDoc, Envelope, Layer, LockGuard, Payload, Selector, StoreError, Waited, now_ms,
};
use crate::error::FetchError;
use crate::metrics::{Metrics, PluginMetrics};
use crate::model::{Bars, DateRange, PluginName, Ticker, ymd_string};
use crate::plugin::{FetchArgs, Plugin, Registry};

/// One validated data request.
#[derive(Debug, Clone)]
pub struct DataRequest {
    pub plugin: PluginName,
    pub ticker: Ticker,
    pub range: DateRange,
    pub refresh: bool,
}

type FlightResult = Result<(Arc<Envelope>, Layer), FetchError>;

pub struct Pipeline {
    pub registry: Arc<Registry>,
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    flights: SingleFlight<CacheKey, FlightResult>,
}

impl Pipeline {
    pub fn new(registry: Arc<Registry>, cache: Arc<Cache>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            cache,
            metrics,
            flights: SingleFlight::default(),
        })
    }

    /// Answers one request, counting it in the request metrics.
    pub async fn get(self: &Arc<Self>, req: &DataRequest) -> Result<Answer, FetchError> {
        // Unknown names share one label value, so clients cannot grow the
        // metric series without bound ("(unknown)" is not a valid plugin name).
        let plugin = self.plugin(&req.plugin);
        let label = if matches!(plugin, Err(FetchError::PluginNotFound(_))) {
            "(unknown)"
        } else {
            req.plugin.as_str()
        };
        let pm = self.metrics.plugin(label);
        let started = Instant::now();
        pm.requests.inc();
        let res = match plugin {
            Ok(p) => self.answer(req, p, &pm).await,
            Err(e) => Err(e),
        };
        pm.lookup.observe(started.elapsed().as_secs_f64());
        match &res {
            Ok(_) => pm.success.inc(),
            Err(e) => pm.failure(e.code()),
        }
        res
    }

    fn plugin(&self, name: &PluginName) -> Result<Arc<Plugin>, FetchError> {
        let slot = self
            .registry
            .get(name.as_str())
            .ok_or_else(|| FetchError::PluginNotFound(name.to_string()))?;
        slot.current.clone().ok_or_else(|| {
            FetchError::PluginUnavailable(format!(
                "plugin {name} has never loaded successfully: {}",
                slot.last_error.as_deref().unwrap_or("unknown error")
            ))
        })
    }

    async fn answer(
        self: &Arc<Self>,
        req: &DataRequest,
        plugin: Arc<Plugin>,
        pm: &Arc<PluginMetrics>,
    ) -> Result<Answer, FetchError> {
        let settings = plugin.settings();
        let key = self
            .cache
            .keys()
            .entry(&req.plugin, settings.cache_version, &req.ticker, &req.range);

        if !req.refresh
            && let Some(result) = self.flights.join(&key).await
        {
            // A miss on this key is being fetched here already: wait for it
            // rather than ask the cache, which cannot have the answer yet.
            // In a storm on a cold key this spares every follower a Redis
            // round trip, and the leader's lock and fetch no longer queue
            // behind them.
            pm.misses.inc();
            pm.coalesced.inc();
            return self.flight_answer(result, req, &key, pm).await;
        }
        if !req.refresh
            && let Some(found) = self.cache.read(&key, &req.range, pm).await
        {
            let now = now_ms();
            if found.env.is_fresh(now) {
                match found.layer {
                    Layer::Redis => pm.hits_redis.inc(),
                    Layer::Memory => pm.hits_memory.inc(),
                    Layer::L1 => pm.hit_l1(),
                }
                if let Payload::NoData { message } = &found.env.payload {
                    return Err(FetchError::NoData(message.clone()));
                }
                return Ok(Answer {
                    age_s: found.env.age_ms(now) / 1000,
                    ttl_s: found.env.ttl_left_s(now),
                    env: found.env,
                    status: CacheStatus::Hit,
                    layer: found.layer,
                });
            }
        }
        if !req.refresh {
            pm.misses.inc();
        }

        let this = Arc::clone(self);
        let (r, k, p, pmc) = (req.clone(), key.clone(), Arc::clone(&plugin), Arc::clone(pm));
        // A refresh is not joinable: requests that arrive meanwhile read the
        // cache, which still holds a good answer, instead of waiting.
        let (result, role) = self
            .flights
            .run(
                key.clone(),
                !req.refresh,
                move || async move { this.fetch_and_store(&r, &k, &p, &pmc).await },
                |panic| Err(FetchError::Internal(format!("fetch task failed: {panic}"))),
            )
            .await;
        if role == Role::Follower {
            pm.coalesced.inc();
        }
        self.flight_answer(result, req, &key, pm).await
    }

    /// The answer from a fetch this request led or joined.
    async fn flight_answer(
        &self,
        result: FlightResult,
        req: &DataRequest,
        key: &CacheKey,
        pm: &PluginMetrics,
    ) -> Result<Answer, FetchError> {
        match result {
            Ok((env, layer)) => Ok(Answer {
                ttl_s: env.ttl_left_s(now_ms()),
                age_s: 0,
                env,
                status: if req.refresh {
                    CacheStatus::Bypass
                } else {
                    CacheStatus::Miss
                },
                layer,
            }),
            Err(e) if e.is_fetch_failure() => self.stale_or(e, req, key, pm).await,
            Err(e) => Err(e),
        }
    }

    /// stale-if-error: an expired copy within the window stands in for a failed fetch.
    async fn stale_or(
        &self,
        err: FetchError,
        req: &DataRequest,
        key: &CacheKey,
        pm: &PluginMetrics,
    ) -> Result<Answer, FetchError> {
        let window = self.cache.settings().stale_if_error;
        if window.is_zero() {
            return Err(err);
        }
        let Some(found) = self.cache.read_stale(key, &req.range, pm).await else {
            return Err(err);
        };
        let now = now_ms();
        let within = found.env.age_ms(now) < found.env.ttl_ms + window.as_millis() as u64;
        if !within || !found.env.is_data() {
            return Err(err);
        }
        pm.stale.inc();
        tracing::warn!(
            plugin = %req.plugin, ticker = %req.ticker, range = %req.range, error = %err,
            age_s = found.env.age_ms(now) / 1000,
            "fetch failed; serving the stale cached copy (stale-if-error)"
        );
        Ok(Answer {
            age_s: found.env.age_ms(now) / 1000,
            ttl_s: 0,
            env: found.env,
            status: CacheStatus::Stale,
            layer: found.layer,
        })
    }

    /// The leader's work: take the fleet lock (or wait for the daemon that
    /// holds it), fetch, store, release.
    async fn fetch_and_store(
        &self,
        req: &DataRequest,
        key: &CacheKey,
        plugin: &Arc<Plugin>,
        pm: &PluginMetrics,
    ) -> FlightResult {
        let settings = plugin.settings();
        // The lock outlives the plugin's own timeout a little, so a live
        // holder never loses it mid-fetch.
        let lock_ttl = settings.timeout + Duration::from_secs(1);
        let since = if req.refresh { now_ms() } else { 0 };
        let give_up = Instant::now() + lock_ttl * 2;
        let mut guard = None;
        while Instant::now() < give_up {
            match self.cache.try_lock(key, lock_ttl).await {
                Ok(Some(g)) => {
                    guard = Some(g);
                    break;
                }
                Ok(None) => match self.cache.wait_for_holder(key, &req.range, since, lock_ttl).await {
                    Waited::Value(found) => {
                        pm.coalesced.inc();
                        if let Payload::NoData { message } = &found.env.payload {
                            return Err(FetchError::NoData(message.clone()));
                        }
                        self.cache.remember_locally(key, &found.env);
                        return Ok((found.env, Layer::Redis));
                    }
                    Waited::Failed(e) => {
                        pm.coalesced.inc();
                        return Err(e);
                    }
                    Waited::Free => continue,
                },
                // Redis cannot be asked: this daemon fetches on its own.
                Err(_) => break,
            }
        }
        let result = self.fetch_uncached(req, key, plugin, pm, guard.as_ref()).await;
        // A stored answer (data, or a remembered no-data) released the lock in
        // its write's round trip; anything else releases it here.
        let released = match &result {
            Ok(_) => true,
            Err(FetchError::NoData(_)) => !self.cache.settings().negative_ttl.is_zero(),
            Err(_) => false,
        };
        if let Some(g) = guard
            && !released
        {
            if let Err(e) = &result
                && e.is_fetch_failure()
            {
                self.cache.publish_failure(key, e, Duration::from_secs(2)).await;
            }
            self.cache.unlock(g).await;
        }
        result
    }

    async fn fetch_uncached(
        &self,
        req: &DataRequest,
        key: &CacheKey,
        plugin: &Arc<Plugin>,
        pm: &PluginMetrics,
        lock: Option<&LockGuard>,
    ) -> FlightResult {
        let settings = plugin.settings();
        let args = FetchArgs {
            ticker: req.ticker.to_string(),
            start: ymd_string(req.range.start()),
            end: ymd_string(req.range.end()),
        };
        let started = Instant::now();
        let out = plugin.fetch(args).await;
        let took = started.elapsed();
        pm.fetch.observe(took.as_secs_f64());
        let (p, t) = (req.plugin.as_str(), req.ticker.as_str());
        let raw = match out {
            Ok(raw) => raw,
            Err(FetchError::NoData(m)) => return Err(self.remember_no_data(key, p, t, m, pm, lock).await),
            Err(e) => {
                tracing::warn!(
                    plugin = p, ticker = t, range = %req.range, code = e.code(),
                    took_ms = took.as_millis() as u64, error = %e,
                    "plugin fetch failed; nothing cached"
                );
                return Err(e);
            }
        };
        let bars = Bars::validated(raw.bars, &req.range).map_err(|e| {
            let err = FetchError::InvalidPluginOutput(format!("plugin {p}: {e}"));
            tracing::warn!(plugin = p, ticker = t, range = %req.range, error = %err, "plugin output breaks the contract; nothing cached (fix the plugin)");
            err
        })?;
        if bars.is_empty() {
            let msg = format!("plugin {p} has no data for {t} in {}", req.range);
            return Err(self.remember_no_data(key, p, t, msg, pm, lock).await);
        }
        let doc = DataDoc {
            plugin: p.to_owned(),
            ticker: t.to_owned(),
            start: ymd_string(req.range.start()),
            end: ymd_string(req.range.end()),
            bars,
            meta: raw.meta,
            fetched_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let env = Envelope::data(doc, settings.ttl);
        let layer = self.cache.write(key, p, t, Arc::clone(&env), pm, lock).await;
        if req.refresh {
            self.cache.announce_rewrite(key).await;
        }
        tracing::debug!(plugin = p, ticker = t, range = %req.range, took_ms = took.as_millis() as u64, layer = layer.as_str(), "fetched and cached");
        Ok((env, layer))
    }

    async fn remember_no_data(
        &self,
        key: &CacheKey,
        plugin: &str,
        ticker: &str,
        message: String,
        pm: &PluginMetrics,
        lock: Option<&LockGuard>,
    ) -> FetchError {
        let ttl = self.cache.settings().negative_ttl;
        if !ttl.is_zero() {
            let env = Envelope::no_data(message.clone(), ttl);
            self.cache.write(key, plugin, ticker, env, pm, lock).await;
        }
        FetchError::NoData(message)
    }

    /// Deletes cache entries; see [`Cache::invalidate`].
    pub async fn invalidate(&self, sel: &Selector) -> Result<u64, StoreError> {
        self.cache.invalidate(sel, &self.registry.names()).await
    }

    pub fn inflight_fetches(&self) -> usize {
        self.flights.len()
    }
}
