//! tickerd: a daemon that hosts Lua market-data fetcher plugins behind one
//! shared Redis cache, with hot reload and Prometheus metrics.
//!
//! Layout (docs/ARCHITECTURE.md has the layer table a unit test enforces):
//!
//! - `cli`: the binary's entry point; `server` binds, serves and drains.
//! - `http`, `producer`, `reload`: the edges (routes, `[[watch]]`, the watcher).
//! - `daemon`: the assembled parts; `pipeline`: one request through the cache
//!   and a plugin; `budget`: upstream rate limits.
//! - `cache`, `plugin`, `sink`: storage, the Lua runtime, producer outputs.
//! - `metrics`, `logging`, `config`, `error`, `model`: what all of them share.
//!
//! Only what the binary needs is public: [`cli::main`]. Every module is
//! `pub(crate)`, so the compiler reports what nothing uses; the integration
//! tests drive the real binary. `examples/loadgen.rs` (bench/profile.sh)
//! fills a cache directly through the few items [`bench`] re-exports.

pub(crate) mod budget;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod error;
pub(crate) mod http;
#[cfg(test)]
mod layers;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod model;
pub(crate) mod pipeline;
pub(crate) mod plugin;
pub(crate) mod producer;
pub(crate) mod reload;
pub(crate) mod server;
pub(crate) mod sink;

/// What `examples/loadgen.rs` needs to fill a store without HTTP or Lua
/// (bench/profile.sh measures the Redis write path with it). Not an API.
#[doc(hidden)]
pub mod bench {
    pub use crate::cache::series::{Span, Write};
    pub use crate::cache::{Cache, SeriesId, Store, now_ms};
    pub use crate::config::{Config, Flags};
    pub use crate::metrics::Metrics;
    pub use crate::model::{Bar, DateRange, PluginName, Ticker, parse_date};
}
