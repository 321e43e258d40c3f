//! The assembled daemon: config, metrics, cache, plugin registry and request
//! pipeline, plus what reloads them. `serve` and the one-shot CLI commands
//! build the same thing, so `tickerd fetch` goes through the same cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::cache::Cache;
use crate::config::{Config, ConfigError, Flags};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::plugin::{Registry, ScanReport};

pub(crate) struct Daemon {
    pub config: ArcSwap<Config>,
    pub flags: Flags,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<Cache>,
    pub registry: Arc<Registry>,
    pub pipeline: Arc<Pipeline>,
    pub started: Instant,
    ready: AtomicBool,
}

/// What a reload did, as `POST /v1/reload` reports it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ReloadOutcome {
    pub config: String,
    pub plugins: ScanReport,
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

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// First connection attempt and first plugin scan; the daemon is ready after.
    pub(crate) async fn start(&self) -> ScanReport {
        match self.cache.redis().connect().await {
            Ok(()) => self.pipeline.budget.load().await,
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
        let new = Config::load(&self.flags)?;
        let old = self.config.load_full();
        let mut restart = Vec::new();
        if new.listen != old.listen {
            restart.push("listen");
        }
        if new.redis != old.redis {
            restart.push("redis");
        }
        if new.http_threads != old.http_threads {
            restart.push("http_threads");
        }
        if new.plugins_dir != old.plugins_dir {
            restart.push("plugins_dir");
        }
        if new.admin_token != old.admin_token {
            restart.push("admin_token");
        }
        if new.cache.memory_max_entries != old.cache.memory_max_entries {
            restart.push("cache.memory_max_entries");
        }
        if new.watch != old.watch {
            restart.push("watch");
        }
        if new.kafka != old.kafka {
            restart.push("kafka");
        }
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
        // Keep the settings that need a restart as they are in use.
        let mut merged = new;
        merged.listen = old.listen;
        merged.http_threads = old.http_threads;
        merged.redis = old.redis.clone();
        merged.plugins_dir = old.plugins_dir.clone();
        merged.admin_token = old.admin_token.clone();
        merged.cache.memory_max_entries = old.cache.memory_max_entries;
        merged.watch = old.watch.clone();
        merged.kafka = old.kafka.clone();
        self.config.store(Arc::new(merged));
        Ok(changed)
    }

    /// `SIGHUP` and `POST /v1/reload`: config first, then every plugin file.
    pub(crate) async fn reload_all(&self) -> ReloadOutcome {
        let config = if self.config.load().config_file.is_some() {
            match self.reload_config() {
                Ok(true) => "reloaded".to_owned(),
                Ok(false) => "unchanged".to_owned(),
                Err(e) => {
                    tracing::error!(error = %e, "config reload failed; keeping the running config (fix the file and reload again)");
                    format!("error: {e}")
                }
            }
        } else {
            "no config file".to_owned()
        };
        ReloadOutcome {
            config,
            plugins: self.registry.rescan().await,
        }
    }
}
