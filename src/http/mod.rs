//! The HTTP API (README, "HTTP API") on axum: data, plugins, cache admin, stats,
//! health and metrics on one port.

mod access;
mod admin;
mod bulk;
mod conn;
mod cores;
mod data;
mod error;
mod info;
mod query;
mod status_page;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

pub(crate) use conn::Limits as ConnLimits;
pub(crate) use cores::{Cores, default_threads as default_http_threads, start as serve_per_core};
pub(crate) use error::ApiError;

use crate::daemon::Daemon;

/// Longest request target accepted; longer ones get 414 before any parsing.
pub(crate) const MAX_URI: usize = 8 * 1024;

pub(crate) type AppState = Arc<Daemon>;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/data/{plugin}/{ticker}", get(data::get_data))
        .route("/v1/data/{plugin}", get(bulk::get_bulk))
        .route("/v1/plugins", get(info::list_plugins))
        .route("/v1/plugins/{name}", get(info::get_plugin))
        .route("/v1/cache", delete(admin::delete_cache))
        .route("/v1/reload", post(admin::reload))
        .route("/v1/stats", get(info::stats))
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(info::readyz))
        .route("/metrics", get(info::metrics))
        .route("/", get(status_page::page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(access::log_request))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path())).into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.uri().path())).into_response()
}

/// The 414 answer for a request target over its route's limit, if it is.
fn uri_too_long(uri: &axum::http::Uri) -> Option<Response> {
    let len = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(0);
    // The bulk route names up to 1000 tickers in its query.
    let limit = if bulk::is_bulk_path(uri.path()) {
        bulk::MAX_BULK_URI
    } else {
        MAX_URI
    };
    (len > limit).then(|| ApiError::UriTooLong(format!("{len} bytes; the limit is {limit}")).into_response())
}
