//! The producer (README, "The producer": `[[watch]]`): keeps watched tickers fresh and
//! publishes each record to its sink (a Redis stream or a Kafka topic),
//! replacing the old producer script. Fetches go through the same pipeline
//! as HTTP requests, so they share the cache, the single-flight and the
//! `stock_requests_*` counters.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, Utc};
use rand::Rng;
use tokio::sync::watch;

use crate::config::WatchEntry;
use crate::daemon::Daemon;
use crate::model::DateRange;
use crate::pipeline::DataRequest;
use crate::sink::{Record, SinkError, Sinks};

/// The running producer: one task per `[[watch]]` entry and their sinks.
pub(crate) struct Producer {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sinks: Arc<Sinks>,
}

/// Makes the sinks (the Kafka producer when a watch uses it) and starts one
/// task per `[[watch]]` entry; they stop when `stop` turns true.
pub(crate) fn spawn(daemon: Arc<Daemon>, stop: watch::Receiver<bool>) -> Result<Producer, SinkError> {
    let cfg = daemon.config_full();
    let sinks = Arc::new(Sinks::new(
        cfg.kafka.as_ref(),
        Arc::clone(daemon.cache().redis()),
        Arc::clone(daemon.metrics()),
    )?);
    let tasks = cfg
        .watch
        .iter()
        .cloned()
        .map(|entry| {
            tracing::info!(
                plugin = %entry.plugin, tickers = entry.tickers.len(), every = %humantime::format_duration(entry.every),
                sink = entry.sink.kind(), stream = %entry.sink.target(), "producer watching"
            );
            tokio::spawn(run(Arc::clone(&daemon), Arc::clone(&sinks), entry, stop.clone()))
        })
        .collect();
    Ok(Producer { tasks, sinks })
}

impl Producer {
    /// After `stop` turned true: lets each task finish the ticker in
    /// progress, then flushes the Kafka queue for what is left of `timeout`.
    pub(crate) async fn finish(self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for t in self.tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        // Every task holding a clone has ended (or is abandoned at exit).
        match Arc::try_unwrap(self.sinks) {
            Ok(sinks) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                sinks.flush(left).await;
            }
            Err(_) => tracing::warn!("producer tasks still running at exit; the kafka queue is not flushed"),
        }
    }
}

/// `every` with up to ±10% jitter, so a fleet of daemons does not fetch in lockstep.
fn jittered(every: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.9..1.1);
    every.mul_f64(f)
}

async fn run(daemon: Arc<Daemon>, sinks: Arc<Sinks>, entry: WatchEntry, mut stop: watch::Receiver<bool>) {
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
        round(&daemon, &sinks, &entry, &stop).await;
        wait = jittered(entry.every);
    }
    tracing::info!(plugin = %entry.plugin, stream = %entry.sink.target(), "producer stopped");
}

/// One pass over the entry's tickers.
async fn round(daemon: &Arc<Daemon>, sinks: &Sinks, entry: &WatchEntry, stop: &watch::Receiver<bool>) {
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
        match daemon.get(&req).await {
            Ok(answer) => {
                // Bars as stored: each is checked JSON, so the array is too.
                let Ok(bars) =
                    serde_json::value::RawValue::from_string(String::from_utf8_lossy(&answer.bars_json()).into_owned())
                else {
                    continue;
                };
                let record = Record {
                    plugin: answer.plugin.to_string(),
                    ticker: answer.ticker.to_string(),
                    start: answer.range.start().to_string(),
                    end: answer.range.end().to_string(),
                    fetched_at: answer.fetched_at(),
                    bars,
                    cache: answer.status.as_str(),
                };
                sinks.publish(&entry.sink, &record).await;
            }
            Err(e) => tracing::warn!(
                plugin = %entry.plugin, ticker = %ticker, code = e.code(), error = %e,
                "producer fetch failed; nothing published for this ticker this round"
            ),
        }
    }
}
