//! The TOML file as written, before defaults and precedence are applied.
//! Every table denies unknown keys so a typo is an error, not a silent default.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::duration::RawDuration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub plugins_dir: Option<String>,
    pub admin_token: Option<String>,
    pub log: Option<String>,
    pub log_format: Option<String>,
    /// `"native"` (inotify) or `"poll"`; named `watcher` because `[[watch]]`
    /// already names the producer's entries.
    pub watcher: Option<String>,
    pub poll_interval: Option<RawDuration>,
    pub drain_timeout: Option<RawDuration>,
    pub http_threads: Option<u64>,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub redis: RedisSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSection>,
    #[serde(default)]
    pub watch: Vec<WatchSection>,
    pub kafka: Option<super::kafka::KafkaSection>,
}

/// `[http]`: limits of the serving edge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub max_connections: Option<u64>,
    pub header_read_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub write_timeout: Option<RawDuration>,
    pub max_range_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: Option<String>,
    pub op_timeout: Option<RawDuration>,
    pub connect_timeout: Option<RawDuration>,
    pub backoff: Option<RawDuration>,
    pub key_prefix: Option<String>,
    pub cluster: Option<bool>,
    pub nodes: Option<Vec<String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_insecure: Option<bool>,
    pub sentinels: Option<Vec<String>>,
    pub sentinel_master: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub default_ttl: Option<RawDuration>,
    pub stale_if_error: Option<RawDuration>,
    pub negative_ttl: Option<RawDuration>,
    pub memory_max_entries: Option<u64>,
    pub memory_max_bytes: Option<String>,
    pub max_stored_bytes: Option<String>,
    pub l1_ttl: Option<RawDuration>,
    pub l1_max_entries: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    pub ttl: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub max_concurrency: Option<u64>,
    pub env: Option<Vec<String>>,
    pub allow_hosts: Option<Vec<String>>,
    pub memory_limit: Option<String>,
    pub max_body: Option<String>,
    pub states: Option<u64>,
    pub settle: Option<RawDuration>,
    pub settled_ttl: Option<RawDuration>,
    pub rate_limit: Option<RawRateLimit>,
    pub max_wait: Option<RawDuration>,
}

/// `rate_limit = "10/s"` or `rate_limit = ["5/min", "25/day"]`, read before
/// we know which key it is so the error can name it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawRateLimit {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    pub plugin: String,
    pub tickers: Vec<String>,
    pub every: RawDuration,
    pub lookback: Option<RawDuration>,
    pub stream: Option<String>,
    pub maxlen: Option<u64>,
    /// `"redis-stream"` (default) or `"kafka"`.
    pub sink: Option<String>,
    pub topic: Option<String>,
}
