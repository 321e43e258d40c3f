//! The plugin runtime: sandboxed Lua states running `fetch(req)` on their own
//! threads, a pool per plugin, and the registry of loaded plugins.

mod convert;
pub mod host;
mod manifest;
mod output;
mod registry;
mod sandbox;
mod settings;
mod state;
mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use manifest::Manifest;
pub use output::RawOutput;
pub use registry::{PluginSlot, PluginStatus, Registry, ScanReport};
pub use settings::Settings;
pub use state::{FetchArgs, LoadProblem};

use crate::config::PluginOverrides;
use crate::error::FetchError;
use crate::model::PluginName;
use host::HostCtx;
use worker::Worker;

/// How long past its own timeout a fetch may go unanswered before its worker
/// is considered stuck inside a C function and replaced.
const WEDGE_GRACE: Duration = Duration::from_secs(2);

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
    pub file: PathBuf,
    pub version: String,
    pub loaded_at: DateTime<Utc>,
    pub manifest: Manifest,
    pub settings: Arc<ArcSwap<Settings>>,
    source: Arc<str>,
    ctx: HostCtx,
    workers: Mutex<Vec<Arc<Worker>>>,
    permits: Arc<Semaphore>,
    permits_total: Mutex<usize>,
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
        let display = file.display().to_string();
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
            file,
            version,
            loaded_at: Utc::now(),
            manifest,
            permits: Arc::new(Semaphore::new(effective.max_concurrency)),
            permits_total: Mutex::new(effective.max_concurrency),
            settings,
            source,
            ctx,
            workers: Mutex::new(workers),
        }))
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

    pub fn used_memory(&self) -> usize {
        self.workers
            .lock()
            .map(|w| w.iter().map(|x| x.used_memory()).sum())
            .unwrap_or(0)
    }

    fn pick_worker(&self) -> Option<(usize, Arc<Worker>)> {
        let workers = self.workers.lock().ok()?;
        workers
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_wedged())
            .min_by_key(|(_, w)| w.inflight())
            .map(|(i, w)| (i, Arc::clone(w)))
    }

    /// Runs one fetch under the plugin's concurrency limit and timeout.
    pub async fn fetch(self: &Arc<Self>, args: FetchArgs) -> Result<RawOutput, FetchError> {
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
        let Some((index, worker)) = self.pick_worker() else {
            return Err(FetchError::PluginUnavailable(format!(
                "plugin {}: every Lua state is stuck; they are being replaced",
                self.name
            )));
        };
        // The deadline counts the wait for a permit; messages name the
        // configured timeout, not what was left of it.
        let (rx, _guard) = worker.submit(args, started + s.timeout, s.timeout);
        match tokio::time::timeout(remaining + WEDGE_GRACE, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(FetchError::PluginError(format!(
                "plugin {}: its Lua state stopped unexpectedly",
                self.name
            ))),
            Err(_) => {
                worker.mark_wedged();
                tracing::error!(
                    plugin = %self.name, timeout = %limit,
                    "plugin fetch is stuck inside a C function (a long pattern match or string operation) past its timeout; replacing its Lua state. The stuck thread keeps a core busy until that call returns: fix the plugin's pattern"
                );
                self.replace_worker(index);
                Err(FetchError::PluginTimeout(format!(
                    "plugin {}: fetch did not finish within its timeout of {limit} (stuck in a C function such as a pattern match; the state was replaced)",
                    self.name
                )))
            }
        }
    }

    fn replace_worker(self: &Arc<Self>, index: usize) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let memory = this.settings.load().memory_limit;
            let display = this.file.display().to_string();
            match Worker::start(Arc::clone(&this.source), display, this.ctx.clone(), memory, index).await {
                Ok((w, _)) => {
                    if let Ok(mut ws) = this.workers.lock()
                        && index < ws.len()
                    {
                        ws[index] = w;
                    }
                }
                Err(p) => tracing::error!(plugin = %this.name, error = %p, "could not replace a stuck Lua state"),
            }
        });
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
