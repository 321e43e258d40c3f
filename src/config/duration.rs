//! Durations as users write them: `"250ms"`, `"10s"`, `"1h"`, `"24h"`, `"7d"`,
//! or plain seconds (`86400`, `"86400"`, `0.5`).

use std::time::Duration;

use serde::Deserialize;

/// A duration as it appears in TOML before we know which key it belongs to,
/// so the error can name the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Int(i64),
    Float(f64),
    Text(String),
}

const ACCEPTED: &str = "a duration such as \"250ms\", \"10s\", \"1h\", \"24h\" or plain seconds";

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(format!("empty value; expected {ACCEPTED}"));
    }
    if let Ok(secs) = t.parse::<f64>() {
        return seconds(secs).ok_or_else(|| format!("{raw:?} is not {ACCEPTED}"));
    }
    humantime::parse_duration(t).map_err(|e| format!("{raw:?} is not {ACCEPTED} ({e})"))
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && (0.0..1.0e12).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

impl RawDuration {
    pub fn parse(&self) -> Result<Duration, String> {
        match self {
            RawDuration::Int(i) => u64::try_from(*i)
                .map(Duration::from_secs)
                .map_err(|_| format!("{i} is negative; expected {ACCEPTED}")),
            RawDuration::Float(f) => seconds(*f).ok_or_else(|| format!("{f} is not {ACCEPTED}")),
            RawDuration::Text(s) => parse_duration(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("86400").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(RawDuration::Int(60).parse().unwrap(), Duration::from_secs(60));
    }

    #[test]
    fn rejects_garbage_with_the_accepted_form() {
        for bad in ["", "ten seconds", "-5", "5 parsecs", "NaN"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("250ms"), "{bad}: {e}");
        }
        assert!(RawDuration::Int(-1).parse().is_err());
    }
}
