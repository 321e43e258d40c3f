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
    // 16 hex digits written in place (no formatter on every request).
    let n = rand::rng().random::<u64>();
    let mut hex = [0u8; 16];
    for (i, c) in hex.iter_mut().enumerate() {
        *c = b"0123456789abcdef"[(n >> (60 - 4 * i) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
}

/// Longest path kept in an access-log line; plugin and ticker names are
/// shorter by rule, but a bad request can carry anything up to the URI limit.
const MAX_LOGGED_PATH: usize = 256;
const MAX_LOGGED_NAME: usize = 64;

/// `s` cut to `max` bytes (on a character boundary) with the cut size noted,
/// so one request cannot write a multi-KiB log line.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…(+{} bytes)", &s[..end], s.len() - end))
}

/// The one middleware of the router: see [`around`].
pub(crate) async fn log_request(req: Request, next: Next) -> Response {
    around(req, |r| next.run(r)).await
}

/// What every request gets, through the router or its `/v1/data` fast path
/// (`http::App`): request id, the URI length bound (414 before any
/// parsing), and the access-log line, for every answer, 414s included. One
/// layer, not three: each `from_fn` layer boxes and clones on every request.
pub(crate) async fn around<F, Fut>(mut req: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let id = request_id(&req);
    req.headers_mut().insert("x-request-id", id.clone());
    let method = req.method().clone();
    // Shares the request's buffer: no copy of the path.
    let uri = req.uri().clone();
    let path = uri.path();
    let mut resp = match super::uri_too_long(&uri) {
        Some(refused) => refused,
        None => inner(req).await,
    };
    let took = started.elapsed();
    let (plugin, ticker) = match path.strip_prefix("/v1/data/").and_then(|r| r.split_once('/')) {
        Some((p, t)) => (p, t),
        None => ("", ""),
    };
    crate::logging::access(&crate::logging::AccessLine {
        request_id: id.to_str().unwrap_or(""),
        method: &clip(method.as_str(), MAX_LOGGED_NAME),
        path: &clip(path, MAX_LOGGED_PATH),
        plugin: &clip(plugin, MAX_LOGGED_NAME),
        ticker: &clip(ticker, MAX_LOGGED_NAME),
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

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn long_fields_are_cut_with_the_rest_counted() {
        assert_eq!(clip("/v1/data/x/Y", 256), "/v1/data/x/Y");
        let long = "a".repeat(18 * 1024);
        let c = clip(&long, 256);
        assert!(c.len() < 300, "{}", c.len());
        assert!(c.ends_with("…(+18176 bytes)"), "{c}");
        assert!(clip(&"é".repeat(200), 255).starts_with('é'));
    }
}
