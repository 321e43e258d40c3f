//! Host modules: the globals a plugin gets besides the standard libraries
//! (docs/PLUGINS.md, "Host modules"): `http`, `json`, `csv`, `log`, `env`, `date`, and `errors` for
//! raising a classified failure.

mod csv;
mod date;
mod env;
mod errors;
mod http;
mod json;
mod log;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mlua::Lua;

use super::settings::Settings;

/// A failure raised by a host function (or by the deadline hook) that maps to
/// a specific HTTP error rather than the generic `plugin_error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostError {
    /// The data source failed: network error, refused connection, or
    /// `errors.upstream(msg)` from the plugin.
    #[error("{0}")]
    Upstream(String),
    /// A wall-time limit was reached.
    #[error("{0}")]
    Timeout(String),
    /// `errors.no_data(msg)`: the source has nothing for this request.
    #[error("{0}")]
    NoData(String),
    /// A configured limit other than time (body size, allow-list).
    #[error("{0}")]
    Limit(String),
    /// `errors.rate_limited(msg, secs)`: the source refused us for a while.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
}

/// An upstream refusal seen by an `http` call during one fetch: a 429, or a
/// 503 that carried `Retry-After`. If the fetch then fails, the failure is
/// the refusal (README "Rate limits"), whatever the plugin made of the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// What `Retry-After` said, when it said something readable.
    pub retry_after: Option<Duration>,
}

tokio::task_local! {
    /// The refusal of the fetch running in this task, if any. Each fetch runs
    /// in its own task on its worker thread (`worker.rs`), so interleaved
    /// fetches on one Lua state never see each other's answers.
    static REFUSAL: std::cell::RefCell<Option<Refusal>>;
}

/// Runs one fetch with a fresh refusal record; returns what it recorded.
pub async fn tracking_refusals<F: std::future::Future>(f: F) -> (F::Output, Option<Refusal>) {
    REFUSAL
        .scope(std::cell::RefCell::new(None), async move {
            let out = f.await;
            let seen = REFUSAL.with(|r| r.borrow_mut().take());
            (out, seen)
        })
        .await
}

/// Notes a refusal for the current fetch (no-op outside [`tracking_refusals`]).
fn note_refusal(r: Refusal) {
    let _ = REFUSAL.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        // The longest Retry-After of the fetch wins.
        let longer = match (&*slot, r.retry_after) {
            (None, _) => true,
            (Some(old), Some(new)) => old.retry_after.is_none_or(|o| new > o),
            (Some(_), None) => false,
        };
        if longer {
            *slot = Some(r);
        }
    });
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3);
/// `None` when absent or unreadable.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at = std::time::SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What host modules need to know about the plugin they serve.
#[derive(Clone)]
pub struct HostCtx {
    pub plugin: String,
    pub settings: Arc<ArcSwap<Settings>>,
    pub http: reqwest::Client,
}

/// One HTTP client for the whole process: connection pools are shared and
/// TLS roots are loaded once.
pub fn http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .user_agent(concat!(
                    "tickerd/",
                    env!("CARGO_PKG_VERSION"),
                    " (+https://github.com/tickerd/tickerd)"
                ))
                .connect_timeout(std::time::Duration::from_secs(10))
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                // http.rs follows redirects itself, checking allow_hosts before each hop.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        })
        .clone()
}

pub fn install(lua: &Lua, ctx: &HostCtx) -> mlua::Result<()> {
    log::install(lua, ctx)?;
    date::install(lua)?;
    env::install(lua, ctx)?;
    json::install(lua)?;
    csv::install(lua)?;
    http::install(lua, ctx)?;
    errors::install(lua)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        // 2023-11-14T22:13:20Z is 1_700_000_000; thirty seconds later:
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[tokio::test]
    async fn refusals_belong_to_their_own_fetch() {
        let r = |s: u64| Refusal {
            status: 429,
            retry_after: Some(Duration::from_secs(s)),
        };
        let ((), seen) = tracking_refusals(async {
            note_refusal(r(5));
            note_refusal(r(30));
            note_refusal(r(10));
        })
        .await;
        assert_eq!(seen, Some(r(30)), "the longest Retry-After wins");
        let ((), seen) = tracking_refusals(async {}).await;
        assert_eq!(seen, None);
        note_refusal(r(1)); // outside a fetch: ignored, no panic
    }
}
