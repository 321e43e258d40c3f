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

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::future::Either;

pub(crate) use conn::Limits as ConnLimits;
pub(crate) use cores::{Cores, default_threads as default_http_threads, start as serve_per_core};
pub(crate) use error::ApiError;

use crate::daemon::Daemon;

/// Longest request target accepted; longer ones get 414 before any parsing.
pub(crate) const MAX_URI: usize = 8 * 1024;

pub(crate) type AppState = Arc<Daemon>;

/// What the HTTP threads serve: the router, and a direct way to the data
/// handler for a plain `GET /v1/data/{plugin}/{ticker}` (no percent-escapes,
/// exactly two segments), the route every hit takes. The fast path answers
/// exactly what the router would (same handler, same middleware through
/// `access::around`); it skips route matching, the extractors' copies and
/// the tower service stack. Anything else goes through the router.
#[derive(Clone)]
pub(crate) struct App {
    router: Router,
    state: AppState,
}

impl App {
    pub(crate) fn new(state: AppState) -> Self {
        Self {
            router: router(Arc::clone(&state)),
            state,
        }
    }

    pub(crate) fn call(&self, req: Request) -> impl Future<Output = Response> + Send + use<> {
        if req.method() == axum::http::Method::GET && plain_data_path(req.uri().path()).is_some() {
            let state = Arc::clone(&self.state);
            Either::Left(access::around(req, move |r| async move {
                let answer = match plain_data_path(r.uri().path()) {
                    Some((plugin, ticker)) => data::answer(&state, plugin, ticker, r.uri(), r.headers()).await,
                    None => Err(ApiError::NotFound(format!("no route for GET {}", r.uri().path()))),
                };
                answer.into_response()
            }))
        } else {
            // The router is always ready; cloning it is an Arc clone (what
            // axum's own serve loop does per request too).
            let answer = tower_service::Service::call(&mut self.router.clone(), req);
            Either::Right(async move {
                match answer.await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            })
        }
    }
}

/// `(plugin, ticker)` of `/v1/data/{plugin}/{ticker}` when the router would
/// hand both to the data route unchanged: two non-empty segments, no `%`
/// escape to decode.
fn plain_data_path(path: &str) -> Option<(&str, &str)> {
    let (plugin, ticker) = path.strip_prefix("/v1/data/")?.split_once('/')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    (plain(plugin) && plain(ticker)).then_some((plugin, ticker))
}

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

#[cfg(test)]
mod tests {
    use super::plain_data_path;

    #[test]
    fn only_plain_two_segment_data_paths_take_the_fast_path() {
        assert_eq!(plain_data_path("/v1/data/synthetic/AAPL"), Some(("synthetic", "AAPL")));
        assert_eq!(
            plain_data_path("/v1/data/synthetic/BRK.B"),
            Some(("synthetic", "BRK.B"))
        );
        // Left to the router: its own answers (404, 400, decoding) stay the one truth.
        for path in [
            "/v1/data/synthetic",
            "/v1/data/synthetic/",
            "/v1/data//AAPL",
            "/v1/data/synthetic/AAPL/",
            "/v1/data/synthetic/AAPL/x",
            "/v1/data/synthetic/BRK%2EB",
            "/v1/data/syn%74hetic/AAPL",
            "/v1/plugins/synthetic",
            "/",
        ] {
            assert_eq!(plain_data_path(path), None, "{path}");
        }
    }
}
