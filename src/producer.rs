//! The producer (SPEC §1 `[[watch]]`): keeps watched tickers fresh and
//! publishes each record to a Redis stream, replacing the old producer
//! script. Fetches go through the same pipeline as HTTP requests, so they
//! share the cache, the single-flight and the `stock_requests_*` counters.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, Utc};
use futures::FutureExt;
use rand::Rng;
use tokio::sync::watch;

use crate::config::WatchEntry;
use crate::daemon::Daemon;
use crate::model::DateRange;
use crate::pipeline::DataRequest;

/// Starts one task per `[[watch]]` entry; they stop when `stop` turns true.
pub fn spawn(daemon: Arc<Daemon>, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    let entries = daemon.config.load().watch.clone();
    entries
        .into_iter()
        .map(|entry| {
            tracing::info!(
                plugin = %entry.plugin, tickers = entry.tickers.len(), every = %humantime::format_duration(entry.every),
                stream = %entry.stream, "producer watching"
            );
            tokio::spawn(run(Arc::clone(&daemon), entry, stop.clone()))
        })
        .collect()
}

/// `every` with up to ±10% jitter, so a fleet of daemons does not fetch in lockstep.
fn jittered(every: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.9..1.1);
    every.mul_f64(f)
}

async fn run(daemon: Arc<Daemon>, entry: WatchEntry, mut stop: watch::Receiver<bool>) {
    // First round soon after start, so fresh data appears without waiting a full period.
    let mut wait = jittered(entry.every.min(Duration::from_secs(2))) / 2;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        round(&daemon, &entry, &stop).await;
        wait = jittered(entry.every);
    }
    tracing::info!(plugin = %entry.plugin, stream = %entry.stream, "producer stopped");
}

/// One pass over the entry's tickers.
pub async fn round(daemon: &Arc<Daemon>, entry: &WatchEntry, stop: &watch::Receiver<bool>) {
    let today = Utc::now().date_naive();
    let lookback_days = entry.lookback.as_secs().div_ceil(86400);
    let start = today.checked_sub_days(Days::new(lookback_days)).unwrap_or(today);
    let Ok(range) = DateRange::new(start, today) else {
        return;
    };
    for ticker in &entry.tickers {
        if *stop.borrow() {
            return;
        }
        let req = DataRequest {
            plugin: entry.plugin.clone(),
            ticker: ticker.clone(),
            range,
            refresh: false,
        };
        match daemon.pipeline.get(&req).await {
            Ok(answer) => {
                let Some(doc) = answer.doc() else { continue };
                let bars = serde_json::to_string(&doc.bars).unwrap_or_else(|_| "[]".into());
                let fields: Vec<(&str, String)> = vec![
                    ("plugin", doc.plugin.clone()),
                    ("ticker", doc.ticker.clone()),
                    ("start", doc.start.clone()),
                    ("end", doc.end.clone()),
                    ("fetched_at", doc.fetched_at.clone()),
                    ("bars", bars),
                    ("cache", answer.status.as_str().to_owned()),
                ];
                publish(daemon, entry, fields).await;
            }
            Err(e) => tracing::warn!(
                plugin = %entry.plugin, ticker = %ticker, code = e.code(), error = %e,
                "producer fetch failed; nothing published for this ticker this round"
            ),
        }
    }
}

async fn publish(daemon: &Arc<Daemon>, entry: &WatchEntry, fields: Vec<(&'static str, String)>) {
    let stream = entry.stream.clone();
    let maxlen = entry.maxlen;
    let s = stream.clone();
    let res = daemon
        .cache
        .redis()
        .call("XADD", move |mut c| {
            async move {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&s).arg("MAXLEN").arg("~").arg(maxlen).arg("*");
                for (k, v) in &fields {
                    cmd.arg(*k).arg(v);
                }
                cmd.query_async::<String>(&mut c).await
            }
            .boxed()
        })
        .await;
    match res {
        Ok(_) => daemon.metrics.stream_published(&stream),
        Err(e) => {
            daemon.metrics.stream_error(&stream);
            tracing::warn!(stream = %stream, error = %e, "could not publish to the redis stream; skipped this record (it will be published next round if redis is back)");
        }
    }
}
