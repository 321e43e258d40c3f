//! Many tickers of one plugin at once (README "Rate limits"): the NDJSON bulk route and
//! `tickerd fetch PLUGIN TICKER...`. Each ticker is one ordinary request
//! through [`Pipeline::get`] (same cache, same budget, same metrics); they
//! run concurrently within what the plugin's `max_concurrency` and budget
//! can serve, and come back in completion order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::{Answer, DataRequest, Pipeline};
use crate::error::FetchError;
use crate::model::{DateRange, PluginName, Ticker};

/// Most tickers one bulk request may name.
pub const MAX_BULK_TICKERS: usize = 1000;

/// Attempts per ticker when refused with a short enough `Retry-After`.
const MAX_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Copy, Default)]
pub struct BulkOptions {
    pub refresh: bool,
    /// A ticker refused with 429 whose `Retry-After` is at most this is
    /// tried again after it (zero: never). The CLI waits; HTTP clients
    /// decide for themselves.
    pub retry_within: Duration,
}

/// The results of a bulk fetch as they complete.
pub struct Bulk {
    pub rx: mpsc::Receiver<(Ticker, Result<Answer, FetchError>)>,
    /// Tickers sleeping on a `Retry-After` before their next attempt.
    pub retrying: Arc<AtomicUsize>,
}

/// One NDJSON line for a ticker that failed:
/// `{"ticker": "X", "error": {"code": ..., "message": ...}}` (plus
/// `retry_after_s` for a 429).
pub fn error_line(ticker: &Ticker, e: &FetchError) -> Vec<u8> {
    let mut err = serde_json::json!({"code": e.code(), "message": e.to_string()});
    if let Some(s) = e.retry_after_s() {
        err["retry_after_s"] = serde_json::json!(s);
    }
    let mut line =
        serde_json::to_vec(&serde_json::json!({"ticker": ticker.as_str(), "error": err})).unwrap_or_default();
    line.push(b'\n');
    line
}

impl Pipeline {
    /// Starts fetching `tickers`; fails at once (404, 503) when the plugin
    /// cannot serve any of them. Dropping the receiver stops the tickers
    /// not started yet.
    pub fn get_many(
        self: &Arc<Self>,
        plugin: &PluginName,
        tickers: Vec<Ticker>,
        range: DateRange,
        opts: BulkOptions,
    ) -> Result<Bulk, FetchError> {
        let p = self.plugin(plugin)?;
        let concurrency = crate::budget::bulk_concurrency(&p.settings());
        let (tx, rx) = mpsc::channel(concurrency * 2);
        let retrying = Arc::new(AtomicUsize::new(0));
        let (this, plugin, waiting) = (Arc::clone(self), plugin.clone(), Arc::clone(&retrying));
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(concurrency));
            for ticker in tickers {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                if tx.is_closed() {
                    break; // the client went away
                }
                let req = DataRequest {
                    plugin: plugin.clone(),
                    ticker,
                    range,
                    refresh: opts.refresh,
                };
                let (this, tx, waiting) = (Arc::clone(&this), tx.clone(), Arc::clone(&waiting));
                tokio::spawn(async move {
                    let _permit = permit;
                    let res = this.get_retrying(&req, opts.retry_within, &waiting).await;
                    let _ = tx.send((req.ticker, res)).await;
                });
            }
        });
        Ok(Bulk { rx, retrying })
    }

    async fn get_retrying(
        self: &Arc<Self>,
        req: &DataRequest,
        within: Duration,
        waiting: &AtomicUsize,
    ) -> Result<Answer, FetchError> {
        let mut attempt = 1;
        loop {
            let res = self.get(req).await;
            let wait = match &res {
                Err(e) if attempt < MAX_ATTEMPTS => e.retry_after_s().map(Duration::from_secs),
                _ => None,
            };
            match wait {
                Some(w) if !within.is_zero() && w <= within => {
                    attempt += 1;
                    waiting.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(w).await;
                    waiting.fetch_sub(1, Ordering::Relaxed);
                }
                _ => return res,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_lines_name_the_ticker_and_the_retry() {
        let t = Ticker::parse("aapl").unwrap();
        let e = FetchError::RateLimited {
            message: "no turn".into(),
            retry_after_s: 7,
        };
        let v: serde_json::Value = serde_json::from_slice(&error_line(&t, &e)).unwrap();
        assert_eq!(
            v,
            json!({"ticker": "AAPL", "error": {"code": "rate_limited", "message": "no turn", "retry_after_s": 7}})
        );
    }
}
