//! The set of plugins the daemon serves, swapped atomically.
//!
//! Readers take a snapshot (`ArcSwap`) and keep the `Arc<Plugin>` they got,
//! so a request in flight finishes on the version it started with while a
//! reload installs the next one. A file that fails to load leaves the last
//! good version serving and records the error on its slot.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use super::files::{PluginDir, PluginFile, list_plugin_files};
use super::{Plugin, sha256_hex};
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
    pub name: PluginName,
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
    /// Set when the plugins directory itself could not be read: nothing
    /// was rescanned and the plugins already loaded keep serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Registry {
    dir: ArcSwap<PathBuf>,
    slots: ArcSwap<BTreeMap<PluginName, Arc<PluginSlot>>>,
    overrides: ArcSwap<BTreeMap<PluginName, PluginOverrides>>,
    default_ttl: ArcSwap<Duration>,
    metrics: Arc<Metrics>,
    scan_lock: tokio::sync::Mutex<()>,
    /// The last "cannot read the plugins directory" error logged, so a
    /// lasting problem (fd exhaustion, a removed mount) is logged once
    /// rather than on every rescan.
    dir_error: std::sync::Mutex<Option<String>>,
}

impl Registry {
    pub fn new(
        dir: PathBuf,
        overrides: BTreeMap<PluginName, PluginOverrides>,
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
            dir_error: std::sync::Mutex::new(None),
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

    /// Applies new `[plugins.*]` overrides and default TTL to every loaded
    /// plugin at once (no recompiling).
    pub fn set_overrides(&self, overrides: BTreeMap<PluginName, PluginOverrides>, default_ttl: Duration) {
        for slot in self.slots.load().values() {
            if let Some(p) = &slot.current {
                let o = overrides.get(slot.name.as_str()).cloned().unwrap_or_default();
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
        let mut report = ScanReport::default();
        let Some(listed) = self.read_dir(&mut report) else {
            return report;
        };
        let before = self.slots.load_full();
        let mut next: BTreeMap<PluginName, Arc<PluginSlot>> = BTreeMap::new();
        for PluginFile { name, path, source } in listed.files {
            let source = match source {
                Ok(s) => s,
                Err(e) => {
                    // Unreadable right now (mid-save, permissions): keep what serves.
                    tracing::warn!(file = %path.display(), error = %e, "cannot read plugin file; keeping its current version this scan");
                    if let Some(old) = before.get(name.as_str()) {
                        next.insert(name.clone(), Arc::clone(old));
                    }
                    continue;
                }
            };
            let hash = sha256_hex(source.as_bytes());
            if let Some(old) = before.get(name.as_str())
                && old.seen_hash == hash
                && old.file == path
                // A quarantined version is loaded afresh even when unchanged.
                && old.current.as_ref().is_none_or(|p| p.quarantined().is_none())
            {
                next.insert(name.clone(), Arc::clone(old));
                report.unchanged += 1;
                continue;
            }
            let keeps = before.get(name.as_str()).and_then(|s| s.current.clone());
            let slot = self.load(name.clone(), path, source, hash, keeps, &mut report).await;
            next.insert(name.clone(), Arc::new(slot));
        }
        for name in before.keys() {
            if !next.contains_key(name) {
                tracing::info!(plugin = %name, "plugin file removed; plugin unloaded (requests now answer 404)");
                self.metrics.reload(name.as_str(), "unloaded");
                report.unloaded.push(name.to_string());
            }
        }
        self.slots.store(Arc::new(next));
        self.update_gauge();
        report
    }

    /// Lists the plugins directory. When it cannot be read, says so once per
    /// distinct error (a watcher rescans often) and in the report, and the
    /// plugins already loaded keep serving.
    fn read_dir(&self, report: &mut ScanReport) -> Option<PluginDir> {
        let dir = self.dir();
        let listed = match list_plugin_files(&dir) {
            Ok(l) => l,
            Err(e) => {
                let error = e.to_string();
                if let Ok(mut last) = self.dir_error.lock()
                    && last.as_deref() != Some(error.as_str())
                {
                    tracing::error!(dir = %dir.display(), %error, "cannot read the plugins directory; keeping the plugins already loaded (check the path and its permissions; logged again only when the error changes)");
                    *last = Some(error.clone());
                }
                report.error = Some(format!(
                    "cannot read the plugins directory {}: {error}; the plugins already loaded keep serving",
                    dir.display()
                ));
                return None;
            }
        };
        for (path, why) in &listed.bad_names {
            tracing::warn!(file = %path.display(), "skipping: {why}");
        }
        if let Ok(mut last) = self.dir_error.lock()
            && last.take().is_some()
        {
            tracing::info!(dir = %dir.display(), "the plugins directory can be read again");
        }
        Some(listed)
    }

    /// Loads one new or changed file. A file that fails to load leaves the
    /// last good version (`keeps`) serving, with the error on the slot.
    async fn load(
        &self,
        name: PluginName,
        path: PathBuf,
        source: String,
        hash: String,
        keeps: Option<Arc<Plugin>>,
        report: &mut ScanReport,
    ) -> PluginSlot {
        let overrides = self.overrides.load().get(name.as_str()).cloned().unwrap_or_default();
        let ttl = **self.default_ttl.load();
        let started = std::time::Instant::now();
        match Plugin::load(name.clone(), path.clone(), source, &overrides, ttl).await {
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
                    name: name.clone(),
                    file: path,
                    current: Some(p),
                    status: PluginStatus::Ok,
                    last_error: None,
                    seen_hash: hash,
                    checked_at: Utc::now(),
                }
            }
            Err(problem) => {
                tracing::error!(
                    plugin = %name, error = %problem,
                    "plugin failed to load; {}",
                    if keeps.is_some() { "the last good version keeps serving. Fix the file and save it again" } else { "requests to it answer 503 plugin_unavailable until the file loads" }
                );
                self.metrics.reload(name.as_str(), "error");
                report.failed.push(name.to_string());
                PluginSlot {
                    name: name.clone(),
                    file: path,
                    current: keeps,
                    status: PluginStatus::Error,
                    last_error: Some(problem.to_string()),
                    seen_hash: hash,
                    checked_at: Utc::now(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "return { fetch = function(req) return { bars = {} } end }";

    fn registry(dir: &std::path::Path) -> Arc<Registry> {
        Registry::new(
            dir.to_path_buf(),
            BTreeMap::new(),
            Duration::from_secs(60),
            Metrics::new(),
        )
    }

    #[tokio::test]
    async fn a_rescan_loads_new_keeps_unchanged_reloads_changed_and_unloads_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| dir.path().join(format!("{n}.lua"));
        std::fs::write(file("a"), GOOD).unwrap();
        std::fs::write(file("b"), GOOD).unwrap();
        let r = registry(dir.path());

        let first = r.rescan().await;
        assert_eq!(
            (first.loaded.clone(), first.unchanged),
            (vec!["a".into(), "b".into()], 0)
        );
        let a_version = r.get("a").unwrap().current.clone().unwrap();

        let again = r.rescan().await;
        assert!(again.loaded.is_empty() && again.failed.is_empty() && again.unloaded.is_empty());
        assert_eq!(again.unchanged, 2);
        assert!(
            Arc::ptr_eq(&a_version, r.get("a").unwrap().current.as_ref().unwrap()),
            "unchanged content keeps the loaded version"
        );

        std::fs::write(file("a"), format!("{GOOD}\n-- edited")).unwrap();
        std::fs::remove_file(file("b")).unwrap();
        let changed = r.rescan().await;
        assert_eq!(changed.loaded, ["a"]);
        assert_eq!(changed.unloaded, ["b"]);
        assert!(r.get("b").is_none());
        assert_ne!(r.get("a").unwrap().current.as_ref().unwrap().version, a_version.version);
    }

    #[tokio::test]
    async fn a_broken_edit_keeps_the_last_good_version_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lua");
        std::fs::write(&path, GOOD).unwrap();
        let r = registry(dir.path());
        r.rescan().await;
        let good = r.get("p").unwrap().current.clone().unwrap();

        std::fs::write(&path, "return { fetch = ").unwrap();
        let report = r.rescan().await;
        assert_eq!(report.failed, ["p"]);
        let slot = r.get("p").unwrap();
        assert_eq!(slot.status, PluginStatus::Error);
        assert!(slot.last_error.is_some());
        assert!(Arc::ptr_eq(&good, slot.current.as_ref().unwrap()));

        // The same broken content is not retried; a fix loads.
        assert_eq!(r.rescan().await.unchanged, 1);
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(r.rescan().await.loaded, ["p"]);
        assert_eq!(r.get("p").unwrap().status, PluginStatus::Ok);
    }

    #[tokio::test]
    async fn a_plugin_that_never_loaded_has_a_slot_without_a_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.lua"), "error('boom')").unwrap();
        let r = registry(dir.path());
        assert_eq!(r.rescan().await.failed, ["bad"]);
        let slot = r.get("bad").unwrap();
        assert!(slot.current.is_none());
        assert!(slot.last_error.as_deref().unwrap().contains("boom"));
    }
}
