//! A plugin's effective settings: what its file declares, overridden by
//! `[plugins.<name>]`, falling back to defaults. Kept behind an `ArcSwap` so a
//! config reload changes `ttl`, `timeout`, `max_concurrency`, `env`,
//! `allow_hosts` and `max_body` without recompiling; `memory_limit` and
//! `states` are read once, when the plugin's states are built.

use std::time::Duration;

use crate::config::PluginOverrides;
use crate::model::RateLimit;

use super::manifest::Manifest;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MEMORY: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub ttl: Duration,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub env: Vec<String>,
    pub allow_hosts: Option<Vec<String>>,
    pub memory_limit: usize,
    pub max_body: usize,
    pub states: usize,
    pub cache_version: u32,
    /// Dates before `today - settle` are settled (README, "Cache behaviour").
    pub settle: Duration,
    pub settled_ttl: Duration,
    /// Upstream budget; empty is no limit.
    pub rate_limit: RateLimit,
    /// How long a call waits for a turn of the budget (default: `timeout`).
    pub max_wait: Duration,
}

pub const DEFAULT_SETTLE: Duration = Duration::from_secs(3 * 86400);
pub const DEFAULT_SETTLED_TTL: Duration = Duration::from_secs(30 * 86400);

impl Settings {
    pub fn effective(m: &Manifest, o: &PluginOverrides, default_ttl: Duration) -> Self {
        let mut env = m.env.clone();
        for e in o.env.iter().flatten() {
            if !env.contains(e) {
                env.push(e.clone());
            }
        }
        let timeout = o.timeout.or(m.timeout).unwrap_or(DEFAULT_TIMEOUT);
        Settings {
            ttl: o.ttl.or(m.ttl).unwrap_or(default_ttl),
            timeout,
            rate_limit: o
                .rate_limit
                .clone()
                .or_else(|| m.rate_limit.clone())
                .unwrap_or_default(),
            max_wait: o.max_wait.or(m.max_wait).unwrap_or(timeout),
            max_concurrency: o
                .max_concurrency
                .or(m.max_concurrency)
                .unwrap_or(DEFAULT_MAX_CONCURRENCY),
            env,
            allow_hosts: o.allow_hosts.clone().or_else(|| m.allow_hosts.clone()),
            memory_limit: o.memory_limit.unwrap_or(DEFAULT_MEMORY),
            max_body: o.max_body.unwrap_or(DEFAULT_MAX_BODY),
            states: o.states.unwrap_or_else(default_states),
            cache_version: m.cache_version,
            settle: o.settle.or(m.settle).unwrap_or(DEFAULT_SETTLE),
            settled_ttl: o.settled_ttl.or(m.settled_ttl).unwrap_or(DEFAULT_SETTLED_TTL),
        }
    }
}

/// One Lua state per core (a state runs Lua on one thread at a time), at
/// least 1 and at most 4: more states cost memory (`memory_limit` each) and
/// threads for little gain, since a fetch mostly waits on its upstream.
fn default_states() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4)
}
