//! `tickerd serve`: bind, serve, and drain on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::daemon::Daemon;
use crate::http::Cores;
use crate::plugin::ScanReport;
use crate::producer::Producer;
use crate::reload::WatchHandle;

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining requests in flight, then exiting"),
        _ = term => tracing::info!("SIGTERM: draining requests in flight, then exiting"),
    }
}

/// Runs the daemon until a shutdown signal; returns the process exit code.
pub(crate) async fn serve(daemon: Arc<Daemon>) -> u8 {
    let cfg = daemon.config_full();
    let listener = match TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %cfg.listen, error = %e, "cannot listen; pick another address with --listen or TICKERD_LISTEN");
            return 1;
        }
    };
    let (report, _watch) = start_background(&daemon).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producer = match crate::producer::spawn(Arc::clone(&daemon), stop_rx.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the producer; check [kafka] in the config");
            return 2;
        }
    };
    // The bound address, not the configured one: with port 0 the kernel
    // picks the port, and this line is where an operator (or the test
    // harness) learns it.
    let bound = listener
        .local_addr()
        .map_or_else(|_| cfg.listen.to_string(), |a| a.to_string());
    let app = crate::http::App::new(Arc::clone(&daemon));
    let threads = cfg.http_threads.unwrap_or_else(crate::http::default_http_threads);
    let limits = crate::http::ConnLimits::new(&cfg.http, daemon.metrics());
    let mut cores = match crate::http::serve_per_core(listener, app, threads, limits, stop_rx) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, threads, "cannot start the HTTP threads; try a lower http_threads");
            return 1;
        }
    };
    tracing::info!(
        listen = %bound, plugins_dir = %cfg.plugins_dir.display(),
        plugins = report.loaded.len(), failed = report.failed.len(),
        redis = %daemon.cache().redis().display_url(),
        redis_up = daemon.cache().redis().is_up(),
        "tickerd is serving"
    );
    // A serving thread only stops on its own if it failed.
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        r = cores.next_stopped() => Some(r),
    };
    let _ = stop_tx.send(true);
    if let Some(r) = failed {
        let why = match r {
            Some(Err(e)) => e.to_string(),
            _ => "it returned".to_owned(),
        };
        tracing::error!(error = %why, "an HTTP thread stopped; exiting so a supervisor restarts tickerd");
        cores.release();
        return 1;
    }
    drain(cores, producer, cfg.drain_timeout).await
}

/// The first Redis connection and plugin scan, then what runs beside the
/// HTTP threads: the Redis supervisor, the L1's subscription, SIGHUP and
/// the plugins-directory watcher (kept alive by the returned handle).
async fn start_background(daemon: &Arc<Daemon>) -> (ScanReport, Option<WatchHandle>) {
    // start() makes the first connection attempt; the supervisor only takes
    // over afterwards, so start-up does not connect twice.
    let report = daemon.start().await;
    daemon.cache().redis().spawn_supervisor();
    daemon.cache().start_l1();
    crate::reload::spawn_sighup(Arc::clone(daemon));
    let watch = match crate::reload::watch(Arc::clone(daemon)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "hot reload is off: cannot watch the plugins directory; SIGHUP or POST /v1/reload still rescan (try --poll on NFS and some container mounts)");
            None
        }
    };
    (report, watch)
}

/// Gives in-flight requests `drain` to finish, and the producer as long to
/// flush its Kafka queue, side by side; the exit code.
async fn drain(mut cores: Cores, producer: Producer, drain: Duration) -> u8 {
    let flushed = producer.finish(drain);
    let drained = tokio::time::timeout(drain, async {
        let mut first_err = None;
        while let Some(r) = cores.next_stopped().await {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err
    });
    let (drained, ()) = tokio::join!(drained, flushed);
    cores.release();
    match drained {
        Ok(None) => {
            tracing::info!("drained; bye");
            0
        }
        Ok(Some(e)) => {
            tracing::error!(error = %e, "server error");
            1
        }
        Err(_) => {
            tracing::warn!(timeout = ?drain, "drain timeout reached with requests still in flight; exiting anyway");
            0
        }
    }
}
