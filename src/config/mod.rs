//! Configuration: flag > environment > TOML file > default.
//!
//! Loading is a pure function of (flags, environment snapshot, file text) so
//! precedence is unit-testable and a hot reload re-runs exactly the same code.

mod duration;
mod file;
mod kafka;
mod redis_access;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{RawDuration, parse_duration};
use file::{FileConfig, PluginSection};
pub use kafka::{KafkaConfig, WatchSink};
pub use redis_access::{RedisAccess, Secret, SentinelSettings, TlsFiles, read_pem};

use crate::model::{PluginName, RateLimit, Ticker};

/// A configuration problem, naming the key (or flag, or variable) and what it accepts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Environment variables this program reads; any other `TICKERD_*` is a typo.
pub const KNOWN_TICKERD_ENV: &[&str] = &[
    "TICKERD_LISTEN",
    "TICKERD_PLUGINS_DIR",
    "TICKERD_CONFIG",
    "TICKERD_ADMIN_TOKEN",
    "TICKERD_LOG",
    "TICKERD_LOG_FORMAT",
];

/// What the command line says; `None` means "not given, ask the next source".
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub listen: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub poll: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherKind {
    Native,
    Poll,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// Without credentials (they are in `access`), so it can be logged.
    pub url: String,
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long Redis is skipped after a failure before the next attempt.
    pub backoff: Duration,
    pub key_prefix: String,
    pub cluster: bool,
    /// Cluster seed nodes, without credentials.
    pub nodes: Vec<String>,
    /// Credentials, TLS files and Sentinel (SPEC §9).
    pub access: RedisAccess,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub default_ttl: Duration,
    pub stale_if_error: Duration,
    pub negative_ttl: Duration,
    pub memory_max_entries: u64,
    /// Byte bound of the memory layer (and of the L1), beside the entry bound.
    pub memory_max_bytes: u64,
    /// An answer (bars + meta) larger than this is served but not cached.
    pub max_stored_bytes: u64,
    /// In-process hot cache in front of Redis; zero turns it off.
    pub l1_ttl: Duration,
    pub l1_max_entries: u64,
}

/// `[plugins.<name>]`: overrides of what the plugin file declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginOverrides {
    pub ttl: Option<Duration>,
    pub timeout: Option<Duration>,
    pub max_concurrency: Option<usize>,
    pub env: Option<Vec<String>>,
    pub allow_hosts: Option<Vec<String>>,
    pub memory_limit: Option<usize>,
    pub max_body: Option<usize>,
    pub states: Option<usize>,
    /// Dates older than this (before today) are settled (README, "Cache behaviour").
    pub settle: Option<Duration>,
    /// How long settled dates stay fresh.
    pub settled_ttl: Option<Duration>,
    /// Upstream budget (SPEC §7); `Some(empty)` lifts the plugin's own limit.
    pub rate_limit: Option<RateLimit>,
    /// How long a call may wait for a turn of the budget.
    pub max_wait: Option<Duration>,
}

/// `[[watch]]`: the producer keeps these tickers fresh and publishes them.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEntry {
    pub plugin: PluginName,
    pub tickers: Vec<Ticker>,
    pub every: Duration,
    pub lookback: Duration,
    pub sink: WatchSink,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub plugins_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub log: String,
    pub log_format: LogFormat,
    pub watcher: WatcherKind,
    pub poll_interval: Duration,
    pub drain_timeout: Duration,
    /// Threads serving HTTP, each with its own runtime (see `http::cores`);
    /// `None` means one per core, resolved where the threads are started so
    /// the config does not depend on the HTTP layer.
    pub http_threads: Option<usize>,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub plugins: BTreeMap<String, PluginOverrides>,
    pub watch: Vec<WatchEntry>,
    /// `[kafka]`, resolved only when a `[[watch]]` entry has `sink = "kafka"`
    /// (or the section is written), so a daemon without Kafka never needs one.
    pub kafka: Option<KafkaConfig>,
}

impl Config {
    /// Loads from the real process environment and the config file it names.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let path = flags
            .config
            .clone()
            .or_else(|| env.get("TICKERD_CONFIG").map(PathBuf::from));
        let text = match &path {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ConfigError::File {
                path: p.clone(),
                message: format!("cannot read it: {e}"),
            })?),
            None => None,
        };
        let config = Self::resolve(flags, &env, path.as_deref(), text.as_deref())?;
        redis_access::check_tls_files(&config.redis.access.tls)?;
        Ok(config)
    }

    /// Applies precedence to already-gathered sources.
    pub fn resolve(
        flags: &Flags,
        env: &HashMap<String, String>,
        path: Option<&Path>,
        text: Option<&str>,
    ) -> Result<Self, ConfigError> {
        for name in env.keys().filter(|k| k.starts_with("TICKERD_")) {
            if !KNOWN_TICKERD_ENV.contains(&name.as_str()) {
                return Err(invalid(
                    name.clone(),
                    format!(
                        "unknown environment variable; known ones are {}",
                        KNOWN_TICKERD_ENV.join(", ")
                    ),
                ));
            }
        }
        let file: FileConfig = match text {
            Some(t) => toml::from_str(t).map_err(|e| ConfigError::File {
                path: path.map(Path::to_path_buf).unwrap_or_default(),
                message: e.to_string(),
            })?,
            None => FileConfig::default(),
        };
        let env_get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();

        let listen_raw = flags
            .listen
            .clone()
            .map(|v| ("--listen", v))
            .or_else(|| env_get("TICKERD_LISTEN").map(|v| ("TICKERD_LISTEN", v)))
            .or_else(|| file.listen.clone().map(|v| ("listen", v)))
            .unwrap_or(("listen", "127.0.0.1:8000".to_owned()));
        let listen = parse_listen(&listen_raw.1).map_err(|m| invalid(listen_raw.0, m))?;

        let plugins_dir = flags
            .plugins_dir
            .clone()
            .or_else(|| env_get("TICKERD_PLUGINS_DIR").map(PathBuf::from))
            .or_else(|| file.plugins_dir.clone().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("plugins"));

        let admin_token = env_get("TICKERD_ADMIN_TOKEN").or(file.admin_token.clone());
        if let Some(t) = &admin_token
            && (t.trim().is_empty() || t.chars().any(char::is_whitespace))
        {
            return Err(invalid(
                "TICKERD_ADMIN_TOKEN",
                "must be a non-empty token without spaces",
            ));
        }

        let log = env_get("TICKERD_LOG")
            .or(file.log.clone())
            .unwrap_or_else(|| "info".to_owned());
        let (fmt_key, fmt_raw) = env_get("TICKERD_LOG_FORMAT")
            .map(|v| ("TICKERD_LOG_FORMAT", v))
            .or_else(|| file.log_format.clone().map(|v| ("log_format", v)))
            .unwrap_or(("log_format", "text".to_owned()));
        let log_format = match fmt_raw.as_str() {
            "text" | "pretty" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid(fmt_key, format!("{other:?}: expected \"text\" or \"json\""))),
        };

        let watcher = if flags.poll {
            WatcherKind::Poll
        } else {
            match file.watcher.as_deref() {
                None | Some("native") => WatcherKind::Native,
                Some("poll") => WatcherKind::Poll,
                Some(other) => {
                    return Err(invalid(
                        "watcher",
                        format!("{other:?}: expected \"native\" or \"poll\""),
                    ));
                }
            }
        };
        let poll_interval = dur(&file.poll_interval, "poll_interval", Duration::from_millis(500))?;
        let drain_timeout = dur(&file.drain_timeout, "drain_timeout", Duration::from_secs(30))?;
        let http_threads = match file.http_threads {
            None => None,
            Some(n @ 1..=256) => Some(n as usize),
            Some(n) => {
                return Err(invalid(
                    "http_threads",
                    format!("{n}: expected 1 to 256 (default: one per core)"),
                ));
            }
        };

        let redis = resolve_redis(&file, &env_get)?;
        let cache = resolve_cache(&file, &env_get)?;

        let mut plugins = BTreeMap::new();
        for (name, section) in &file.plugins {
            PluginName::parse(name).map_err(|e| invalid(format!("plugins.{name}"), e.message))?;
            plugins.insert(name.clone(), resolve_plugin(name, section)?);
        }

        let mut watch = Vec::new();
        for (i, w) in file.watch.iter().enumerate() {
            let key = |k: &str| format!("watch[{i}].{k}");
            let plugin = PluginName::parse(&w.plugin).map_err(|e| invalid(key("plugin"), e.message))?;
            if w.tickers.is_empty() {
                return Err(invalid(key("tickers"), "list at least one ticker"));
            }
            let tickers = w
                .tickers
                .iter()
                .map(|t| Ticker::parse(t).map_err(|e| invalid(key("tickers"), e.message)))
                .collect::<Result<Vec<_>, _>>()?;
            let every = w.every.parse().map_err(|m| invalid(key("every"), m))?;
            if every < Duration::from_secs(1) {
                return Err(invalid(key("every"), "must be at least 1s"));
            }
            let lookback = match &w.lookback {
                Some(l) => l.parse().map_err(|m| invalid(key("lookback"), m))?,
                None => Duration::from_secs(7 * 86400),
            };
            let sink = kafka::resolve_sink(
                &key,
                w.sink.as_deref(),
                w.topic.as_deref(),
                w.stream.as_deref(),
                w.maxlen,
            )?;
            watch.push(WatchEntry {
                plugin,
                tickers,
                every,
                lookback,
                sink,
            });
        }
        let wants_kafka = watch.iter().any(|w| matches!(w.sink, WatchSink::Kafka { .. }));
        let kafka = if wants_kafka || file.kafka.is_some() {
            Some(kafka::resolve_kafka(file.kafka.as_ref(), &env_get)?)
        } else {
            None
        };

        Ok(Config {
            listen,
            plugins_dir,
            config_file: path.map(Path::to_path_buf),
            admin_token,
            log,
            log_format,
            watcher,
            poll_interval,
            drain_timeout,
            http_threads,
            redis,
            cache,
            plugins,
            watch,
            kafka,
        })
    }

    pub fn plugin_overrides(&self, name: &str) -> PluginOverrides {
        self.plugins.get(name).cloned().unwrap_or_default()
    }
}

fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = raw.parse::<SocketAddr>() {
        return Ok(a);
    }
    raw.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| format!("{raw:?} is not an address; expected HOST:PORT such as 127.0.0.1:8000"))
}

fn dur(v: &Option<RawDuration>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        Some(r) => r.parse().map_err(|m| invalid(key, m)),
        None => Ok(default),
    }
}

fn resolve_redis(file: &FileConfig, env_get: &dyn Fn(&str) -> Option<String>) -> Result<RedisConfig, ConfigError> {
    let r = &file.redis;
    let url = if let Some(u) = env_get("REDIS_URL") {
        check_redis_url("REDIS_URL", &u)?;
        u
    } else if ["REDIS_HOST", "REDIS_PORT", "REDIS_DB"]
        .iter()
        .any(|k| env_get(k).is_some())
    {
        let host = env_get("REDIS_HOST").unwrap_or_else(|| "localhost".to_owned());
        let port = env_get("REDIS_PORT").unwrap_or_else(|| "6379".to_owned());
        let db = env_get("REDIS_DB").unwrap_or_else(|| "0".to_owned());
        port.parse::<u16>()
            .map_err(|_| invalid("REDIS_PORT", format!("{port:?}: expected a port number 1-65535")))?;
        db.parse::<u32>()
            .map_err(|_| invalid("REDIS_DB", format!("{db:?}: expected a database number such as 0")))?;
        if host.contains(['/', '@', ' ']) {
            return Err(invalid("REDIS_HOST", format!("{host:?}: expected a host name or IP")));
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        format!("redis://{host}:{port}/{db}")
    } else if let Some(u) = &r.url {
        check_redis_url("redis.url", u)?;
        u.clone()
    } else {
        "redis://localhost:6379/0".to_owned()
    };
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "tickerd".to_owned());
    if key_prefix.is_empty() || key_prefix.contains([' ', '*', '?', '[', ']', '{', '}']) {
        return Err(invalid(
            "redis.key_prefix",
            format!("{key_prefix:?}: expected a non-empty prefix without spaces, glob or hash-tag characters"),
        ));
    }
    let url_key = if env_get("REDIS_URL").is_some() {
        "REDIS_URL"
    } else {
        "redis.url"
    };
    let main = redis_access::split_url(url_key, &url)?;
    let url = main.url;
    let mut any_tls_url = main.tls;
    let (mut url_user, mut url_password) = (main.username, main.password);
    let mut nodes = Vec::new();
    for (i, n) in r.nodes.clone().unwrap_or_default().iter().enumerate() {
        check_redis_url(&format!("redis.nodes[{i}]"), n)?;
        let split = redis_access::split_url(&format!("redis.nodes[{i}]"), n)?;
        any_tls_url |= split.tls;
        url_user = url_user.or(split.username);
        url_password = url_password.or(split.password);
        nodes.push(split.url);
    }
    let access = redis_access::resolve(r, env_get, url_user, url_password, any_tls_url)?;
    if access.sentinel.is_some() && (r.cluster == Some(true) || nodes.len() > 1) {
        return Err(invalid(
            "redis.sentinels",
            "Sentinel and Cluster exclude each other: a cluster fails over by itself; remove redis.sentinels or redis.nodes/cluster",
        ));
    }
    let op_timeout = dur(&r.op_timeout, "redis.op_timeout", Duration::from_millis(250))?;
    if op_timeout.is_zero() {
        return Err(invalid("redis.op_timeout", "must be more than 0"));
    }
    Ok(RedisConfig {
        url,
        op_timeout,
        connect_timeout: dur(&r.connect_timeout, "redis.connect_timeout", Duration::from_millis(500))?,
        backoff: dur(&r.backoff, "redis.backoff", Duration::from_secs(1))?,
        key_prefix,
        cluster: r.cluster.unwrap_or(false) || nodes.len() > 1,
        nodes,
        access,
    })
}

fn check_redis_url(key: &str, url: &str) -> Result<(), ConfigError> {
    redis::parse_redis_url(url)
        .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
        .map(|_| ())
        .ok_or_else(|| {
            invalid(
                key,
                format!(
                    "{:?}: expected redis://[user[:password]@]host:port/db or rediss://...",
                    redis_access::mask_url(url)
                ),
            )
        })
}

/// A byte size from the file, or its default.
fn size(raw: &Option<String>, key: &str, default: u64) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(r) => parse_bytes(r).map(|n| n as u64).map_err(|m| invalid(key, m)),
    }
}

fn resolve_cache(file: &FileConfig, env_get: &dyn Fn(&str) -> Option<String>) -> Result<CacheConfig, ConfigError> {
    let c = &file.cache;
    let default_ttl = match env_get("CACHE_TTL_SECONDS") {
        Some(v) => parse_duration(&v).map_err(|m| invalid("CACHE_TTL_SECONDS", m))?,
        None => dur(&c.default_ttl, "cache.default_ttl", Duration::from_secs(86400))?,
    };
    if default_ttl.is_zero() {
        return Err(invalid("cache.default_ttl", "must be more than 0"));
    }
    let memory_max_entries = c.memory_max_entries.unwrap_or(10_000);
    if memory_max_entries == 0 {
        return Err(invalid("cache.memory_max_entries", "must be at least 1"));
    }
    Ok(CacheConfig {
        default_ttl,
        stale_if_error: dur(&c.stale_if_error, "cache.stale_if_error", Duration::from_secs(86400))?,
        negative_ttl: dur(&c.negative_ttl, "cache.negative_ttl", Duration::from_secs(60))?,
        memory_max_entries,
        memory_max_bytes: size(&c.memory_max_bytes, "cache.memory_max_bytes", 256 * 1024 * 1024)?,
        max_stored_bytes: size(&c.max_stored_bytes, "cache.max_stored_bytes", 8 * 1024 * 1024)?,
        // Off unless asked for: with L1 on, a value changed in Redis by hand
        // (not through tickerd) is seen only after l1_ttl.
        l1_ttl: dur(&c.l1_ttl, "cache.l1_ttl", Duration::ZERO)?,
        l1_max_entries: c.l1_max_entries.unwrap_or(10_000),
    })
}

fn resolve_plugin(name: &str, s: &PluginSection) -> Result<PluginOverrides, ConfigError> {
    let key = |k: &str| format!("plugins.{name}.{k}");
    let ttl = s
        .ttl
        .as_ref()
        .map(|r| r.parse().map_err(|m| invalid(key("ttl"), m)))
        .transpose()?;
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(invalid(key("ttl"), "must be more than 0"));
    }
    let timeout = s
        .timeout
        .as_ref()
        .map(|r| r.parse().map_err(|m| invalid(key("timeout"), m)))
        .transpose()?;
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid(key("timeout"), "must be more than 0"));
    }
    let positive = |v: Option<u64>, k: &str| -> Result<Option<usize>, ConfigError> {
        match v {
            Some(0) => Err(invalid(key(k), "must be at least 1")),
            Some(n) => Ok(Some(n as usize)),
            None => Ok(None),
        }
    };
    let bytes = |v: &Option<String>, k: &str| -> Result<Option<usize>, ConfigError> {
        v.as_deref()
            .map(|raw| parse_bytes(raw).map_err(|m| invalid(key(k), m)))
            .transpose()
    };
    if let Some(env) = &s.env {
        for v in env {
            if !is_env_var_name(v) {
                return Err(invalid(
                    key("env"),
                    format!("{v:?} is not an environment variable name"),
                ));
            }
        }
    }
    let rate_limit = s
        .rate_limit
        .as_ref()
        .map(|r| match r {
            file::RawRateLimit::One(one) => RateLimit::parse(one),
            file::RawRateLimit::Many(list) => RateLimit::parse_list(list),
        })
        .transpose()
        .map_err(|m| invalid(key("rate_limit"), m))?;
    let max_wait = s
        .max_wait
        .as_ref()
        .map(|r| r.parse().map_err(|m| invalid(key("max_wait"), m)))
        .transpose()?;
    Ok(PluginOverrides {
        rate_limit,
        max_wait,
        ttl,
        timeout,
        max_concurrency: positive(s.max_concurrency, "max_concurrency")?,
        env: s.env.clone(),
        allow_hosts: s.allow_hosts.clone(),
        memory_limit: bytes(&s.memory_limit, "memory_limit")?,
        max_body: bytes(&s.max_body, "max_body")?,
        states: positive(s.states, "states")?,
        settle: s
            .settle
            .as_ref()
            .map(|r| r.parse().map_err(|m| invalid(key("settle"), m)))
            .transpose()?,
        settled_ttl: match s.settled_ttl.as_ref() {
            None => None,
            Some(r) => match r.parse() {
                Ok(d) if d == Duration::ZERO => return Err(invalid(key("settled_ttl"), "must be more than 0")),
                Ok(d) => Some(d),
                Err(m) => return Err(invalid(key("settled_ttl"), m)),
            },
        },
    })
}

/// `16 MiB`, `512 KiB` or `1000 bytes`: a size as it was most likely
/// written in the config, for messages that name a limit.
pub fn format_bytes(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Whether `name` can be an environment variable a plugin reads: letters,
/// digits and `_`, not empty (the plugin's `env` list and `[plugins.x] env`).
pub fn is_env_var_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `"64MiB"`, `"16 MB"`, `"512KiB"` or a plain byte count.
pub fn parse_bytes(raw: &str) -> Result<usize, String> {
    let t = raw.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{raw:?}: expected a size such as \"64MiB\", \"16MB\" or a byte count"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "{raw:?}: unknown unit {other:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    let v = n * mult;
    if !(1.0..1e13).contains(&v) {
        return Err(format!("{raw:?}: size out of range"));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_without_any_source() {
        let c = Config::resolve(&Flags::default(), &env(&[]), None, None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.plugins_dir, PathBuf::from("plugins"));
        assert_eq!(c.redis.url, "redis://localhost:6379/0");
        assert_eq!(c.redis.op_timeout, Duration::from_millis(250));
        assert_eq!(c.redis.key_prefix, "tickerd");
        assert_eq!(c.cache.default_ttl, Duration::from_secs(86400));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(60));
        assert_eq!(c.cache.memory_max_entries, 10_000);
        assert_eq!(c.http_threads, None);
        let c = Config::resolve(&Flags::default(), &env(&[]), None, Some("http_threads = 3\n")).unwrap();
        assert_eq!(c.http_threads, Some(3));
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let file = "listen = \"127.0.0.1:7001\"\nplugins_dir = \"from-file\"\n";
        let e = env(&[
            ("TICKERD_LISTEN", "127.0.0.1:7002"),
            ("TICKERD_PLUGINS_DIR", "from-env"),
        ]);
        let c = Config::resolve(&Flags::default(), &env(&[]), None, Some(file)).unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.plugins_dir, PathBuf::from("from-file"));
        let c = Config::resolve(&Flags::default(), &e, None, Some(file)).unwrap();
        assert_eq!(c.listen.port(), 7002);
        assert_eq!(c.plugins_dir, PathBuf::from("from-env"));
        let flags = Flags {
            listen: Some("127.0.0.1:7003".into()),
            plugins_dir: Some("from-flag".into()),
            ..Flags::default()
        };
        let c = Config::resolve(&flags, &e, None, Some(file)).unwrap();
        assert_eq!(c.listen.port(), 7003);
        assert_eq!(c.plugins_dir, PathBuf::from("from-flag"));
    }

    #[test]
    fn seed_variables_and_redis_url() {
        let file = "[redis]\nurl = \"redis://file:1/1\"\n[cache]\ndefault_ttl = \"1h\"\n";
        let c = Config::resolve(&Flags::default(), &env(&[]), None, Some(file)).unwrap();
        assert_eq!(c.redis.url, "redis://file:1/1");
        assert_eq!(c.cache.default_ttl, Duration::from_secs(3600));
        let e = env(&[("REDIS_HOST", "h"), ("REDIS_PORT", "6380"), ("CACHE_TTL_SECONDS", "60")]);
        let c = Config::resolve(&Flags::default(), &e, None, Some(file)).unwrap();
        assert_eq!(c.redis.url, "redis://h:6380/0");
        assert_eq!(c.cache.default_ttl, Duration::from_secs(60));
        let e = env(&[("REDIS_HOST", "h"), ("REDIS_URL", "redis://:pw@u:1/2")]);
        let c = Config::resolve(&Flags::default(), &e, None, Some(file)).unwrap();
        assert_eq!(c.redis.url, "redis://u:1/2");
        assert_eq!(c.redis.access.password.as_ref().map(Secret::expose), Some("pw"));
    }

    #[test]
    fn bad_values_name_the_key() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (&[("REDIS_PORT", "abc")], None, "REDIS_PORT"),
            (&[("CACHE_TTL_SECONDS", "soon")], None, "CACHE_TTL_SECONDS"),
            (&[("TICKERD_LISTEN", "nowhere")], None, "TICKERD_LISTEN"),
            (&[("TICKERD_LISTN", "x")], None, "TICKERD_LISTN"),
            (&[("TICKERD_LOG_FORMAT", "xml")], None, "TICKERD_LOG_FORMAT"),
            (&[], Some("[cache]\nnegative_ttl = \"often\"\n"), "cache.negative_ttl"),
            (&[], Some("[plugins.yahoo]\nttl = \"x\"\n"), "plugins.yahoo.ttl"),
            (&[], Some("[plugins.Yahoo]\n"), "plugins.Yahoo"),
            (&[], Some("[redis]\nurl = \"http://x\"\n"), "redis.url"),
            (&[], Some("http_threads = 0\n"), "http_threads"),
            (&[], Some("http_threads = 1000\n"), "http_threads"),
            (
                &[],
                Some("[[watch]]\nplugin = \"y\"\ntickers = [\"A:B\"]\nevery = \"5m\"\n"),
                "watch[0].tickers",
            ),
        ];
        for (e, file, key) in cases {
            let err = Config::resolve(&Flags::default(), &env(e), None, *file).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let err = Config::resolve(&Flags::default(), &env(&[]), None, Some("[cache]\nttl = 5\n")).unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
        let err = Config::resolve(&Flags::default(), &env(&[]), None, Some("colour = 1\n")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(format_bytes(64 * 1024 * 1024), "64 MiB");
        assert_eq!(format_bytes(512 * 1024), "512 KiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
        assert!(is_env_var_name("API_KEY_2") && !is_env_var_name("") && !is_env_var_name("A-B"));
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("16 MB").unwrap(), 16_000_000);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn rate_limits_one_or_a_list_and_bad_ones_named() {
        let text = "[plugins.yahoo]\nrate_limit = \"20/s\"\nmax_wait = \"2s\"\n[plugins.av]\nrate_limit = [\"25/day\", \"5/min\"]\n[plugins.free]\nrate_limit = []\n";
        let c = Config::resolve(&Flags::default(), &env(&[]), None, Some(text)).unwrap();
        let y = c.plugin_overrides("yahoo");
        assert_eq!(y.rate_limit.unwrap().to_string(), "20/s");
        assert_eq!(y.max_wait, Some(Duration::from_secs(2)));
        assert_eq!(
            c.plugin_overrides("av").rate_limit.unwrap().to_string(),
            "5/min, 25/day"
        );
        assert!(c.plugin_overrides("free").rate_limit.unwrap().is_empty());
        for (text, key) in [
            (
                "[plugins.yahoo]\nrate_limit = \"20/week\"\n",
                "plugins.yahoo.rate_limit",
            ),
            ("[plugins.yahoo]\nrate_limit = 20\n", "rate_limit"),
            ("[plugins.yahoo]\nmax_wait = \"soon\"\n", "plugins.yahoo.max_wait"),
        ] {
            let err = Config::resolve(&Flags::default(), &env(&[]), None, Some(text)).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }
}
