//! The HTTP error: what the edge answers when a request fails, and the one
//! mapping from every failure (a domain [`FetchError`] or a problem of the
//! HTTP request itself) to a status and a stable `code`. The body is
//! `{"error": {"code": "...", "message": "..."[, "field": "..."]}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::FetchError;
use crate::model::InvalidField;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ApiError {
    /// The pipeline could not answer.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("request line too long: {0}")]
    UriTooLong(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// No route for the path.
    #[error("{0}")]
    NotFound(String),
    /// The path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    CacheUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        ApiError::BadRequest {
            field: e.field.to_owned(),
            message: e.message,
        }
    }
}

/// A path segment that cannot be decoded (`%ff` is not UTF-8) is a 400
/// with the same JSON body as every other bad request.
impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        ApiError::bad_request("path", r.body_text())
    }
}

impl ApiError {
    pub(crate) fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The stable machine-readable code clients switch on.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::Fetch(e) => e.code(),
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::CacheUnavailable(_) => "cache_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The one mapping to HTTP statuses. A new `FetchError` (a rate limit
    /// answered with 429 and `Retry-After`, say) gets its row here and its
    /// headers in `into_response`.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Fetch(e) => match e {
                FetchError::PluginNotFound(_) | FetchError::NoData(_) => StatusCode::NOT_FOUND,
                FetchError::PluginError(_) | FetchError::InvalidPluginOutput(_) | FetchError::UpstreamError(_) => {
                    StatusCode::BAD_GATEWAY
                }
                FetchError::PluginUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                FetchError::PluginTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
                FetchError::RateLimited { .. } | FetchError::UpstreamRefused { .. } => StatusCode::TOO_MANY_REQUESTS,
                FetchError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::CacheUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let ApiError::BadRequest { field, .. } = &self {
            body["error"]["field"] = json!(field);
        }
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::Fetch(e) = &self
            && let Some(secs) = e.retry_after_s()
        {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tickerd admin\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_keep_their_code_and_get_their_status() {
        let cases = [
            (FetchError::PluginNotFound("x".into()), 404, "plugin_not_found"),
            (FetchError::NoData("x".into()), 404, "no_data"),
            (FetchError::PluginError("x".into()), 502, "plugin_error"),
            (
                FetchError::InvalidPluginOutput("x".into()),
                502,
                "invalid_plugin_output",
            ),
            (FetchError::UpstreamError("x".into()), 502, "upstream_error"),
            (FetchError::PluginUnavailable("x".into()), 503, "plugin_unavailable"),
            (FetchError::PluginTimeout("x".into()), 504, "plugin_timeout"),
            (FetchError::Internal("x".into()), 500, "internal"),
            (
                FetchError::RateLimited {
                    message: "x".into(),
                    retry_after_s: 3,
                },
                429,
                "rate_limited",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e.clone());
            assert_eq!(api.status().as_u16(), status, "{e:?}");
            assert_eq!(api.code(), code);
            assert_eq!(api.to_string(), e.to_string());
        }
    }

    #[test]
    fn a_rate_limit_says_when_to_retry() {
        let r = ApiError::from(FetchError::RateLimited {
            message: "no turn".into(),
            retry_after_s: 0,
        })
        .into_response();
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1", "whole seconds, at least 1");
    }

    #[test]
    fn method_not_allowed_has_its_own_code() {
        let e = ApiError::MethodNotAllowed("POST is not allowed on /v1/data/x/y".into());
        assert_eq!((e.status().as_u16(), e.code()), (405, "method_not_allowed"));
    }
}
