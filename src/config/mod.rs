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
use file::{FileConfig, PluginSection, WatchSection};
pub use kafka::{KafkaConfig, WatchSink};
pub use redis_access::{RedisAccess, SentinelSettings, TlsFiles, read_pem};

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
    /// Credentials, TLS files and Sentinel (README "Production Redis").
    pub access: RedisAccess,
}

/// `[http]`: limits that keep slow or idle clients, and huge ranges, from
/// holding the daemon's connections, memory and file descriptors.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Open client connections at most; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// Time a write to the client may make no progress.
    pub write_timeout: Duration,
    /// Longest `start..end` a data request may ask for, in days.
    pub max_range_days: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            // 100 years.
            max_range_days: 36525,
        }
    }
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
    /// Upstream budget (README "Rate limits"); `Some(empty)` lifts the plugin's own limit.
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
    pub http: HttpConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub plugins: BTreeMap<PluginName, PluginOverrides>,
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
            Some(p) => Some(read_config_file(p).map_err(|message| ConfigError::File {
                path: p.clone(),
                message,
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
        check_tickerd_env(env)?;
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

        let admin_token = resolve_admin_token(&file, &env_get)?;
        let (log, log_format) = resolve_log(&file, &env_get)?;
        let watcher = resolve_watcher(flags, &file)?;
        let poll_interval = bounded_dur(
            &file.poll_interval,
            "poll_interval",
            Duration::from_millis(500),
            MS * 50,
            HOUR,
        )?;
        let drain_timeout = bounded_dur(
            &file.drain_timeout,
            "drain_timeout",
            Duration::from_secs(30),
            ZERO,
            HOUR,
        )?;
        let http = resolve_http(&file)?;
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
            let key = PluginName::parse(name).map_err(|e| invalid(format!("plugins.{name}"), e.message))?;
            plugins.insert(key, resolve_plugin(name, section)?);
        }

        let watch = file
            .watch
            .iter()
            .enumerate()
            .map(|(i, w)| resolve_watch(i, w, http.max_range_days))
            .collect::<Result<Vec<_>, _>>()?;
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
            http,
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

/// A misspelt `TICKERD_*` variable is an error rather than a setting
/// silently not applied.
fn check_tickerd_env(env: &HashMap<String, String>) -> Result<(), ConfigError> {
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
    Ok(())
}

fn resolve_admin_token(
    file: &FileConfig,
    env_get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let admin_token = env_get("TICKERD_ADMIN_TOKEN").or(file.admin_token.clone());
    if let Some(t) = &admin_token
        && (t.trim().is_empty() || t.chars().any(char::is_whitespace))
    {
        return Err(invalid(
            "TICKERD_ADMIN_TOKEN",
            "must be a non-empty token without spaces",
        ));
    }
    Ok(admin_token)
}

/// The log filter and format: environment first, then the file.
fn resolve_log(
    file: &FileConfig,
    env_get: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, LogFormat), ConfigError> {
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
    Ok((log, log_format))
}

fn resolve_watcher(flags: &Flags, file: &FileConfig) -> Result<WatcherKind, ConfigError> {
    if flags.poll {
        return Ok(WatcherKind::Poll);
    }
    match file.watcher.as_deref() {
        None | Some("native") => Ok(WatcherKind::Native),
        Some("poll") => Ok(WatcherKind::Poll),
        Some(other) => Err(invalid(
            "watcher",
            format!("{other:?}: expected \"native\" or \"poll\""),
        )),
    }
}

/// One `[[watch]]` entry; errors name it as `watch[i].key`. Its lookback is
/// bounded by `max_range_days`, as a request's range is.
fn resolve_watch(i: usize, w: &WatchSection, max_range_days: u32) -> Result<WatchEntry, ConfigError> {
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
    within(&key("every"), every, SEC, DAY)?;
    let lookback = match &w.lookback {
        Some(l) => l.parse().map_err(|m| invalid(key("lookback"), m))?,
        None => Duration::from_secs(7 * 86400),
    };
    within(&key("lookback"), lookback, ZERO, DAY * max_range_days)?;
    if let Some(m) = w.maxlen {
        bounded_int::<u64>(Some(m), &key("maxlen"), 0, 1, 10_000_000)?;
    }
    let sink = kafka::resolve_sink(
        &key,
        w.sink.as_deref(),
        w.topic.as_deref(),
        w.stream.as_deref(),
        w.maxlen,
    )?;
    Ok(WatchEntry {
        plugin,
        tickers,
        every,
        lookback,
        sink,
    })
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

/// Largest config file read: a config is a few KiB; `--config /dev/zero`
/// or a log file named by mistake must not be read without end.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads the config file: a regular file (a symlink to one is fine) of at
/// most [`MAX_CONFIG_BYTES`]. Checked before opening, because opening a FIFO
/// blocks until someone writes to it.
pub fn read_config_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file; give the path of a TOML file".into());
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "is {} bytes; a config file may be at most {MAX_CONFIG_BYTES} bytes",
            meta.len()
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("grew past {MAX_CONFIG_BYTES} bytes while being read"));
    }
    String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 text: {e}"))
}

const ZERO: Duration = Duration::ZERO;
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);
/// Longest TTL of any kind: ten years (Redis keeps millisecond expiries in
/// 64 bits, but a TTL past this is a typo, not a wish).
const MAX_TTL: Duration = Duration::from_secs(3650 * 86400);

/// A bound as it would be written in the config: `3650d`, `10m`, `250ms`.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    let whole = d.subsec_nanos().is_multiple_of(1_000_000);
    match ms {
        0 if d.is_zero() => "0s".to_owned(),
        ms if whole && ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if whole && ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if whole && ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if whole && ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms if whole => format!("{ms}ms"),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// Checks that a duration lies within `min..=max`, naming the key and the bounds.
/// Bounds of the per-plugin settings, the same whether a plugin file
/// declares them or `[plugins.<name>]` overrides them: (least, most).
pub(crate) mod plugin_bounds {
    use super::{DAY, MAX_TTL, MS, SEC, ZERO};
    use std::time::Duration;

    pub(crate) const TTL: (Duration, Duration) = (SEC, MAX_TTL);
    pub(crate) const TIMEOUT: (Duration, Duration) = (MS, Duration::from_secs(10 * 60));
    pub(crate) const SETTLE: (Duration, Duration) = (ZERO, MAX_TTL);
    pub(crate) const SETTLED_TTL: (Duration, Duration) = (SEC, MAX_TTL);
    /// A call waiting longer than a day for its turn is a misconfiguration.
    pub(crate) const MAX_WAIT: (Duration, Duration) = (ZERO, DAY);
    pub(crate) const MAX_CONCURRENCY: usize = 10_000;
    /// `cache_version` is part of every key; a bound keeps keys short.
    pub(crate) const CACHE_VERSION: u32 = 1_000_000;
}

/// `v` within `min..=max`, or the message that names the bounds (shared by
/// config keys and plugin-file declarations).
pub(crate) fn out_of_range(v: Duration, (min, max): (Duration, Duration)) -> Option<String> {
    (v < min || v > max).then(|| format!("{} is out of range; expected {} to {}", show(v), show(min), show(max)))
}

fn within(key: &str, v: Duration, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
    match out_of_range(v, (min, max)) {
        Some(m) => Err(invalid(key, m)),
        None => Ok(v),
    }
}

fn bounded_dur(
    v: &Option<RawDuration>,
    key: &str,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    within(key, dur(v, key, default)?, min, max)
}

/// A count within `min..=max` (or the default when absent), naming the key and the bounds.
fn bounded_int<T: TryFrom<u64>>(v: Option<u64>, key: &str, default: T, min: u64, max: u64) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => {
            T::try_from(n).map_err(|_| invalid(key, format!("{n} is out of range; expected {min} to {max}")))
        }
        Some(n) => Err(invalid(key, format!("{n} is out of range; expected {min} to {max}"))),
    }
}

fn resolve_http(file: &FileConfig) -> Result<HttpConfig, ConfigError> {
    let h = &file.http;
    let d = HttpConfig::default();
    Ok(HttpConfig {
        max_connections: bounded_int(
            h.max_connections,
            "http.max_connections",
            d.max_connections,
            1,
            1_000_000,
        )?,
        header_read_timeout: bounded_dur(
            &h.header_read_timeout,
            "http.header_read_timeout",
            d.header_read_timeout,
            SEC,
            MINUTE * 5,
        )?,
        idle_timeout: bounded_dur(&h.idle_timeout, "http.idle_timeout", d.idle_timeout, SEC, HOUR)?,
        write_timeout: bounded_dur(&h.write_timeout, "http.write_timeout", d.write_timeout, SEC, HOUR)?,
        max_range_days: bounded_int(h.max_range_days, "http.max_range_days", d.max_range_days, 1, 73_050)?,
    })
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
    let op_timeout = bounded_dur(
        &r.op_timeout,
        "redis.op_timeout",
        Duration::from_millis(250),
        MS,
        MINUTE,
    )?;
    Ok(RedisConfig {
        url,
        op_timeout,
        connect_timeout: bounded_dur(
            &r.connect_timeout,
            "redis.connect_timeout",
            Duration::from_millis(500),
            MS,
            MINUTE,
        )?,
        backoff: bounded_dur(&r.backoff, "redis.backoff", Duration::from_secs(1), ZERO, MINUTE * 10)?,
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
        Some(v) => within(
            "CACHE_TTL_SECONDS",
            parse_duration(&v).map_err(|m| invalid("CACHE_TTL_SECONDS", m))?,
            SEC,
            MAX_TTL,
        )?,
        None => bounded_dur(&c.default_ttl, "cache.default_ttl", DAY, SEC, MAX_TTL)?,
    };
    let memory_max_entries = bounded_int(c.memory_max_entries, "cache.memory_max_entries", 10_000, 1, 10_000_000)?;
    Ok(CacheConfig {
        default_ttl,
        stale_if_error: bounded_dur(&c.stale_if_error, "cache.stale_if_error", DAY, ZERO, MAX_TTL)?,
        negative_ttl: bounded_dur(&c.negative_ttl, "cache.negative_ttl", MINUTE, ZERO, MAX_TTL)?,
        memory_max_entries,
        memory_max_bytes: size(&c.memory_max_bytes, "cache.memory_max_bytes", 256 * 1024 * 1024)?,
        max_stored_bytes: size(&c.max_stored_bytes, "cache.max_stored_bytes", 8 * 1024 * 1024)?,
        // Off unless asked for: with L1 on, a value changed in Redis by hand
        // (not through tickerd) is seen only after l1_ttl.
        l1_ttl: bounded_dur(&c.l1_ttl, "cache.l1_ttl", ZERO, ZERO, DAY)?,
        l1_max_entries: bounded_int(c.l1_max_entries, "cache.l1_max_entries", 10_000, 1, 10_000_000)?,
    })
}

fn resolve_plugin(name: &str, s: &PluginSection) -> Result<PluginOverrides, ConfigError> {
    let key = |k: &str| format!("plugins.{name}.{k}");
    let ttl = s
        .ttl
        .as_ref()
        .map(|r| r.parse().map_err(|m| invalid(key("ttl"), m)))
        .transpose()?;
    if let Some(t) = ttl {
        within(&key("ttl"), t, plugin_bounds::TTL.0, plugin_bounds::TTL.1)?;
    }
    let timeout = s
        .timeout
        .as_ref()
        .map(|r| r.parse().map_err(|m| invalid(key("timeout"), m)))
        .transpose()?;
    if let Some(t) = timeout {
        within(&key("timeout"), t, plugin_bounds::TIMEOUT.0, plugin_bounds::TIMEOUT.1)?;
    }
    let count = |v: Option<u64>, k: &str, max: u64| -> Result<Option<usize>, ConfigError> {
        v.map(|n| bounded_int(Some(n), &key(k), 0usize, 1, max)).transpose()
    };
    let bytes = |v: &Option<String>, k: &str, min: usize, max: usize| -> Result<Option<usize>, ConfigError> {
        v.as_deref()
            .map(|raw| {
                let n = parse_bytes(raw).map_err(|m| invalid(key(k), m))?;
                if !(min..=max).contains(&n) {
                    return Err(invalid(
                        key(k),
                        format!(
                            "{raw:?} is out of range; expected {} to {}",
                            show_bytes(min),
                            show_bytes(max)
                        ),
                    ));
                }
                Ok(n)
            })
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
        .map(|r| {
            r.parse().map_err(|m| invalid(key("max_wait"), m)).and_then(|d| {
                within(
                    &key("max_wait"),
                    d,
                    plugin_bounds::MAX_WAIT.0,
                    plugin_bounds::MAX_WAIT.1,
                )
            })
        })
        .transpose()?;
    Ok(PluginOverrides {
        rate_limit,
        max_wait,
        ttl,
        timeout,
        max_concurrency: count(
            s.max_concurrency,
            "max_concurrency",
            plugin_bounds::MAX_CONCURRENCY as u64,
        )?,
        env: s.env.clone(),
        allow_hosts: s.allow_hosts.clone(),
        memory_limit: bytes(&s.memory_limit, "memory_limit", 1 << 20, 4 << 30)?,
        max_body: bytes(&s.max_body, "max_body", 1 << 10, 1 << 30)?,
        states: count(s.states, "states", 64)?,
        settle: s
            .settle
            .as_ref()
            .map(|r| {
                r.parse()
                    .map_err(|m| invalid(key("settle"), m))
                    .and_then(|d| within(&key("settle"), d, plugin_bounds::SETTLE.0, plugin_bounds::SETTLE.1))
            })
            .transpose()?,
        settled_ttl: match s.settled_ttl.as_ref() {
            None => None,
            Some(r) => match r.parse() {
                Ok(d) if d == Duration::ZERO => return Err(invalid(key("settled_ttl"), "must be more than 0")),
                Ok(d) => Some(within(
                    &key("settled_ttl"),
                    d,
                    plugin_bounds::SETTLED_TTL.0,
                    plugin_bounds::SETTLED_TTL.1,
                )?),
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

fn show_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
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
        assert_eq!(
            c.redis.access.password.as_ref().map(redis_access::Secret::expose),
            Some("pw")
        );
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
    fn every_number_is_bounded_and_the_error_names_key_and_bounds() {
        let cases: &[(&str, &str, &str)] = &[
            ("[plugins.x]\nstates = 100000\n", "plugins.x.states", "1 to 64"),
            ("[plugins.x]\nttl = \"999999999999d\"\n", "plugins.x.ttl", "1s to 3650d"),
            ("[plugins.x]\ntimeout = \"1d\"\n", "plugins.x.timeout", "1ms to 10m"),
            (
                "[plugins.x]\nmax_concurrency = 1000000\n",
                "plugins.x.max_concurrency",
                "1 to 10000",
            ),
            (
                "[plugins.x]\nmemory_limit = \"100GiB\"\n",
                "plugins.x.memory_limit",
                "1MiB to 4GiB",
            ),
            ("[plugins.x]\nmax_body = \"10\"\n", "plugins.x.max_body", "1KiB to 1GiB"),
            (
                "[cache]\ndefault_ttl = \"999999999999d\"\n",
                "cache.default_ttl",
                "1s to 3650d",
            ),
            (
                "[cache]\nstale_if_error = \"100y\"\n",
                "cache.stale_if_error",
                "0s to 3650d",
            ),
            (
                "[cache]\nmemory_max_entries = 0\n",
                "cache.memory_max_entries",
                "1 to 10000000",
            ),
            (
                "[cache]\nl1_max_entries = 99999999999\n",
                "cache.l1_max_entries",
                "1 to 10000000",
            ),
            ("[cache]\nl1_ttl = \"2d\"\n", "cache.l1_ttl", "0s to 1d"),
            ("[redis]\nop_timeout = 0\n", "redis.op_timeout", "1ms to 1m"),
            (
                "[redis]\nconnect_timeout = \"1h\"\n",
                "redis.connect_timeout",
                "1ms to 1m",
            ),
            ("[redis]\nbackoff = \"1d\"\n", "redis.backoff", "0s to 10m"),
            ("poll_interval = \"1ms\"\n", "poll_interval", "50ms to 1h"),
            ("drain_timeout = \"2h\"\n", "drain_timeout", "0s to 1h"),
            ("[http]\nmax_connections = 0\n", "http.max_connections", "1 to 1000000"),
            (
                "[http]\nheader_read_timeout = \"1h\"\n",
                "http.header_read_timeout",
                "1s to 5m",
            ),
            ("[http]\nidle_timeout = 0\n", "http.idle_timeout", "1s to 1h"),
            ("[http]\nwrite_timeout = \"2h\"\n", "http.write_timeout", "1s to 1h"),
            ("[http]\nmax_range_days = 100000\n", "http.max_range_days", "1 to 73050"),
            (
                "[[watch]]\nplugin = \"y\"\ntickers = [\"A\"]\nevery = \"5m\"\nmaxlen = 0\n",
                "watch[0].maxlen",
                "1 to 10000000",
            ),
            (
                "[[watch]]\nplugin = \"y\"\ntickers = [\"A\"]\nevery = \"30d\"\n",
                "watch[0].every",
                "1s to 1d",
            ),
        ];
        for (file, key, bounds) in cases {
            let err = Config::resolve(&Flags::default(), &env(&[]), None, Some(file)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(key), "{key}: {msg}");
            assert!(msg.contains(bounds), "{key} names its bounds {bounds:?}: {msg}");
        }
        let err = Config::resolve(
            &Flags::default(),
            &env(&[("CACHE_TTL_SECONDS", "99999999999")]),
            None,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("CACHE_TTL_SECONDS"), "{err}");
        let c = Config::resolve(&Flags::default(), &env(&[]), None, None).unwrap();
        assert_eq!(c.http, HttpConfig::default());
        assert_eq!(c.http.max_range_days, 36525);
    }

    #[test]
    fn the_config_is_read_only_from_a_bounded_regular_file() {
        let e = read_config_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_config_file(dir.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Would block forever if it were opened.
            let e = read_config_file(&fifo).unwrap_err();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = read_config_file(&big).unwrap_err();
        assert!(e.contains("at most 1048576 bytes"), "{e}");
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "http_threads = 2\n").unwrap();
        assert_eq!(read_config_file(&ok).unwrap(), "http_threads = 2\n");
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
