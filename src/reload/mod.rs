//! Hot reload: SIGHUP now; the file watcher arrives with the hot-reload work.

use std::sync::Arc;

use crate::daemon::Daemon;

/// Rescans plugins and config on every SIGHUP.
pub fn spawn_sighup(daemon: Arc<Daemon>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; use POST /v1/reload to rescan");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: rescanning plugins and config");
            let outcome = daemon.reload_all().await;
            tracing::info!(loaded = outcome.plugins.loaded.len(), failed = outcome.plugins.failed.len(), unloaded = outcome.plugins.unloaded.len(), config = %outcome.config, "rescan done");
        }
    });
}
