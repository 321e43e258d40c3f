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
//! Only what the binary (`cli::main`) and the examples/benches need is
//! public: [`cache`], [`config`], [`metrics`], [`model`] and [`cli`]. The
//! rest is `pub(crate)`; the integration tests drive the real binary.

pub mod budget;
pub mod cache;
pub mod cli;
pub mod config;
pub(crate) mod daemon;
pub(crate) mod error;
pub(crate) mod http;
#[cfg(test)]
mod layers;
pub(crate) mod logging;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub(crate) mod plugin;
pub(crate) mod producer;
pub(crate) mod reload;
pub(crate) mod server;
pub(crate) mod sink;
