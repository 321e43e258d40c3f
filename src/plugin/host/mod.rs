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
