//! One error type for everything a request can run into, and its one mapping
//! to an HTTP status and a stable `code` string that clients can switch on.

use axum::http::StatusCode;

use crate::model::InvalidField;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("request line too long: {0}")]
    UriTooLong(String),
    #[error("no plugin named {0:?} is loaded; GET /v1/plugins lists them")]
    PluginNotFound(String),
    #[error("{0}")]
    NoData(String),
    #[error("{0}")]
    PluginError(String),
    #[error("{0}")]
    InvalidPluginOutput(String),
    #[error("{0}")]
    UpstreamError(String),
    #[error("{0}")]
    PluginUnavailable(String),
    #[error("{0}")]
    PluginTimeout(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    CacheUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<InvalidField> for AppError {
    fn from(e: InvalidField) -> Self {
        AppError::BadRequest {
            field: e.field.to_owned(),
            message: e.message,
        }
    }
}

impl AppError {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The stable machine-readable code; also the `reason` label of
    /// `stock_requests_failure_total`.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest { .. } => "bad_request",
            AppError::UriTooLong(_) => "uri_too_long",
            AppError::PluginNotFound(_) => "plugin_not_found",
            AppError::NoData(_) => "no_data",
            AppError::PluginError(_) => "plugin_error",
            AppError::InvalidPluginOutput(_) => "invalid_plugin_output",
            AppError::UpstreamError(_) => "upstream_error",
            AppError::PluginUnavailable(_) => "plugin_unavailable",
            AppError::PluginTimeout(_) => "plugin_timeout",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::CacheUnavailable(_) => "cache_unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            AppError::PluginNotFound(_) | AppError::NoData(_) | AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::PluginError(_) | AppError::InvalidPluginOutput(_) | AppError::UpstreamError(_) => {
                StatusCode::BAD_GATEWAY
            }
            AppError::PluginUnavailable(_) | AppError::CacheUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::PluginTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The fetch failure a `code()` names, for errors that travel between
    /// daemons (the fleet lock's failure marker); anything else reads as
    /// `plugin_error`.
    pub fn fetch_failure_from_code(code: &str, message: String) -> Self {
        match code {
            "upstream_error" => AppError::UpstreamError(message),
            "plugin_timeout" => AppError::PluginTimeout(message),
            "invalid_plugin_output" => AppError::InvalidPluginOutput(message),
            "plugin_unavailable" => AppError::PluginUnavailable(message),
            _ => AppError::PluginError(message),
        }
    }

    /// Whether a stale copy may stand in for this failure (stale-if-error):
    /// only when the source failed, never when the request itself was wrong.
    pub fn is_fetch_failure(&self) -> bool {
        matches!(
            self,
            AppError::PluginError(_)
                | AppError::InvalidPluginOutput(_)
                | AppError::UpstreamError(_)
                | AppError::PluginTimeout(_)
                | AppError::PluginUnavailable(_)
        )
    }
}
