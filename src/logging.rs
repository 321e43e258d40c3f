//! Log output: human-readable text by default, JSON lines with
//! `TICKERD_LOG_FORMAT=json`; the filter comes from `TICKERD_LOG`.
//!
//! Lines are handed to a background thread that writes them in batches, so a
//! request never waits on the write(2) of its access-log line. Under extreme load
//! the buffer (128k lines) may drop lines rather than slow requests down.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the subscriber. Keep the returned guard alive until exit: it
/// flushes buffered lines when dropped.
pub(crate) fn init(filter: &str, format: LogFormat) -> Result<Option<WorkerGuard>, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        format!("TICKERD_LOG: {filter:?} is not a log filter ({e}); use e.g. info, debug, or tickerd=debug,info")
    })?;
    // The writer thread drains every queued line into this buffer and then
    // flushes once, so a busy daemon makes one write(2) per batch of lines
    // instead of one per request; a quiet one still writes each line at once.
    let sink = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(sink);
    let _ = ACCESS.set((writer.clone(), format));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A second init (tests, repeated CLI use) keeps the first subscriber.
    Ok(res.is_ok().then_some(guard))
}

/// The access log's own sink: the same background writer and format as the
/// rest of the log, but lines are composed directly instead of through the
/// generic field formatter, which cost a third of the hit path's throughput.
static ACCESS: OnceLock<(NonBlocking, LogFormat)> = OnceLock::new();

/// One finished request, as the access log records it.
pub(crate) struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub plugin: &'a str,
    pub ticker: &'a str,
    pub cache: &'a str,
    pub status: u16,
    pub duration_ms: f64,
}

/// Writes one access-log line if `tickerd::access` is enabled at info.
pub(crate) fn access(line: &AccessLine<'_>) {
    if !tracing::enabled!(target: "tickerd::access", tracing::Level::INFO) {
        return;
    }
    let Some((writer, format)) = ACCESS.get() else {
        tracing::info!(target: "tickerd::access", path = line.path, status = line.status, "request");
        return;
    };
    let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let text = match format {
        LogFormat::Json => {
            let esc = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
            format!(
                "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":{},\"method\":{},\"path\":{},\"plugin\":{},\"ticker\":{},\"cache\":{},\"status\":{},\"duration_ms\":{:.3},\"target\":\"tickerd::access\"}}\n",
                esc(line.request_id),
                esc(line.method),
                esc(line.path),
                esc(line.plugin),
                esc(line.ticker),
                esc(line.cache),
                line.status,
                line.duration_ms
            )
        }
        LogFormat::Text => format!(
            "{ts}  INFO tickerd::access: request request_id={} method={} path={} plugin={} ticker={} cache={} status={} duration_ms={:.3}\n",
            line.request_id,
            line.method,
            line.path,
            line.plugin,
            line.ticker,
            line.cache,
            line.status,
            line.duration_ms
        ),
    };
    let _ = writer.clone().write_all(text.as_bytes());
}
