//! tickerd: a daemon that hosts Lua market-data fetcher plugins behind one
//! shared Redis cache, with hot reload and Prometheus metrics.
//!
//! Layers, outermost first: [`cli`] and [`http`] take requests; [`pipeline`]
//! runs them through [`cache`] and the [`plugin`] runtime; [`reload`] keeps
//! plugins and config current; [`metrics`] counts everything; [`config`]
//! and [`model`] hold validated inputs.

pub mod budget;
pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod http;
#[cfg(test)]
mod layers;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod producer;
pub mod reload;
pub mod server;
pub mod sink;
