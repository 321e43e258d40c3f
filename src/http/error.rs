//! `AppError` as an HTTP answer: `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::AppError;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let AppError::BadRequest { field, .. } = &self {
            body["error"]["field"] = json!(field);
        }
        let mut resp = (status, Json(body)).into_response();
        if matches!(self, AppError::Unauthorized(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tickerd admin\""),
            );
        }
        resp
    }
}
