//! Admin routes: `DELETE /v1/cache` and `POST /v1/reload`.
//!
//! With a token set, `Authorization: Bearer <token>` is required and compared
//! in constant time. Without one, admin routes work only while the daemon
//! listens on loopback, where only local users can reach them.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::query::Query;
use crate::cache::Selector;

pub(crate) fn authorize(d: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let cfg = d.config();
    match &cfg.admin_token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            match given {
                Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
                Some(_) => Err(ApiError::Unauthorized("the bearer token is wrong".into())),
                None => Err(ApiError::Unauthorized(
                    "admin routes need Authorization: Bearer <TICKERD_ADMIN_TOKEN>".into(),
                )),
            }
        }
        None if cfg.listen.ip().is_loopback() => Ok(()),
        None => Err(ApiError::Forbidden(format!(
            "admin routes are disabled: tickerd listens on {} (not loopback) and no admin token is set; set TICKERD_ADMIN_TOKEN (or admin_token in the config) and send Authorization: Bearer <token>",
            cfg.listen
        ))),
    }
}

/// The credentials of `Bearer <token>`; the scheme name is case-insensitive
/// (RFC 7235 §2.1), so `bearer` and `BEARER` work too.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) fn parse_selector(raw: Option<&str>) -> Result<Selector, ApiError> {
    let q = Query::parse(raw, &["plugin", "ticker", "start", "end"])?;
    let today = chrono::Utc::now().date_naive();
    Ok(Selector::from_parts(
        q.get("plugin"),
        q.get("ticker"),
        q.get("start"),
        q.get("end"),
        today,
    )?)
}

pub(crate) async fn delete_cache(
    State(d): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    authorize(&d, &headers)?;
    let sel = parse_selector(raw.as_deref())?;
    let done = d.invalidate(&sel).await;
    if !done.problems.is_empty() && !d.cache().redis().is_up() {
        return Err(ApiError::CacheUnavailable(format!(
            "entries were removed from the in-process memory cache, but redis could not be asked ({}); retry once redis_up is 1",
            done.problems.join("; ")
        )));
    }
    tracing::info!(
        plugin = ?sel.plugin.as_ref().map(|p| p.to_string()), ticker = ?sel.ticker.as_ref().map(|t| t.to_string()),
        range = ?sel.range.map(|r| r.to_string()), deleted = done.deleted, problems = ?done.problems,
        "cache entries invalidated"
    );
    if done.problems.is_empty() {
        Ok(Json(json!({"deleted": done.deleted})))
    } else {
        // Everything else was removed; say what could not be.
        Ok(Json(json!({"deleted": done.deleted, "problems": done.problems})))
    }
}

pub(crate) async fn reload(State(d): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&d, &headers)?;
    let outcome = d.reload_all().await;
    if let Some(e) = &outcome.plugins.error {
        // The rescan did nothing: a 200 would read as "reloaded".
        return Err(ApiError::Internal(e.clone()));
    }
    Ok(Json(serde_json::to_value(outcome).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(raw: &str) -> String {
        match parse_selector(Some(raw)) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{raw}: expected a 400, got {:?}", other.map(|s| (s.plugin, s.ticker))),
        }
    }

    #[test]
    fn a_selector_names_what_to_delete() {
        let s = parse_selector(Some("plugin=yahoo&ticker=aapl")).unwrap();
        assert_eq!(s.plugin.unwrap().as_str(), "yahoo");
        assert_eq!(s.ticker.unwrap().as_str(), "AAPL");
        assert!(s.range.is_none());
        let s = parse_selector(Some("ticker=MSFT&start=2024-01-01&end=2024-01-31")).unwrap();
        assert!(s.plugin.is_none());
        assert_eq!(s.range.unwrap().to_string(), "2024-01-01..2024-01-31");
        assert_eq!(field(""), "plugin", "nothing selected deletes nothing");
        assert_eq!(field("start=2024-01-01&end=2024-01-02"), "plugin");
        assert_eq!(field("plugin=yahoo&start=2024-01-01"), "end");
        assert_eq!(field("plugin=yahoo&end=2024-01-01"), "start");
        assert_eq!(field("plugin=yahoo&colour=red"), "colour");
        assert_eq!(field("ticker=BAD:TICKER"), "ticker");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer t0k", "bearer t0k", "BEARER t0k", "BeArEr  t0k "] {
            assert_eq!(bearer_token(h), Some("t0k"), "{h}");
        }
        assert_eq!(bearer_token("Basic dXNlcg=="), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
