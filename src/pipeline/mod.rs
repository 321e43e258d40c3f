//! The request pipeline (README, "Cache behaviour"): validated request -> read the series'
//! coverage and bars for the range -> a hit, or one plugin call for the
//! smallest interval spanning every missing or stale date (single-flight
//! per (plugin, ticker) in this process and, through a short lock, across
//! daemons) -> output contract -> write -> merged answer. The HTTP API, the
//! CLI and the producer all go through [`Pipeline::get`].
//!
//! [`Flow`] holds the logic against the [`Store`] interface and the
//! [`Upstream`] of a plugin, so it is unit-tested with the in-process store
//! as a fake and a fake plugin under `tokio::time::pause`.

mod answer;
mod bulk;
mod plan;
mod singleflight;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

pub use answer::{Answer, CacheStatus};
pub use bulk::{Bulk, BulkOptions, MAX_BULK_TICKERS, error_line};
pub use singleflight::{Role, SingleFlight};

use crate::budget::Budget;
use crate::cache::series::{Coverage, Freshness, Snapshot, Span, Write, day_of};
use crate::cache::{Cache, FailureMarker, Invalidated, Layer, LockGuard, Read, Selector, SeriesId, Store};
use crate::error::FetchError;
use crate::metrics::{Metrics, PluginMetrics};
use crate::model::{Bars, DateRange, PluginName, Ticker};
use crate::plugin::{FetchArgs, Plugin, RawOutput, Registry};

/// One validated data request.
#[derive(Debug, Clone)]
pub struct DataRequest {
    pub plugin: PluginName,
    pub ticker: Ticker,
    pub range: DateRange,
    pub refresh: bool,
}

impl DataRequest {
    /// The one way an edge (HTTP, CLI) turns what a user typed into a
    /// request: the ticker is checked and upper-cased, the range defaulted
    /// (README "HTTP API": no dates is yesterday, a start alone runs to
    /// today) and checked. The plugin comes parsed, because an impossible
    /// plugin name is a 404 over HTTP and a usage error on the command line.
    pub fn from_parts(
        plugin: PluginName,
        ticker: &str,
        start: Option<&str>,
        end: Option<&str>,
        refresh: bool,
        today: chrono::NaiveDate,
    ) -> Result<Self, crate::model::InvalidField> {
        Ok(Self {
            plugin,
            ticker: Ticker::parse(ticker)?,
            range: DateRange::from_request(start, end, today)?,
            refresh,
        })
    }
}

/// What the pipeline needs of a plugin: one call.
pub trait Upstream: Send + Sync {
    fn call(&self, args: FetchArgs) -> BoxFuture<'static, Result<RawOutput, FetchError>>;

    /// Waits for a turn of the plugin's upstream budget (README, "Rate
    /// limits"), or says why there is none in time; without a budget, at once.
    fn admit(&self) -> BoxFuture<'static, Result<(), FetchError>> {
        async { Ok(()) }.boxed()
    }
}

/// A loaded plugin behind its upstream budget.
struct PluginCall(Arc<Plugin>, Arc<Budget>);

impl Upstream for PluginCall {
    fn call(&self, args: FetchArgs) -> BoxFuture<'static, Result<RawOutput, FetchError>> {
        let (p, budget) = (Arc::clone(&self.0), Arc::clone(&self.1));
        // An upstream refusal becomes a fleet-wide cool-down here.
        async move { budget.settle(&p, p.fetch(args).await).await }.boxed()
    }

    fn admit(&self) -> BoxFuture<'static, Result<(), FetchError>> {
        let (p, budget) = (Arc::clone(&self.0), Arc::clone(&self.1));
        async move { budget.admit(p.name.as_str(), &p.settings()).await }.boxed()
    }
}

/// The one place the pipeline calls a plugin. Admission checks (rate
/// limits, cool-down) wrap this; an error returned here is answered stale
/// when every date of the request has a copy within `stale_if_error`.
async fn call_plugin(up: &dyn Upstream, args: FetchArgs) -> Result<RawOutput, FetchError> {
    up.call(args).await
}

/// The knobs of one request, resolved once from plugin and cache settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub version: u32,
    pub fresh: Freshness,
    /// The fleet lock's life: a little more than the plugin's timeout, so a
    /// live holder never loses it mid-fetch.
    pub lock_ttl: Duration,
    pub stale_if_error: Duration,
    pub max_stored_bytes: u64,
    /// How long a series is worth keeping at all.
    pub keep: Duration,
    /// Whether an answer without bars is remembered (`negative_ttl > 0`).
    pub record_empty: bool,
}

/// The wall clock, or one that follows tokio's (paused) time in tests.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    #[cfg(test)]
    Tokio {
        base_ms: u64,
        start: tokio::time::Instant,
    },
}

impl Clock {
    #[cfg(test)]
    pub fn tokio_from(base_ms: u64) -> Self {
        Clock::Tokio {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => crate::cache::now_ms(),
            #[cfg(test)]
            Clock::Tokio { base_ms, start } => base_ms + start.elapsed().as_millis() as u64,
        }
    }
}

/// How often a daemon waiting on another daemon's lock looks again.
const LOCK_POLL: Duration = Duration::from_millis(15);

/// What a fetch (or a wait for one) left: the series as it stands for the
/// leader's range, and what was fetched.
#[derive(Debug)]
struct Landed {
    snap: Snapshot,
    window: DateRange,
    fetched: Option<DateRange>,
    layer: Layer,
    /// The plugin's own "no data" message, when it said so.
    no_data: Option<String>,
}

type FlightOut = Result<Arc<Landed>, FetchError>;

fn covers(outer: DateRange, inner: DateRange) -> bool {
    outer.start() <= inner.start() && inner.end() <= outer.end()
}

fn overlap_days(a: DateRange, b: DateRange) -> u64 {
    let (s, e) = (a.start().max(b.start()), a.end().min(b.end()));
    if s > e { 0 } else { (day_of(e) - day_of(s) + 1) as u64 }
}

pub struct Flow {
    store: Arc<dyn Store>,
    flights: SingleFlight<SeriesId, FlightOut>,
    clock: Clock,
}

impl Flow {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            store,
            flights: SingleFlight::default(),
            clock,
        })
    }

    pub fn inflight(&self) -> usize {
        self.flights.len()
    }

    async fn read(&self, id: &SeriesId, range: DateRange, pm: &PluginMetrics) -> Read {
        match self.store.read(id, range).await {
            Ok(r) => {
                if r.corrupt > 0 {
                    pm.errors.inc_by(u64::from(r.corrupt));
                }
                r
            }
            Err(e) => {
                pm.errors.inc();
                tracing::debug!(error = %e, "store read failed; treating the range as not cached");
                Read {
                    snapshot: Snapshot::default(),
                    layer: Layer::Memory,
                    corrupt: 0,
                }
            }
        }
    }

    /// Answers one request for a plugin.
    pub async fn answer(
        self: &Arc<Self>,
        req: &DataRequest,
        up: Arc<dyn Upstream>,
        policy: Policy,
        pm: Arc<PluginMetrics>,
    ) -> Result<Answer, FetchError> {
        let id = SeriesId {
            plugin: req.plugin.clone(),
            version: policy.version,
            ticker: req.ticker.clone(),
        };
        let range = req.range;
        let mut snap = Snapshot::default();
        let mut layer = Layer::Redis;
        if !req.refresh {
            if let Some(Ok(l)) = self.flights.join(&id).await
                && covers(l.window, range)
                && plan::gap(&l.snap, range, &policy.fresh, self.clock.now_ms()).is_none()
            {
                // A fetch covering this range was running here: its result
                // answers without a store read.
                pm.misses.inc();
                pm.coalesced.inc();
                return self.finish(req, &l.snap, l.fetched, l.layer, &policy, None, l.no_data.clone());
            }
            if let Some(hot) = self.store.read_hot(&id)
                && plan::gap(&hot, range, &policy.fresh, self.clock.now_ms()).is_none()
            {
                pm.hit_l1();
                return self.finish(req, &hot, None, Layer::L1, &policy, None, None);
            }
            let read = self.read(&id, range, &pm).await;
            if plan::gap(&read.snapshot, range, &policy.fresh, self.clock.now_ms()).is_none() {
                match read.layer {
                    Layer::Redis => pm.hits_redis.inc(),
                    Layer::Memory => pm.hits_memory.inc(),
                    Layer::L1 => pm.hit_l1(),
                }
                return self.finish(req, &read.snapshot, None, read.layer, &policy, None, None);
            }
            pm.misses.inc();
            layer = read.layer;
            snap = read.snapshot;
        }
        for _ in 0..8 {
            let this = Arc::clone(self);
            let (r, u, p, s) = (req.clone(), Arc::clone(&up), Arc::clone(&pm), snap.clone());
            let (out, role) = self
                .flights
                .run(
                    id.clone(),
                    !req.refresh,
                    move || async move { this.lead(r, u, policy, p, s, layer).await },
                    |panic| Err(FetchError::Internal(format!("fetch task failed: {panic}"))),
                )
                .await;
            if role == Role::Leader {
                return match out {
                    Ok(l) => self.finish(req, &l.snap, l.fetched, l.layer, &policy, None, l.no_data.clone()),
                    Err(e) => self.stale_or(e, req, &snap, layer, &policy, &pm),
                };
            }
            pm.coalesced.inc();
            if req.refresh {
                // A refresh fetches itself, after the fetch that was running.
                continue;
            }
            match out {
                Ok(l)
                    if covers(l.window, range)
                        && plan::gap(&l.snap, range, &policy.fresh, self.clock.now_ms()).is_none() =>
                {
                    return self.finish(req, &l.snap, l.fetched, l.layer, &policy, None, l.no_data.clone());
                }
                // The fetch this request waited for failed: answer its error
                // (or stale) rather than calling a failing upstream again.
                Err(e) => return self.stale_or(e, req, &snap, layer, &policy, &pm),
                Ok(l) => {
                    // Another range was fetched: read again, ask only what
                    // is still missing.
                    let read = self.read(&id, range, &pm).await;
                    if plan::gap(&read.snapshot, range, &policy.fresh, self.clock.now_ms()).is_none() {
                        return self.finish(req, &read.snapshot, l.fetched, read.layer, &policy, None, None);
                    }
                    layer = read.layer;
                    snap = read.snapshot;
                }
            }
        }
        Err(FetchError::Internal(format!(
            "{} {}: other fetches of this ticker kept running; retry",
            req.plugin, req.ticker
        )))
    }

    /// The answer for `req` from a snapshot. `fetched` is what the plugin
    /// call behind this answer covered; `stale` forces `X-Cache: STALE`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        req: &DataRequest,
        snap: &Snapshot,
        fetched: Option<DateRange>,
        layer: Layer,
        policy: &Policy,
        stale: Option<()>,
        no_data: Option<String>,
    ) -> Result<Answer, FetchError> {
        let now = self.clock.now_ms();
        let range = req.range;
        let fetched = fetched.filter(|f| overlap_days(*f, range) > 0);
        let a = plan::assemble(snap, range, &policy.fresh, fetched);
        if a.bars.is_empty() {
            return Err(FetchError::NoData(no_data.unwrap_or_else(|| {
                format!("plugin {} has no data for {} in {range}", req.plugin, req.ticker)
            })));
        }
        let status = match (stale, fetched) {
            (Some(()), _) => CacheStatus::Stale,
            (None, _) if req.refresh => CacheStatus::Bypass,
            (None, None) => CacheStatus::Hit,
            (None, Some(_)) if a.from_cache == 0 => CacheStatus::Miss,
            (None, Some(_)) => CacheStatus::Partial,
        };
        Ok(Answer {
            plugin: req.plugin.clone(),
            ticker: req.ticker.clone(),
            range,
            bars: a.bars,
            meta: snap.meta.clone(),
            fetched_at_ms: a.oldest_fetch_ms.unwrap_or(now),
            status,
            layer,
            age_s: a.oldest_cached_ms.map_or(0, |o| now.saturating_sub(o) / 1000),
            ttl_s: if stale.is_some() {
                0
            } else {
                a.first_stale_ms.map_or(0, |u| u.saturating_sub(now).div_ceil(1000))
            },
            fetched_days: fetched.map_or(0, |f| overlap_days(f, range)),
        })
    }

    /// stale-if-error: dates whose copies went stale less than
    /// `stale_if_error` ago stand in for a failed fetch, if every date of
    /// the request has one.
    fn stale_or(
        &self,
        err: FetchError,
        req: &DataRequest,
        snap: &Snapshot,
        layer: Layer,
        policy: &Policy,
        pm: &PluginMetrics,
    ) -> Result<Answer, FetchError> {
        let now = self.clock.now_ms();
        if !err.is_fetch_failure()
            || !plan::stale_servable(
                snap,
                req.range,
                &policy.fresh,
                now,
                policy.stale_if_error.as_millis() as u64,
            )
        {
            return Err(err);
        }
        let answer = self.finish(req, snap, None, layer, policy, Some(()), None)?;
        pm.stale.inc();
        tracing::warn!(
            plugin = %req.plugin, ticker = %req.ticker, range = %req.range, error = %err, age_s = answer.age_s,
            "fetch failed; serving the cached copies (stale-if-error)"
        );
        Ok(answer)
    }

    /// The leader's work: take the fleet lock (or wait while another daemon
    /// holds it, re-reading what it wrote), fetch what is still missing,
    /// store it, release.
    async fn lead(
        self: Arc<Self>,
        req: DataRequest,
        up: Arc<dyn Upstream>,
        policy: Policy,
        pm: Arc<PluginMetrics>,
        mut snap: Snapshot,
        mut layer: Layer,
    ) -> FlightOut {
        let id = SeriesId {
            plugin: req.plugin.clone(),
            version: policy.version,
            ticker: req.ticker.clone(),
        };
        let range = req.range;
        let give_up = tokio::time::Instant::now() + policy.lock_ttl * 2;
        let mut guard: Option<LockGuard> = None;
        let mut waited_since: Option<u64> = None;
        loop {
            // Redis cannot be asked: this daemon fetches on its own.
            let Ok(ans) = self.store.lock(&id, policy.lock_ttl).await else {
                break;
            };
            if let (Some(since), Some(f)) = (waited_since, &ans.failure)
                && f.at_ms >= since
            {
                if let Some(g) = &ans.guard {
                    let _ = self.store.unlock(&id, g, None).await;
                }
                pm.coalesced.inc();
                return Err(f.error.clone());
            }
            if !req.refresh {
                let theirs = ans
                    .coverage
                    .as_deref()
                    .and_then(|c| Coverage::parse(c).ok())
                    .unwrap_or_default()
                    .clip(range);
                if theirs != snap.coverage {
                    // Another writer moved the coverage since this request
                    // read it: read again before deciding what to ask (a
                    // damaged value was counted by the first read already).
                    if let Ok(read) = self.store.read(&id, range).await {
                        snap = read.snapshot;
                        layer = read.layer;
                    }
                }
            }
            if ans.guard.is_some() {
                guard = ans.guard;
                break;
            }
            let now = self.clock.now_ms();
            waited_since.get_or_insert(now);
            if !req.refresh && plan::gap(&snap, range, &policy.fresh, now).is_none() {
                pm.coalesced.inc();
                return Ok(Arc::new(Landed {
                    snap,
                    window: range,
                    fetched: None,
                    layer,
                    no_data: None,
                }));
            }
            if tokio::time::Instant::now() >= give_up {
                tracing::warn!(
                    plugin = %req.plugin, ticker = %req.ticker, waited = ?policy.lock_ttl * 2,
                    "another daemon held the fetch lock of this ticker too long; fetching without it"
                );
                break;
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
        if waited_since.is_some() {
            // This request waited for another daemon's fetch and asks only
            // what that one did not cover.
            pm.coalesced.inc();
        }
        let now = self.clock.now_ms();
        let gap = if req.refresh {
            Some(range)
        } else {
            plan::gap(&snap, range, &policy.fresh, now)
        };
        let Some(gap) = gap else {
            if let Some(g) = &guard {
                let _ = self.store.unlock(&id, g, None).await;
            }
            return Ok(Arc::new(Landed {
                snap,
                window: range,
                fetched: None,
                layer,
                no_data: None,
            }));
        };
        match self
            .fetch_and_store(
                &req,
                &id,
                gap,
                up.as_ref(),
                &policy,
                &pm,
                guard.as_ref(),
                &mut snap,
                layer,
            )
            .await
        {
            Ok((layer, no_data)) => Ok(Arc::new(Landed {
                snap,
                window: range,
                fetched: Some(gap),
                layer,
                no_data,
            })),
            Err(e) => {
                if let Some(g) = &guard {
                    let marker = e.is_fetch_failure().then(|| FailureMarker {
                        error: e.clone(),
                        at_ms: self.clock.now_ms(),
                    });
                    let _ = self.store.unlock(&id, g, marker.as_ref()).await;
                }
                Err(e)
            }
        }
    }

    /// One plugin call for `gap`, checked, stored, and applied to `snap`.
    /// Returns the layer the answer is kept in and the plugin's own "no
    /// data" message if it gave one.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_and_store(
        &self,
        req: &DataRequest,
        id: &SeriesId,
        gap: DateRange,
        up: &dyn Upstream,
        policy: &Policy,
        pm: &PluginMetrics,
        guard: Option<&LockGuard>,
        snap: &mut Snapshot,
        read_layer: Layer,
    ) -> Result<(Layer, Option<String>), FetchError> {
        let (p, t) = (req.plugin.as_str(), req.ticker.as_str());
        let args = FetchArgs {
            ticker: req.ticker.clone(),
            range: gap,
        };
        let days = overlap_days(gap, gap);
        up.admit().await?;
        let started = Instant::now();
        let out = call_plugin(up, args).await;
        let took = started.elapsed();
        pm.fetch.observe(took.as_secs_f64());
        pm.fetched_days.inc_by(days);
        let fetched_ms = self.clock.now_ms();
        let why = if req.refresh {
            "refresh"
        } else if gap == req.range {
            "miss"
        } else {
            "partial"
        };
        let (raw, no_data) = match out {
            Ok(raw) => (raw, None),
            Err(FetchError::NoData(m)) => (
                RawOutput {
                    bars: Vec::new(),
                    meta: serde_json::Map::new(),
                    coverage: None,
                },
                Some(m),
            ),
            Err(e) => {
                tracing::warn!(
                    plugin = p, ticker = t, asked = %gap, code = e.code(),
                    took_ms = took.as_millis() as u64, error = %e,
                    "plugin fetch failed; nothing cached"
                );
                return Err(e);
            }
        };
        let cover = match raw.coverage {
            Some((from, to)) => DateRange::new(from.min(gap.start()), to.max(gap.end())).unwrap_or(gap),
            None => gap,
        };
        let bars = Bars::validated(raw.bars, &cover).map_err(|e| {
            let err = FetchError::InvalidPluginOutput(format!("plugin {p}: {e}"));
            tracing::warn!(plugin = p, ticker = t, asked = %gap, error = %err, "plugin output breaks the contract; nothing cached (fix the plugin)");
            err
        })?;
        tracing::info!(
            plugin = p, ticker = t, asked = %gap, days, why, covered = %cover, bars = bars.len(),
            took_ms = took.as_millis() as u64,
            "plugin fetch"
        );
        let empty = bars.is_empty();
        let meta = (!empty).then(|| Bytes::from(serde_json::to_vec(&raw.meta).unwrap_or_else(|_| b"{}".to_vec())));
        let bars: Vec<_> = bars
            .into_vec()
            .into_iter()
            .map(|b| {
                let mut v = Vec::with_capacity(128);
                b.write_json(&mut v);
                (b.date, Bytes::from(v))
            })
            .collect();
        let w = Write {
            span: Span {
                from: cover.start(),
                to: cover.end(),
                fetched_ms,
                empty,
            },
            bars,
            meta,
        };
        snap.apply(&w);
        let release = async {
            if let Some(g) = guard {
                let _ = self.store.unlock(id, g, None).await;
            }
        };
        if empty && !policy.record_empty {
            release.await;
            return Ok((read_layer, no_data));
        }
        let size = w.payload_bytes() as u64;
        if size > policy.max_stored_bytes {
            pm.oversized.inc();
            tracing::warn!(
                plugin = p, ticker = t, asked = %gap, bytes = size, limit = policy.max_stored_bytes,
                "answer served but not cached: larger than cache.max_stored_bytes (raise it, or ask shorter ranges)"
            );
            release.await;
            return Ok((read_layer, no_data));
        }
        match self.store.write(id, &w, policy.keep, guard).await {
            Ok(written) => Ok((written.layer, no_data)),
            Err(e) => {
                pm.errors.inc();
                tracing::debug!(error = %e, "store write failed");
                release.await;
                Ok((Layer::Memory, no_data))
            }
        }
    }
}

pub struct Pipeline {
    registry: Arc<Registry>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    /// Upstream budgets (README, "Rate limits"): every plugin call goes through it.
    budget: Arc<Budget>,
    flow: Arc<Flow>,
}

impl Pipeline {
    pub fn new(registry: Arc<Registry>, cache: Arc<Cache>, metrics: Arc<Metrics>) -> Arc<Self> {
        let store: Arc<dyn Store> = Arc::clone(&cache) as Arc<dyn Store>;
        let budget = Arc::new(Budget::new(
            Arc::clone(cache.redis()),
            cache.keys().prefix(),
            Arc::clone(&metrics),
        ));
        Arc::new(Self {
            registry,
            budget,
            cache,
            metrics,
            flow: Flow::new(store, Clock::System),
        })
    }

    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
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
            Ok(p) => {
                let policy = self.policy(&p);
                self.flow
                    .answer(
                        req,
                        Arc::new(PluginCall(p, Arc::clone(&self.budget))),
                        policy,
                        Arc::clone(&pm),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        pm.lookup.observe(started.elapsed().as_secs_f64());
        match &res {
            Ok(_) => pm.success.inc(),
            Err(e) => pm.failure(e.code()),
        }
        res
    }

    fn policy(&self, plugin: &Plugin) -> Policy {
        let s = plugin.settings();
        let c = self.cache.settings();
        let fresh = Freshness::new(s.settle, s.settled_ttl, s.ttl, c.negative_ttl);
        Policy {
            version: s.cache_version,
            fresh,
            lock_ttl: s.timeout + Duration::from_secs(1),
            stale_if_error: c.stale_if_error,
            max_stored_bytes: c.max_stored_bytes,
            keep: fresh.keep_for(c.stale_if_error),
            record_empty: !c.negative_ttl.is_zero(),
        }
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

    /// Deletes cached series (see [`Cache::invalidate_selected`]).
    pub async fn invalidate(&self, sel: &Selector) -> Invalidated {
        let known: Vec<(PluginName, u32)> = self
            .registry
            .list()
            .iter()
            .filter_map(|s| s.current.as_ref().map(|p| (s.name.clone(), p.settings().cache_version)))
            .collect();
        self.cache.invalidate_selected(sel, &known).await
    }

    pub fn inflight_fetches(&self) -> usize {
        self.flow.inflight()
    }
}

#[cfg(test)]
mod tests;
