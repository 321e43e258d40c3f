//! The plugin runtime: sandboxed Lua states running `fetch(req)` on their own
//! threads, a pool per plugin, and the registry of loaded plugins.

mod convert;
mod files;
pub mod host;
mod manifest;
mod message;
mod output;
mod pattern;
mod registry;
mod sandbox;
mod settings;
mod state;
mod strlib;
mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use files::{PluginFile, list_plugin_files};
pub use manifest::Manifest;
pub use output::RawOutput;
pub use registry::{PluginSlot, Registry, ScanReport};
pub use settings::Settings;
pub use state::{FetchArgs, LoadProblem};

use crate::config::PluginOverrides;
use crate::error::FetchError;
use crate::model::PluginName;
use host::HostCtx;
use worker::Worker;

/// How long past its own timeout a fetch may go unanswered before its
/// worker is considered stuck (inside a C function the deadline cannot
/// reach) and the plugin is quarantined.
const WEDGE_GRACE: Duration = Duration::from_secs(1);

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A LuaLS annotation file (`---@meta`) describes the host API for editors;
/// it is not a plugin.
pub fn is_meta_file(source: &str) -> bool {
    source.trim_start().starts_with("---@meta")
}

/// One loaded version of one plugin.
pub struct Plugin {
    pub name: PluginName,
    pub version: String,
    pub loaded_at: DateTime<Utc>,
    pub manifest: Manifest,
    pub settings: Arc<ArcSwap<Settings>>,
    workers: Mutex<Vec<Arc<Worker>>>,
    permits: Arc<Semaphore>,
    permits_total: Mutex<usize>,
    /// Set when a fetch stayed stuck past its timeout: this version then
    /// answers 503 until it is reloaded, instead of starting new threads
    /// next to the stuck one.
    quarantine: std::sync::OnceLock<String>,
}

impl Plugin {
    /// Compiles and checks `source` in fresh states (one per worker).
    pub async fn load(
        name: PluginName,
        file: PathBuf,
        source: String,
        overrides: &PluginOverrides,
        default_ttl: Duration,
    ) -> Result<Arc<Self>, LoadProblem> {
        let version = sha256_hex(source.as_bytes());
        let source: Arc<str> = Arc::from(source);
        // Messages name the file relative to the plugins directory (plugins
        // sit directly in it): the daemon's own paths are no business of a client.
        let display = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        // Settings need the manifest, the manifest needs a load: start with
        // the overrides alone and fill in once the first state has loaded.
        let provisional = Settings::effective(&Manifest::default(), overrides, default_ttl);
        let settings = Arc::new(ArcSwap::from_pointee(provisional));
        let ctx = HostCtx {
            plugin: name.to_string(),
            settings: Arc::clone(&settings),
            http: host::http_client(),
        };
        let memory = settings.load().memory_limit;
        let (first, manifest) = Worker::start(Arc::clone(&source), display.clone(), ctx.clone(), memory, 0).await?;
        let effective = Settings::effective(&manifest, overrides, default_ttl);
        settings.store(Arc::new(effective.clone()));
        let mut workers = vec![first];
        for i in 1..effective.states {
            let (w, _) = Worker::start(Arc::clone(&source), display.clone(), ctx.clone(), memory, i).await?;
            workers.push(w);
        }
        Ok(Arc::new(Self {
            name,
            version,
            loaded_at: Utc::now(),
            manifest,
            permits: Arc::new(Semaphore::new(effective.max_concurrency)),
            permits_total: Mutex::new(effective.max_concurrency),
            settings,
            workers: Mutex::new(workers),
            quarantine: std::sync::OnceLock::new(),
        }))
    }

    /// Why this version is quarantined, if it is.
    pub fn quarantined(&self) -> Option<&str> {
        self.quarantine.get().map(String::as_str)
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Applies new `[plugins.<name>]` overrides without recompiling.
    pub fn apply_overrides(&self, overrides: &PluginOverrides, default_ttl: Duration) {
        let s = Settings::effective(&self.manifest, overrides, default_ttl);
        if let Ok(mut total) = self.permits_total.lock() {
            if s.max_concurrency > *total {
                self.permits.add_permits(s.max_concurrency - *total);
            } else if s.max_concurrency < *total {
                let shrink = (*total - s.max_concurrency) as u32;
                let permits = Arc::clone(&self.permits);
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many(shrink).await {
                        p.forget();
                    }
                });
            }
            *total = s.max_concurrency;
        }
        self.settings.store(Arc::new(s));
    }

    fn pick_worker(&self) -> Option<Arc<Worker>> {
        let workers = self.workers.lock().ok()?;
        workers
            .iter()
            .filter(|w| !w.is_wedged())
            .min_by_key(|w| w.inflight())
            .map(Arc::clone)
    }

    /// Runs one fetch under the plugin's concurrency limit and timeout.
    pub async fn fetch(self: &Arc<Self>, args: FetchArgs) -> Result<RawOutput, FetchError> {
        if let Some(why) = self.quarantined() {
            return Err(FetchError::PluginUnavailable(format!(
                "plugin {} is quarantined: {why}; fix the plugin and save it again, or POST /v1/reload",
                self.name
            )));
        }
        let s = self.settings.load_full();
        let started = Instant::now();
        let limit = humantime::format_duration(s.timeout);
        let _permit = match tokio::time::timeout(s.timeout, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return Err(FetchError::PluginUnavailable(format!(
                    "plugin {} is shutting down",
                    self.name
                )));
            }
            Err(_) => {
                return Err(FetchError::PluginTimeout(format!(
                    "plugin {}: max_concurrency ({}) fetches were already running for the whole timeout of {limit}",
                    self.name, s.max_concurrency
                )));
            }
        };
        let remaining = s.timeout.saturating_sub(started.elapsed());
        let Some(worker) = self.pick_worker() else {
            return Err(FetchError::PluginUnavailable(format!(
                "plugin {}: every Lua state is stuck past its timeout",
                self.name
            )));
        };
        // The deadline counts the wait for a permit; messages name the
        // configured timeout, not what was left of it.
        let ticker = args.ticker.clone();
        let (rx, _guard) = worker.submit(args, started + s.timeout, s.timeout);
        match tokio::time::timeout(remaining + WEDGE_GRACE, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(FetchError::PluginError(format!(
                "plugin {}: its Lua state stopped unexpectedly",
                self.name
            ))),
            Err(_) => {
                worker.mark_wedged();
                let why = format!(
                    "a fetch of {ticker} was still running {} after its timeout of {limit}",
                    humantime::format_duration(WEDGE_GRACE)
                );
                if self.quarantine.set(why.clone()).is_ok() {
                    tracing::error!(
                        plugin = %self.name, timeout = %limit, reason = %why,
                        "plugin quarantined: a fetch is stuck where its timeout cannot stop it; requests to it answer 503 until the file is saved again or POST /v1/reload. Please report the plugin code that did this"
                    );
                }
                Err(FetchError::PluginTimeout(format!(
                    "plugin {}: fetch did not finish within its timeout of {limit} (it is stuck; the plugin is quarantined until it is reloaded)",
                    self.name
                )))
            }
        }
    }
}

/// Compiles and checks one plugin file in this thread, for `tickerd check`
/// and for the hot reloader's "check before swap".
pub fn check_source(name: &str, file: &str, source: &str) -> Result<Manifest, LoadProblem> {
    let settings = Settings::effective(
        &Manifest::default(),
        &PluginOverrides::default(),
        Duration::from_secs(86400),
    );
    let ctx = HostCtx {
        plugin: name.to_owned(),
        settings: Arc::new(ArcSwap::from_pointee(settings.clone())),
        http: host::http_client(),
    };
    state::PluginState::load(source, file, &ctx, settings.memory_limit).map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin file cannot declare what `[plugins.<name>]` may not set: each
    /// out-of-range declaration fails the load at its line, naming the bound.
    #[test]
    fn declared_numbers_are_bounded_as_config_keys_are() {
        let fetch = "fetch = function(req) return { bars = {} } end";
        for (decl, wants) in [
            ("ttl = \"20000d\"", "expected 1s to"),
            ("timeout = \"2h\"", "expected 1ms to 10m"),
            ("settle = \"20000d\"", "expected 0s to"),
            ("settled_ttl = \"20000d\"", "expected 1s to"),
            ("max_wait = \"3d\"", "expected 0s to 1d"),
            ("max_concurrency = 1000000", "from 1 to 10000"),
            ("cache_version = 2000000000", "from 0 to 1000000"),
        ] {
            let src = format!("return {{\n  {fetch},\n  {decl},\n}}\n");
            match check_source("p", "p.lua", &src) {
                Err(p) => {
                    assert_eq!(p.line, 3, "{decl}: {p}");
                    assert!(p.message.contains(wants), "{decl}: {p}");
                }
                Ok(_) => panic!("{decl} was accepted"),
            }
        }
        let ok = format!("return {{ {fetch}, ttl = \"1h\", max_concurrency = 64, cache_version = 7 }}");
        assert!(check_source("p", "p.lua", &ok).is_ok());
    }

    /// A plugin whose only state never answers (stuck where the deadline
    /// cannot reach): the first fetch times out and quarantines the plugin,
    /// later fetches answer 503 at once and start no thread.
    #[tokio::test]
    async fn a_stuck_fetch_quarantines_the_plugin() {
        let overrides = PluginOverrides {
            timeout: Some(Duration::from_millis(100)),
            ..PluginOverrides::default()
        };
        let settings = Settings::effective(&Manifest::default(), &overrides, Duration::from_secs(60));
        let plugin = Arc::new(Plugin {
            name: PluginName::parse("stuck").expect("a valid name"),
            version: "v".into(),
            loaded_at: Utc::now(),
            manifest: Manifest::default(),
            permits: Arc::new(Semaphore::new(settings.max_concurrency)),
            permits_total: Mutex::new(settings.max_concurrency),
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            workers: Mutex::new(vec![Worker::stalled()]),
            quarantine: std::sync::OnceLock::new(),
        });
        let day = chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap();
        let args = || FetchArgs {
            ticker: crate::model::Ticker::parse("AAPL").unwrap(),
            range: crate::model::DateRange::new(day, day).unwrap(),
        };
        let started = Instant::now();
        match plugin.fetch(args()).await {
            Err(FetchError::PluginTimeout(m)) => assert!(m.contains("quarantined"), "{m}"),
            other => panic!("expected a timeout, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() >= WEDGE_GRACE);
        assert!(plugin.quarantined().is_some_and(|w| w.contains("AAPL")));
        let started = Instant::now();
        match plugin.fetch(args()).await {
            Err(FetchError::PluginUnavailable(m)) => assert!(m.contains("quarantined"), "{m}"),
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
