//! The domain error: why a fetch (a data request through the pipeline, the
//! plugin runtime and the cache) did not produce data. It knows nothing of
//! HTTP: the edge maps it to a status in one place (`http/error.rs`'s
//! `ApiError`). It is serde-able so that a failure crosses daemons as itself
//! (the fleet lock's failure marker): `{"code": "...", "message": "..."}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", content = "message", rename_all = "snake_case")]
pub enum FetchError {
    /// No plugin file of that name (the field is the name asked for).
    #[error("no plugin named {0:?} is loaded; GET /v1/plugins lists them")]
    PluginNotFound(String),
    /// The source has no data for the ticker and range.
    #[error("{0}")]
    NoData(String),
    /// The plugin raised an error or broke a host limit.
    #[error("{0}")]
    PluginError(String),
    /// The plugin returned something that breaks the output contract.
    #[error("{0}")]
    InvalidPluginOutput(String),
    /// The plugin's upstream answered with an error or could not be reached.
    #[error("{0}")]
    UpstreamError(String),
    /// The plugin cannot take the request now (never loaded, saturated).
    #[error("{0}")]
    PluginUnavailable(String),
    /// The plugin did not finish within its timeout.
    #[error("{0}")]
    PluginTimeout(String),
    /// No turn of the plugin's upstream budget within `max_wait`, or the
    /// plugin is cooling down after an upstream refusal (README "Rate limits"): 429 with
    /// `Retry-After: retry_after_s` (whole seconds, at least 1).
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    /// The upstream refused a fetch (an `http` call got 429, or 503 with
    /// `Retry-After`, or the plugin raised `errors.rate_limited`). The budget
    /// turns it into a fleet-wide cool-down and a [`FetchError::RateLimited`],
    /// so clients never see it as such.
    #[error("{message}")]
    UpstreamRefused {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// A bug on our side (a fetch task panicked).
    #[error("{0}")]
    Internal(String),
}

impl FetchError {
    /// The stable machine-readable code: the `code` of the HTTP error body
    /// and the `reason` label of `stock_requests_failure_total`.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::PluginNotFound(_) => "plugin_not_found",
            FetchError::NoData(_) => "no_data",
            FetchError::PluginError(_) => "plugin_error",
            FetchError::InvalidPluginOutput(_) => "invalid_plugin_output",
            FetchError::UpstreamError(_) => "upstream_error",
            FetchError::PluginUnavailable(_) => "plugin_unavailable",
            FetchError::PluginTimeout(_) => "plugin_timeout",
            FetchError::RateLimited { .. } | FetchError::UpstreamRefused { .. } => "rate_limited",
            FetchError::Internal(_) => "internal",
        }
    }

    /// Whether a stale copy may stand in for this failure (stale-if-error),
    /// and whether waiting daemons are told of it: only when the source
    /// failed, never when the request itself was wrong.
    pub fn is_fetch_failure(&self) -> bool {
        matches!(
            self,
            FetchError::PluginError(_)
                | FetchError::InvalidPluginOutput(_)
                | FetchError::UpstreamError(_)
                | FetchError::PluginTimeout(_)
                | FetchError::PluginUnavailable(_)
                | FetchError::RateLimited { .. }
                | FetchError::UpstreamRefused { .. }
        )
    }

    /// The `Retry-After` seconds of a 429 (whole seconds, at least 1).
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            FetchError::RateLimited { retry_after_s, .. } => Some((*retry_after_s).max(1)),
            FetchError::UpstreamRefused { retry_after, .. } => {
                Some(retry_after.map_or(60, |d| d.as_secs_f64().ceil() as u64).max(1))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crosses_daemons_as_code_and_message() {
        let e = FetchError::UpstreamError("plugin yahoo: HTTP 502".into());
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"code":"upstream_error","message":"plugin yahoo: HTTP 502"}"#);
        assert_eq!(serde_json::from_str::<FetchError>(&json).unwrap(), e);
        // The code in the marker is the code clients see.
        for e in [
            FetchError::PluginTimeout("t".into()),
            FetchError::InvalidPluginOutput("o".into()),
            FetchError::PluginUnavailable("u".into()),
            FetchError::PluginError("p".into()),
        ] {
            let v: serde_json::Value = serde_json::to_value(&e).unwrap();
            assert_eq!(v["code"], e.code());
            assert_eq!(v["message"], e.to_string());
        }
        assert!(serde_json::from_str::<FetchError>(r#"{"code":"no_such_code","message":"m"}"#).is_err());
        // A rate limit crosses with its Retry-After.
        let e = FetchError::RateLimited {
            message: "no turn".into(),
            retry_after_s: 7,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<FetchError>(&json).unwrap(), e);
        assert_eq!(serde_json::to_value(&e).unwrap()["code"], "rate_limited");
        assert_eq!(e.retry_after_s(), Some(7));
    }
}
