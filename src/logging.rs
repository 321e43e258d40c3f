//! Log output: human-readable text by default, JSON lines with
//! `TICKERD_LOG_FORMAT=json`; the filter comes from `TICKERD_LOG`.
//!
//! Lines are handed to a background thread that writes them, so a request
//! never waits on the write(2) of its access-log line. Under extreme load
//! the buffer (128k lines) may drop lines rather than slow requests down.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the subscriber. Keep the returned guard alive until exit: it
/// flushes buffered lines when dropped.
pub fn init(filter: &str, format: LogFormat) -> Result<Option<WorkerGuard>, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        format!("TICKERD_LOG: {filter:?} is not a log filter ({e}); use e.g. info, debug, or tickerd=debug,info")
    })?;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
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
