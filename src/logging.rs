//! Log output: human-readable text by default, JSON lines with
//! `TICKERD_LOG_FORMAT=json`; the filter comes from `TICKERD_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        format!("TICKERD_LOG: {filter:?} is not a log filter ({e}); use e.g. info, debug, or tickerd=debug,info")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A second init (tests, repeated CLI use) keeps the first subscriber.
    let _ = res;
    Ok(())
}
