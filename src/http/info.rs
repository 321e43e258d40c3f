//! Read-only routes: plugins, stats, health, readiness and metrics.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::cache::{RedisLink, WriteHealth};
use crate::error::FetchError;
use crate::plugin::PluginSlot;

pub(crate) fn plugin_json(slot: &PluginSlot) -> Value {
    let cur = slot.current.as_ref();
    let settings = cur.map(|p| p.settings());
    json!({
        "name": slot.name,
        "description": cur.map(|p| p.manifest.description.clone()).unwrap_or_default(),
        "version": cur.map(|p| p.version.clone()),
        "ttl_s": settings.as_ref().map(|s| s.ttl.as_secs()),
        "timeout_s": settings.as_ref().map(|s| s.timeout.as_secs_f64()),
        "cache_version": settings.as_ref().map(|s| s.cache_version),
        "max_concurrency": settings.as_ref().map(|s| s.max_concurrency),
        "rate_limit": settings.as_ref().map(|s| s.rate_limit.to_strings()),
        "max_wait_s": settings.as_ref().map(|s| s.max_wait.as_secs_f64()),
        "status": slot.status.as_str(),
        "last_error": slot.last_error,
        "loaded_at": cur.map(|p| p.loaded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "checked_at": slot.checked_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "file": slot.file.display().to_string(),
    })
}

pub(crate) async fn list_plugins(State(d): State<AppState>) -> Json<Value> {
    let mut out = Vec::new();
    for slot in d.registry().list().iter() {
        let mut v = plugin_json(slot);
        v["cooldown_until"] = cooldown_json(&d, slot.name.as_str()).await;
        out.push(v);
    }
    Json(Value::Array(out))
}

/// When the plugin's fleet-wide cool-down ends (RFC 3339), or null. Asked of
/// Redis (one round trip): another daemon may have started it.
async fn cooldown_json(d: &AppState, plugin: &str) -> Value {
    let until = d.budget().cooldown_until(plugin).await;
    json!(until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
}

pub(crate) async fn get_plugin(
    State(d): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = path?;
    let slot = d
        .registry()
        .get(&name)
        .ok_or_else(|| ApiError::Fetch(FetchError::PluginNotFound(name.clone())))?;
    let mut v = plugin_json(&slot);
    v["cooldown_until"] = cooldown_json(&d, &name).await;
    Ok(Json(v))
}

pub(crate) async fn stats(State(d): State<AppState>) -> Json<Value> {
    let t = d.metrics().totals();
    let hit_rate = t.hit_rate().unwrap_or(0.0);
    Json(json!({
        "hits": {"redis": t.hits_redis, "memory": t.hits_memory, "l1": t.hits_l1},
        "misses": t.misses,
        "errors": t.errors,
        "hit_rate": hit_rate,
        "stale_served": t.stale,
        "coalesced": t.coalesced,
        "memory_entries": d.cache().memory_entries(),
        "l1": d.cache().l1_state(),
        "redis": d.cache().redis_link(),
        "redis_writes": d.cache().write_health(),
        "memory_bytes": d.cache().memory_bytes(),
        "redis_mode": d.cache().redis().mode().as_str(),
        "redis_master": d.cache().redis().master(),
        "plugins_loaded": d.metrics().plugins_loaded.get(),
        "inflight_fetches": d.inflight_fetches(),
        "uptime_s": d.started().elapsed().as_secs(),
    }))
}

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn readyz(State(d): State<AppState>) -> Response {
    let redis = d.cache().redis_link();
    // Which server answers (the master in use, under Sentinel); no credentials.
    let (mode, master) = (d.cache().redis().mode().as_str(), d.cache().redis().master());
    let plugins = d.metrics().plugins_loaded.get();
    if !d.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "redis": redis, "redis_mode": mode, "redis_master": master, "plugins": plugins, "message": "loading plugins"})),
        )
            .into_response();
    }
    let writes = d.cache().write_health();
    let message = if redis == RedisLink::Up && writes == WriteHealth::Failing {
        "ready; redis: up, writes failing (answers are served but not cached in redis; see cache_write_errors_total and the log)".to_owned()
    } else if redis == RedisLink::Up {
        "ready; redis: up".to_owned()
    } else {
        "ready; redis: down (degraded: serving from the in-process memory cache)".to_owned()
    };
    Json(json!({"ready": true, "redis": redis, "redis_writes": writes, "redis_mode": mode, "redis_master": master, "plugins": plugins, "message": message}))
        .into_response()
}

pub(crate) async fn metrics(State(d): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        d.metrics().render(),
    )
        .into_response()
}
