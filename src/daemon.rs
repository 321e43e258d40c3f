//! The assembled daemon: config, metrics, cache, plugin registry and request
//! pipeline, plus what reloads them. `serve` and the one-shot CLI commands
//! build the same thing, so `tickerd fetch` goes through the same cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::budget::Budget;
use crate::cache::{Cache, Invalidated, Selector};
use crate::config::{Config, ConfigError, Flags};
use crate::error::FetchError;
use crate::metrics::Metrics;
use crate::model::{DateRange, PluginName, Ticker};
use crate::pipeline::{Answer, Bulk, BulkOptions, DataRequest, Pipeline};
use crate::plugin::{Registry, ScanReport};

/// The edges (HTTP, CLI, producer, watcher) reach the parts through these
/// methods only, so a request takes the same road whichever edge it came by.
pub(crate) struct Daemon {
    config: ArcSwap<Config>,
    flags: Flags,
    metrics: Arc<Metrics>,
    cache: Arc<Cache>,
    registry: Arc<Registry>,
    pipeline: Arc<Pipeline>,
    started: Instant,
    ready: AtomicBool,
}

/// The settings read once at start, listed once: the socket, the HTTP
/// threads and connection limits, the Redis client, the memory layer's
/// size, the admin token and the producer. A reload that changes one keeps
/// the running value and logs that a restart is needed; the rest of the
/// config (`[cache]` freshness, `[plugins.*]`, `max_range_days`) applies.
macro_rules! restart_only {
    ($($label:literal: $($field:ident).+;)*) => {
        /// Names of the restart-only settings that differ.
        fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
            let mut changed = Vec::new();
            $(if old.$($field).+ != new.$($field).+ {
                changed.push($label);
            })*
            changed
        }

        /// Puts back the running values of the restart-only settings.
        fn keep_restart_only(old: &Config, new: &mut Config) {
            $(new.$($field).+ = old.$($field).+.clone();)*
        }
    };
}

restart_only! {
    "listen": listen;
    "http_threads": http_threads;
    "http.max_connections": http.max_connections;
    "http.header_read_timeout": http.header_read_timeout;
    "http.idle_timeout": http.idle_timeout;
    "http.write_timeout": http.write_timeout;
    "redis": redis;
    "plugins_dir": plugins_dir;
    "admin_token": admin_token;
    "cache.memory_max_entries": cache.memory_max_entries;
    "watch": watch;
    "kafka": kafka;
}

/// What a reload did, as `POST /v1/reload` reports it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ReloadOutcome {
    pub config: ConfigReload,
    pub plugins: ScanReport,
}

/// What a reload did to the config file, as `POST /v1/reload` says it:
/// `"reloaded"`, `"unchanged"`, `"no config file"` or `"error: ..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigReload {
    Reloaded,
    Unchanged,
    NoConfigFile,
    Failed(String),
}

impl std::fmt::Display for ConfigReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigReload::Reloaded => f.write_str("reloaded"),
            ConfigReload::Unchanged => f.write_str("unchanged"),
            ConfigReload::NoConfigFile => f.write_str("no config file"),
            ConfigReload::Failed(e) => write!(f, "error: {e}"),
        }
    }
}

impl serde::Serialize for ConfigReload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Daemon {
    pub(crate) fn new(config: Config, flags: Flags) -> Arc<Self> {
        let metrics = Metrics::new();
        let cache = Arc::new(Cache::new(
            config.redis.clone(),
            config.cache.clone(),
            Arc::clone(&metrics),
        ));
        let registry = Registry::new(
            config.plugins_dir.clone(),
            config.plugins.clone(),
            config.cache.default_ttl,
            Arc::clone(&metrics),
        );
        let pipeline = Pipeline::new(Arc::clone(&registry), Arc::clone(&cache), Arc::clone(&metrics));
        Arc::new(Self {
            config: ArcSwap::from_pointee(config),
            flags,
            metrics,
            cache,
            registry,
            pipeline,
            started: Instant::now(),
            ready: AtomicBool::new(false),
        })
    }

    /// The config in use (restart-only settings as started, the rest as
    /// last reloaded). Cheap: for the request path.
    pub(crate) fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The config in use, to keep beyond a request.
    pub(crate) fn config_full(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(crate) fn budget(&self) -> &Arc<Budget> {
        self.pipeline.budget()
    }

    /// When this process started (for `uptime_s`).
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// One request through the cache and, where needed, its plugin.
    pub(crate) async fn get(&self, req: &DataRequest) -> Result<Answer, FetchError> {
        self.pipeline.get(req).await
    }

    /// Many tickers of one plugin, answered as each completes.
    pub(crate) fn get_many(
        &self,
        plugin: &PluginName,
        tickers: Vec<Ticker>,
        range: DateRange,
        opts: BulkOptions,
    ) -> Result<Bulk, FetchError> {
        self.pipeline.get_many(plugin, tickers, range, opts)
    }

    /// Removes what `sel` selects from every layer.
    pub(crate) async fn invalidate(&self, sel: &Selector) -> Invalidated {
        self.pipeline.invalidate(sel).await
    }

    /// Plugin calls running now, in this process.
    pub(crate) fn inflight_fetches(&self) -> usize {
        self.pipeline.inflight_fetches()
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// First connection attempt and first plugin scan; the daemon is ready after.
    pub(crate) async fn start(&self) -> ScanReport {
        match self.cache.redis().connect().await {
            Ok(()) => self.pipeline.budget().load().await,
            Err(e) => tracing::warn!(
                redis = %self.cache.redis().display_url(), error = %e,
                "redis is not reachable at start; serving from the in-process memory cache and reconnecting in the background"
            ),
        }
        let report = self.registry.rescan().await;
        self.ready.store(true, Ordering::Release);
        report
    }

    /// Re-reads the config file and applies what can change at run time:
    /// `[plugins.*]` and `[cache]`. Anything else logs that a restart is needed.
    pub(crate) fn reload_config(&self) -> Result<bool, ConfigError> {
        let mut new = Config::load(&self.flags)?;
        let old = self.config.load_full();
        let restart = restart_needed(&old, &new);
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join(", "),
                "config changed settings that only take effect after a restart; restart tickerd to apply them"
            );
        }
        let changed = new.plugins != old.plugins || new.cache != old.cache;
        if changed {
            self.cache.set_settings(new.cache.clone());
            self.registry.set_overrides(new.plugins.clone(), new.cache.default_ttl);
            tracing::info!("config reloaded: [cache] and [plugins.*] applied");
        }
        // The settings that need a restart stay as they are in use.
        keep_restart_only(&old, &mut new);
        self.config.store(Arc::new(new));
        Ok(changed)
    }

    /// `SIGHUP` and `POST /v1/reload`: config first, then every plugin file.
    pub(crate) async fn reload_all(&self) -> ReloadOutcome {
        let config = if self.config.load().config_file.is_some() {
            match self.reload_config() {
                Ok(true) => ConfigReload::Reloaded,
                Ok(false) => ConfigReload::Unchanged,
                Err(e) => {
                    tracing::error!(error = %e, "config reload failed; keeping the running config (fix the file and reload again)");
                    ConfigReload::Failed(e.to_string())
                }
            }
        } else {
            ConfigReload::NoConfigFile
        };
        ReloadOutcome {
            config,
            plugins: self.registry.rescan().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn config(text: &str) -> Config {
        Config::resolve(&Flags::default(), &HashMap::new(), None, Some(text)).expect("test config")
    }

    #[test]
    fn restart_only_settings_are_named_and_kept_the_rest_applies() {
        let old = config("listen = \"127.0.0.1:7001\"\n[http]\nmax_connections = 100\nmax_range_days = 10\n");
        let mut new = config(
            "listen = \"127.0.0.1:7002\"\n[http]\nmax_connections = 200\nmax_range_days = 20\n[cache]\ndefault_ttl = \"5m\"\n",
        );
        assert_eq!(restart_needed(&old, &new), vec!["listen", "http.max_connections"]);
        keep_restart_only(&old, &mut new);
        assert_eq!(new.listen, old.listen);
        assert_eq!(new.http.max_connections, 100);
        // Reloadable settings keep their new values.
        assert_eq!(new.http.max_range_days, 20);
        assert_eq!(new.cache.default_ttl, Duration::from_secs(300));
        assert!(restart_needed(&old, &new).is_empty());
    }

    #[test]
    fn a_reload_outcome_reads_as_before() {
        let json = |c: ConfigReload| serde_json::to_string(&c).unwrap();
        assert_eq!(json(ConfigReload::Reloaded), "\"reloaded\"");
        assert_eq!(json(ConfigReload::Unchanged), "\"unchanged\"");
        assert_eq!(json(ConfigReload::NoConfigFile), "\"no config file\"");
        assert_eq!(json(ConfigReload::Failed("bad key".into())), "\"error: bad key\"");
    }
}
