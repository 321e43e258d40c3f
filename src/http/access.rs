//! One access-log line per request (target `tickerd::access`, level info)
//! with plugin, ticker, cache status, status code and duration, and a
//! request id echoed in `X-Request-Id` (a valid incoming one is kept, so a
//! proxy's id follows the request through).

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;

fn request_id(req: &Request) -> HeaderValue {
    if let Some(v) = req.headers().get("x-request-id")
        && let Ok(s) = v.to_str()
        && !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return v.clone();
    }
    let id = format!("{:016x}", rand::rng().random::<u64>());
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
}

pub(crate) async fn log_request(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    req.headers_mut().insert("x-request-id", id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = next.run(req).await;
    let took = started.elapsed();
    let (plugin, ticker) = match path.strip_prefix("/v1/data/").and_then(|r| r.split_once('/')) {
        Some((p, t)) => (p, t),
        None => ("", ""),
    };
    crate::logging::access(&crate::logging::AccessLine {
        request_id: id.to_str().unwrap_or(""),
        method: method.as_str(),
        path: &path,
        plugin,
        ticker,
        cache: resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        status: resp.status().as_u16(),
        duration_ms: took.as_secs_f64() * 1000.0,
    });
    resp.headers_mut().insert("x-request-id", id);
    resp
}
