//! The `notify` watcher, debounced.
//!
//! Both the plugins directory and the config file's directory are watched
//! non-recursively, and *any* event there triggers a rescan. That covers
//! writes in place, rename-over (vim, IDEs), delete-and-create, new and
//! deleted files, and a Kubernetes ConfigMap update, where only the `..data`
//! symlink in the directory changes and no event names `*.lua` at all.
//! Unchanged content is detected by hash during the rescan and costs nothing.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{PollWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, NoCache, new_debouncer, new_debouncer_opt};
use tokio::sync::mpsc;

use crate::config::WatcherKind;
use crate::daemon::Daemon;
use crate::plugin::sha256_hex;

/// Quiet time after the last event before reloading: editors write in
/// several steps, and one reload per save is the goal.
const DEBOUNCE: Duration = Duration::from_millis(25);

/// Keeps the watcher alive; dropping it stops watching.
pub(crate) struct WatchHandle {
    _debouncer: Box<dyn Any + Send>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Plugins,
    Config,
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Starts watching; reloads run on the tokio runtime this is called from.
pub(crate) fn watch(daemon: Arc<Daemon>) -> Result<WatchHandle, String> {
    let cfg = daemon.config_full();
    let plugins_dir = canonical(&cfg.plugins_dir);
    let config_file = cfg.config_file.as_deref().map(canonical);
    let config_dir = config_file.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    let (tx, rx) = mpsc::unbounded_channel::<Target>();

    let (pd, cd) = (plugins_dir.clone(), config_dir.clone());
    let handler = move |res: DebounceEventResult| match res {
        Ok(events) => {
            let mut plugins = false;
            let mut config = false;
            for ev in &events {
                for p in &ev.paths {
                    let parent = p.parent();
                    plugins |= p == &pd || parent == Some(pd.as_path());
                    config |= cd.as_deref().is_some_and(|c| p == c || parent == Some(c));
                }
            }
            if plugins {
                let _ = tx.send(Target::Plugins);
            }
            if config {
                let _ = tx.send(Target::Config);
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "file watcher error; SIGHUP or POST /v1/reload rescans by hand");
            }
        }
    };

    let mut dirs = vec![plugins_dir.clone()];
    if let Some(c) = &config_dir
        && c != &plugins_dir
    {
        dirs.push(c.clone());
    }
    let debouncer: Box<dyn Any + Send> = match cfg.watcher {
        WatcherKind::Native => {
            let mut d = new_debouncer(DEBOUNCE, None, handler).map_err(|e| e.to_string())?;
            for dir in &dirs {
                d.watch(dir, RecursiveMode::NonRecursive)
                    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
            }
            Box::new(d)
        }
        WatcherKind::Poll => {
            let interval = cfg.poll_interval;
            let debounce = DEBOUNCE.max(interval / 2);
            let notify_cfg = notify::Config::default()
                .with_poll_interval(interval)
                .with_compare_contents(true);
            let mut d = new_debouncer_opt::<_, PollWatcher, NoCache>(debounce, None, handler, NoCache, notify_cfg)
                .map_err(|e| e.to_string())?;
            for dir in &dirs {
                d.watch(dir, RecursiveMode::NonRecursive)
                    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
            }
            Box::new(d)
        }
    };
    tracing::info!(
        plugins_dir = %plugins_dir.display(),
        config = ?config_file.as_ref().map(|p| p.display().to_string()),
        mode = ?cfg.watcher,
        "watching for plugin and config changes"
    );
    tokio::spawn(apply(daemon, rx, config_file));
    Ok(WatchHandle { _debouncer: debouncer })
}

async fn apply(daemon: Arc<Daemon>, mut rx: mpsc::UnboundedReceiver<Target>, config_file: Option<PathBuf>) {
    // Bounded like the config load itself, so a path swapped for a FIFO or a
    // huge file is not read without end.
    let read_hash = |p: &Path| {
        crate::config::read_config_file(p)
            .ok()
            .map(|t| sha256_hex(t.as_bytes()))
    };
    let mut config_hash = config_file.as_deref().and_then(read_hash);
    while let Some(first) = rx.recv().await {
        let mut plugins = first == Target::Plugins;
        let mut config = first == Target::Config;
        while let Ok(t) = rx.try_recv() {
            plugins |= t == Target::Plugins;
            config |= t == Target::Config;
        }
        if config && let Some(path) = &config_file {
            let now = read_hash(path);
            if now.is_some() && now != config_hash {
                // Remembered whether it loads or not: a broken file is
                // reported once per distinct content, not on every event in
                // its directory (a log file written next to it would
                // otherwise repeat the error many times a second).
                config_hash = now;
                if let Err(e) = daemon.reload_config() {
                    tracing::error!(
                        file = %path.display(), error = %e,
                        "config file changed but does not load; keeping the running config (fix it and save again)"
                    );
                }
            }
        }
        if plugins {
            let r = daemon.registry().rescan().await;
            if !(r.loaded.is_empty() && r.failed.is_empty() && r.unloaded.is_empty()) {
                tracing::debug!(?r, "plugin rescan after a file change");
            }
        }
    }
}
