//! Prometheus metrics in one registry, served at `/metrics`.
//!
//! The first seven names are those of the Python module tickerd replaces, so
//! existing dashboards and alerts keep working; each gains a `plugin` label.
//! Label lookups are resolved once per plugin and kept in [`PluginMetrics`],
//! so the hit path does no hashing of label values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_errors: IntCounterVec,
    lookup_duration: HistogramVec,
    requests: IntCounterVec,
    requests_success: IntCounterVec,
    requests_failure: IntCounterVec,
    fetch_duration: HistogramVec,
    reloads: IntCounterVec,
    stale_served: IntCounterVec,
    coalesced: IntCounterVec,
    stream_published: IntCounterVec,
    stream_errors: IntCounterVec,
    write_errors: IntCounterVec,
    oversized: IntCounterVec,
    fetched_days: IntCounterVec,
    pub plugins_loaded: IntGauge,
    pub redis_up: IntGauge,
    /// Times the Redis breaker opened (a failed call made the daemon skip
    /// Redis for the back-off interval), so an outage, or a breaker that
    /// opens when it should not, shows on a dashboard and not only in logs.
    pub redis_breaker_trips: IntCounter,
    /// Client connections open now (README, "Connections").
    pub http_connections_open: IntGauge,
    /// Connections closed at once because the cap was reached.
    pub http_connections_rejected: IntCounter,
    per_plugin: RwLock<HashMap<String, Arc<PluginMetrics>>>,
    upstream_rate_limited: IntCounterVec,
    upstream_wait: HistogramVec,
    plugin_cooldown: GaugeVec,
    /// When each known cool-down ends; the gauge is set from it at scrape time.
    cooldowns: Mutex<HashMap<String, Instant>>,
}

impl Totals {
    pub fn hits(&self) -> u64 {
        self.hits_redis + self.hits_memory + self.hits_l1
    }

    /// Hits over all lookups (hits + misses); `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.hits() + self.misses;
        (lookups > 0).then(|| self.hits() as f64 / lookups as f64)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub hits_redis: u64,
    pub hits_memory: u64,
    pub hits_l1: u64,
    pub misses: u64,
    pub errors: u64,
    pub stale: u64,
    pub coalesced: u64,
}

/// Pre-resolved children for one plugin.
pub struct PluginMetrics {
    pub hits_redis: IntCounter,
    pub hits_memory: IntCounter,
    pub misses: IntCounter,
    pub errors: IntCounter,
    pub lookup: Histogram,
    pub requests: IntCounter,
    pub success: IntCounter,
    pub fetch: Histogram,
    pub stale: IntCounter,
    pub coalesced: IntCounter,
    /// Answers served but not cached because they were too large.
    pub oversized: IntCounter,
    /// Days asked of the plugin (what the range store saves).
    pub fetched_days: IntCounter,
    failure: IntCounterVec,
    hits: IntCounterVec,
    l1: std::sync::OnceLock<IntCounter>,
    plugin: String,
}

impl PluginMetrics {
    /// L1 hits get their own `cache_type="l1"` series, created on first use
    /// so it only appears where L1 is configured.
    pub fn hit_l1(&self) {
        self.l1
            .get_or_init(|| self.hits.with_label_values(&[self.plugin.as_str(), "l1"]))
            .inc();
    }

    pub fn failure(&self, reason: &str) {
        self.failure.with_label_values(&[self.plugin.as_str(), reason]).inc();
    }
}

const LOOKUP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is static");
    reg.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn histogram(reg: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &["plugin"])
        .expect("metric definition is static");
    reg.register(Box::new(h.clone())).expect("metric names are unique");
    h
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("metric definition is static");
    reg.register(Box::new(g.clone())).expect("metric names are unique");
    g
}

/// Time waited for a turn of an upstream budget: from none to a minute.
const WAIT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

fn plain_counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric definition is static");
    reg.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric definition is static");
    reg.register(Box::new(g.clone())).expect("metric names are unique");
    g
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        Arc::new(Self {
            cache_hits: counter(
                &r,
                "cache_hits_total",
                "Requests answered from a cache layer",
                &["plugin", "cache_type"],
            ),
            cache_misses: counter(
                &r,
                "cache_misses_total",
                "Requests that found no fresh cache entry",
                &["plugin"],
            ),
            cache_errors: counter(
                &r,
                "cache_errors_total",
                "Cache reads or writes that failed or found a corrupt value",
                &["plugin"],
            ),
            lookup_duration: histogram(
                &r,
                "cache_lookup_duration_seconds",
                "Whole request through the cache, in seconds",
                LOOKUP_BUCKETS,
            ),
            requests: counter(&r, "stock_requests_total", "Data requests", &["plugin"]),
            requests_success: counter(
                &r,
                "stock_requests_success_total",
                "Data requests answered with data",
                &["plugin"],
            ),
            requests_failure: counter(
                &r,
                "stock_requests_failure_total",
                "Data requests that failed, by reason (error code)",
                &["plugin", "reason"],
            ),
            fetch_duration: histogram(
                &r,
                "plugin_fetch_duration_seconds",
                "Plugin fetch calls, in seconds",
                LOOKUP_BUCKETS,
            ),
            reloads: counter(
                &r,
                "plugin_reloads_total",
                "Plugin loads and reloads by result (ok, error, unloaded)",
                &["plugin", "result"],
            ),
            stale_served: counter(
                &r,
                "cache_stale_served_total",
                "Expired entries served because the fetch failed",
                &["plugin"],
            ),
            coalesced: counter(
                &r,
                "fetch_coalesced_total",
                "Requests that waited for another request's fetch of the same key",
                &["plugin"],
            ),
            stream_published: counter(
                &r,
                "stream_published_total",
                "Records the producer published: added to a Redis stream, or acknowledged by Kafka",
                &["stream", "sink"],
            ),
            stream_errors: counter(
                &r,
                "stream_publish_errors_total",
                "Records the producer could not publish, by reason (redis, queue_full, timeout, delivery, shutdown)",
                &["stream", "sink", "reason"],
            ),
            write_errors: counter(
                &r,
                "cache_write_errors_total",
                "Redis cache writes that failed, by reason (oom, timeout, denied, redis_down, error)",
                &["plugin", "reason"],
            ),
            oversized: counter(
                &r,
                "cache_oversized_total",
                "Answers served but not cached because they exceed cache.max_stored_bytes",
                &["plugin"],
            ),
            fetched_days: counter(
                &r,
                "plugin_fetched_days_total",
                "Days asked of plugins (the span of each plugin call)",
                &["plugin"],
            ),
            plugins_loaded: gauge(&r, "plugins_loaded", "Plugins currently loaded and serving"),
            redis_up: gauge(
                &r,
                "redis_up",
                "1 while Redis answers, 0 while the memory layer stands in",
            ),
            upstream_rate_limited: counter(
                &r,
                "upstream_rate_limited_total",
                "Plugin calls not started because of the upstream budget (reason=budget), a cool-down (reason=cooldown), or refused by the upstream itself (reason=upstream)",
                &["plugin", "reason"],
            ),
            upstream_wait: histogram(
                &r,
                "upstream_wait_seconds",
                "Time plugin calls waited for a turn of their rate_limit, in seconds",
                WAIT_BUCKETS,
            ),
            plugin_cooldown: gauge_vec(
                &r,
                "plugin_cooldown_seconds",
                "Seconds left of the plugin's cool-down after an upstream refusal (0: none)",
                &["plugin"],
            ),
            cooldowns: Mutex::new(HashMap::new()),
            redis_breaker_trips: plain_counter(
                &r,
                "redis_breaker_trips_total",
                "Times a failed Redis call opened the breaker (Redis skipped for the back-off interval)",
            ),
            http_connections_open: gauge(&r, "http_connections_open", "Client HTTP connections open now"),
            http_connections_rejected: plain_counter(
                &r,
                "http_connections_rejected_total",
                "Client connections closed at once because the connection cap (max_connections, or the open-files limit) was reached",
            ),
            registry: r,
            per_plugin: RwLock::new(HashMap::new()),
        })
    }

    pub fn plugin(&self, plugin: &str) -> Arc<PluginMetrics> {
        if let Some(m) = self.per_plugin.read().ok().and_then(|g| g.get(plugin).cloned()) {
            return m;
        }
        let m = Arc::new(PluginMetrics {
            hits_redis: self.cache_hits.with_label_values(&[plugin, "redis"]),
            hits_memory: self.cache_hits.with_label_values(&[plugin, "memory"]),
            misses: self.cache_misses.with_label_values(&[plugin]),
            errors: self.cache_errors.with_label_values(&[plugin]),
            lookup: self.lookup_duration.with_label_values(&[plugin]),
            requests: self.requests.with_label_values(&[plugin]),
            success: self.requests_success.with_label_values(&[plugin]),
            fetch: self.fetch_duration.with_label_values(&[plugin]),
            stale: self.stale_served.with_label_values(&[plugin]),
            coalesced: self.coalesced.with_label_values(&[plugin]),
            oversized: self.oversized.with_label_values(&[plugin]),
            fetched_days: self.fetched_days.with_label_values(&[plugin]),
            failure: self.requests_failure.clone(),
            hits: self.cache_hits.clone(),
            l1: std::sync::OnceLock::new(),
            plugin: plugin.to_owned(),
        });
        if let Ok(mut g) = self.per_plugin.write() {
            g.entry(plugin.to_owned()).or_insert_with(|| m.clone());
        }
        m
    }

    pub fn reload(&self, plugin: &str, result: &str) {
        self.reloads.with_label_values(&[plugin, result]).inc();
    }

    /// `sink` is `redis-stream` or `kafka`; `stream` the stream key or topic.
    pub fn stream_published(&self, stream: &str, sink: &str) {
        self.stream_published.with_label_values(&[stream, sink]).inc();
    }

    pub fn cache_write_error(&self, plugin: &str, reason: &str) {
        self.write_errors.with_label_values(&[plugin, reason]).inc();
    }

    pub fn stream_error(&self, stream: &str, sink: &str, reason: &str) {
        self.stream_errors.with_label_values(&[stream, sink, reason]).inc();
    }

    /// `upstream_rate_limited_total{plugin,reason}`; reason is `budget`,
    /// `cooldown` or `upstream`.
    pub fn rate_limited(&self, plugin: &str, reason: &str) {
        self.upstream_rate_limited.with_label_values(&[plugin, reason]).inc();
    }

    pub fn upstream_wait(&self, plugin: &str) -> Histogram {
        self.upstream_wait.with_label_values(&[plugin])
    }

    /// Records when `plugin`'s cool-down ends (`None`: it is over).
    pub fn set_cooldown_until(&self, plugin: &str, until: Option<Instant>) {
        if let Ok(mut m) = self.cooldowns.lock() {
            match until {
                Some(t) => {
                    let e = m.entry(plugin.to_owned()).or_insert(t);
                    *e = (*e).max(t);
                }
                None => {
                    m.remove(plugin);
                }
            }
        }
        self.plugin_cooldown.with_label_values(&[plugin]).set(0.0);
        self.refresh_cooldowns();
    }

    /// Sets every `plugin_cooldown_seconds` to the seconds left now.
    fn refresh_cooldowns(&self) {
        let Ok(m) = self.cooldowns.lock() else { return };
        let now = Instant::now();
        for (plugin, until) in m.iter() {
            let left = until.saturating_duration_since(now).as_secs_f64();
            self.plugin_cooldown.with_label_values(&[plugin]).set(left.ceil());
        }
    }

    /// Sums over plugins, for `/v1/stats`.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        if let Ok(map) = self.per_plugin.read() {
            for m in map.values() {
                t.hits_redis += m.hits_redis.get();
                t.hits_memory += m.hits_memory.get();
                t.hits_l1 += m.l1.get().map(|c| c.get()).unwrap_or(0);
                t.misses += m.misses.get();
                t.errors += m.errors.get();
                t.stale += m.stale.get();
                t.coalesced += m.coalesced.get();
            }
        }
        t
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh_cooldowns();
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
