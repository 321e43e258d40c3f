//! Validated values that travel through the pipeline.
//!
//! Strings from HTTP, the CLI and plugins are turned into these types once, at
//! the edge, so the cache and the plugin runtime never see an unchecked ticker
//! or an inverted date range.

mod bars;
mod date_range;
mod plugin_name;
mod ticker;

pub use bars::{Bar, Bars, ExtraValue, json_into};
pub use date_range::{DateRange, parse_date, push_ymd, ymd, ymd_string};
pub use plugin_name::PluginName;
pub use ticker::Ticker;

/// A rejected input value, naming the field so the caller can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
