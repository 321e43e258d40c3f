//! Validated values that travel through the pipeline.
//!
//! Strings from HTTP, the CLI and plugins are turned into these types once, at
//! the edge, so the cache and the plugin runtime never see an unchecked ticker
//! or an inverted date range.

mod bars;
mod date_range;
mod plugin_name;
mod rate_limit;
mod ticker;

pub use bars::{Bar, Bars, ExtraValue, json_into};
pub use date_range::{DateRange, parse_date, push_ymd, ymd, ymd_string};
pub use plugin_name::PluginName;
pub use rate_limit::{Rate, RateLimit};
pub use ticker::Ticker;

/// `x` as an integer when it is a whole number an `f64` holds exactly
/// (|x| < 9e15): JSON and CSV writers print those without a fraction, as
/// Lua and users wrote them.
pub fn whole_number(x: f64) -> Option<i64> {
    (x.fract() == 0.0 && x.abs() < 9.0e15).then_some(x as i64)
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn whole_numbers_are_exact_integers() {
        use super::whole_number;
        assert_eq!(whole_number(3.0), Some(3));
        assert_eq!(whole_number(-3.0), Some(-3));
        assert_eq!(whole_number(3.5), None);
        assert_eq!(whole_number(1e16), None, "beyond what an f64 holds exactly");
        assert_eq!(whole_number(f64::NAN), None);
        assert_eq!(whole_number(f64::INFINITY), None);
    }
}
