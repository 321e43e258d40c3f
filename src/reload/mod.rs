//! Hot reload: a debounced file watcher on the plugins directory and the
//! config file, plus SIGHUP. Every trigger ends in the same two calls,
//! `Registry::rescan` (content hashes decide what changed) and
//! `Daemon::reload_config`, so no way of changing a file can be missed by
//! a clever event filter.

mod watcher;

use std::sync::Arc;

pub(crate) use watcher::{WatchHandle, watch};

use crate::daemon::Daemon;

/// Rescans plugins and config on every SIGHUP.
pub(crate) fn spawn_sighup(daemon: Arc<Daemon>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; use POST /v1/reload to rescan");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: rescanning plugins and config");
            let outcome = daemon.reload_all().await;
            tracing::info!(
                loaded = outcome.plugins.loaded.len(),
                failed = outcome.plugins.failed.len(),
                unloaded = outcome.plugins.unloaded.len(),
                config = %outcome.config,
                "rescan done"
            );
        }
    });
}
