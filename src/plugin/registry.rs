//! The set of plugins the daemon serves, swapped atomically.
//!
//! Readers take a snapshot (`ArcSwap`) and keep the `Arc<Plugin>` they got,
//! so a request in flight finishes on the version it started with while a
//! reload installs the next one. A file that fails to load leaves the last
//! good version serving and records the error on its slot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use super::{Plugin, is_meta_file, sha256_hex};
use crate::config::PluginOverrides;
use crate::metrics::Metrics;
use crate::model::PluginName;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginStatus {
    Ok,
    Error,
}

impl PluginStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginStatus::Ok => "ok",
            PluginStatus::Error => "error",
        }
    }
}

/// One plugin name: its serving version (if any) and its latest load result.
pub struct PluginSlot {
    pub name: String,
    pub file: PathBuf,
    pub current: Option<Arc<Plugin>>,
    pub status: PluginStatus,
    pub last_error: Option<String>,
    /// Hash of the content last tried, good or bad: unchanged content is skipped.
    pub seen_hash: String,
    pub checked_at: DateTime<Utc>,
}

/// What one rescan did, for logs and `POST /v1/reload`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScanReport {
    pub loaded: Vec<String>,
    pub failed: Vec<String>,
    pub unloaded: Vec<String>,
    pub unchanged: usize,
}

pub struct Registry {
    dir: ArcSwap<PathBuf>,
    slots: ArcSwap<BTreeMap<String, Arc<PluginSlot>>>,
    overrides: ArcSwap<BTreeMap<String, PluginOverrides>>,
    default_ttl: ArcSwap<Duration>,
    metrics: Arc<Metrics>,
    scan_lock: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(
        dir: PathBuf,
        overrides: BTreeMap<String, PluginOverrides>,
        default_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            dir: ArcSwap::from_pointee(dir),
            slots: ArcSwap::from_pointee(BTreeMap::new()),
            overrides: ArcSwap::from_pointee(overrides),
            default_ttl: ArcSwap::from_pointee(default_ttl),
            metrics,
            scan_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.load().as_ref().clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<PluginSlot>> {
        self.slots.load().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<PluginSlot>> {
        self.slots.load().values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.load().keys().cloned().collect()
    }

    /// Applies new `[plugins.*]` overrides and default TTL to every loaded
    /// plugin at once (no recompiling).
    pub fn set_overrides(&self, overrides: BTreeMap<String, PluginOverrides>, default_ttl: Duration) {
        for slot in self.slots.load().values() {
            if let Some(p) = &slot.current {
                let o = overrides.get(&slot.name).cloned().unwrap_or_default();
                p.apply_overrides(&o, default_ttl);
            }
        }
        self.overrides.store(Arc::new(overrides));
        self.default_ttl.store(Arc::new(default_ttl));
    }

    fn update_gauge(&self) {
        let n = self.slots.load().values().filter(|s| s.current.is_some()).count();
        self.metrics.plugins_loaded.set(n as i64);
    }

    /// Reads the plugins directory and brings the registry in line with it:
    /// new and changed files are loaded (and swapped in only if they load),
    /// deleted files are unloaded, unchanged content is left alone.
    pub async fn rescan(&self) -> ScanReport {
        let _one_at_a_time = self.scan_lock.lock().await;
        let dir = self.dir();
        let mut report = ScanReport::default();
        let files = match list_plugin_files(&dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugins directory; keeping the plugins already loaded (check the path and its permissions)");
                return report;
            }
        };
        let before = self.slots.load_full();
        let mut next: BTreeMap<String, Arc<PluginSlot>> = BTreeMap::new();
        for (name, path, source) in files {
            let Some(source) = source else {
                // Unreadable right now (mid-save, permissions): keep what serves.
                if let Some(old) = before.get(name.as_str()) {
                    next.insert(name.to_string(), Arc::clone(old));
                }
                continue;
            };
            let hash = sha256_hex(source.as_bytes());
            if let Some(old) = before.get(name.as_str())
                && old.seen_hash == hash
                && old.file == path
                // A quarantined version is loaded afresh even when unchanged.
                && old.current.as_ref().is_none_or(|p| p.quarantined().is_none())
            {
                next.insert(name.to_string(), Arc::clone(old));
                report.unchanged += 1;
                continue;
            }
            let overrides = self.overrides.load().get(name.as_str()).cloned().unwrap_or_default();
            let ttl = **self.default_ttl.load();
            let started = std::time::Instant::now();
            let slot = match Plugin::load(name.clone(), path.clone(), source, &overrides, ttl).await {
                Ok(p) => {
                    tracing::info!(
                        plugin = %name, file = %path.display(), version = %&p.version[..12],
                        took_ms = started.elapsed().as_millis() as u64,
                        ttl = %humantime::format_duration(p.settings().ttl),
                        "plugin loaded"
                    );
                    self.metrics.reload(name.as_str(), "ok");
                    report.loaded.push(name.to_string());
                    PluginSlot {
                        name: name.to_string(),
                        file: path,
                        current: Some(p),
                        status: PluginStatus::Ok,
                        last_error: None,
                        seen_hash: hash,
                        checked_at: Utc::now(),
                    }
                }
                Err(problem) => {
                    let keeps = before.get(name.as_str()).and_then(|s| s.current.clone());
                    tracing::error!(
                        plugin = %name, error = %problem,
                        "plugin failed to load; {}",
                        if keeps.is_some() { "the last good version keeps serving. Fix the file and save it again" } else { "requests to it answer 503 plugin_unavailable until the file loads" }
                    );
                    self.metrics.reload(name.as_str(), "error");
                    report.failed.push(name.to_string());
                    PluginSlot {
                        name: name.to_string(),
                        file: path,
                        current: keeps,
                        status: PluginStatus::Error,
                        last_error: Some(problem.to_string()),
                        seen_hash: hash,
                        checked_at: Utc::now(),
                    }
                }
            };
            next.insert(name.to_string(), Arc::new(slot));
        }
        for name in before.keys() {
            if !next.contains_key(name) {
                tracing::info!(plugin = %name, "plugin file removed; plugin unloaded (requests now answer 404)");
                self.metrics.reload(name, "unloaded");
                report.unloaded.push(name.clone());
            }
        }
        self.slots.store(Arc::new(next));
        self.update_gauge();
        report
    }
}

/// `*.lua` regular files (or symlinks to them) directly in `dir`, with valid
/// names, skipping LuaLS `---@meta` files. Subdirectories are never plugins.
type Listed = (PluginName, PathBuf, Option<String>);

fn list_plugin_files(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let fname = entry.file_name();
        let Some(fname) = fname.to_str() else { continue };
        let Some(stem) = fname.strip_suffix(".lua") else {
            continue;
        };
        if fname.starts_with('.') {
            continue;
        }
        // metadata() follows symlinks: a ConfigMap's name.lua -> ..data/name.lua is a file.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            _ => continue,
        }
        let name = match PluginName::parse(stem) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(file = %path.display(), "skipping: {}", e.message);
                continue;
            }
        };
        let source = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read plugin file; keeping its current version this scan");
                out.push((name, path, None));
                continue;
            }
        };
        if is_meta_file(&source) {
            continue;
        }
        out.push((name, path, Some(source)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
