//! `[kafka]` and the `sink` of a `[[watch]]` entry (README, "The producer").
//!
//! The `[kafka.options]` table goes to librdkafka as-is, so its names are
//! checked by librdkafka itself here, at load time: a typo is a start-up
//! error naming `kafka.options.<key>`, never a producer that silently ignores
//! the setting.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// The default topic and stream name, as the old producer script used.
pub const DEFAULT_TOPIC: &str = "stock-data";

/// `[kafka]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub brokers: Option<String>,
    pub client_id: Option<String>,
    pub queue_max: Option<u64>,
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
}

/// Where a `[[watch]]` entry publishes its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchSink {
    /// `XADD <stream> MAXLEN ~ <maxlen> *` on the cache's Redis.
    RedisStream { stream: String, maxlen: u64 },
    /// A record per ticker on `topic`, through the one Kafka producer.
    Kafka { topic: String },
}

impl WatchSink {
    /// The stream key or topic: the `stream` label of the publish metrics.
    pub fn target(&self) -> &str {
        match self {
            WatchSink::RedisStream { stream, .. } => stream,
            WatchSink::Kafka { topic } => topic,
        }
    }

    /// The `sink` label of the publish metrics, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            WatchSink::RedisStream { .. } => "redis-stream",
            WatchSink::Kafka { .. } => "kafka",
        }
    }
}

/// The resolved `[kafka]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    pub client_id: String,
    /// Records waiting for delivery at most; more are dropped and counted.
    pub queue_max: u64,
    /// `[kafka.options]`, every value as the string librdkafka takes.
    pub options: BTreeMap<String, String>,
}

/// librdkafka properties tickerd sets itself, and the `[kafka]` key (or the
/// reason) that replaces them.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.brokers (or KAFKA_BROKERS) instead"),
    ("metadata.broker.list", "set kafka.brokers (or KAFKA_BROKERS) instead"),
    ("client.id", "set kafka.client_id instead"),
    ("queue.buffering.max.messages", "set kafka.queue_max instead"),
];

/// Properties tickerd fixes so records are delivered at least once, in order
/// per ticker (README, "The producer": idempotent producer, `acks=all`).
const FIXED: &[(&str, &[&str])] = &[
    ("enable.idempotence", &["true"]),
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
];

/// librdkafka properties that name a file (the CA may also be a directory,
/// or `probe`): opened here, so a wrong path is an error naming the key and
/// the path, not librdkafka's "ssl.ca.location failed: ... system lib" when
/// the producer is made.
const PATH_OPTIONS: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.crl.location",
    "ssl.keystore.location",
];

pub(super) fn resolve_kafka(
    section: Option<&KafkaSection>,
    env_get: &dyn Fn(&str) -> Option<String>,
) -> Result<KafkaConfig, ConfigError> {
    let empty = KafkaSection::default();
    let s = section.unwrap_or(&empty);
    let (brokers_key, brokers) = env_get("KAFKA_BROKERS")
        .map(|v| ("KAFKA_BROKERS", v))
        .or_else(|| s.brokers.clone().map(|v| ("kafka.brokers", v)))
        .unwrap_or(("kafka.brokers", "localhost:9092".to_owned()));
    check_brokers(&brokers).map_err(|m| invalid(brokers_key, m))?;
    let client_id = s.client_id.clone().unwrap_or_else(|| "tickerd".to_owned());
    if client_id.is_empty() || client_id.len() > 255 {
        return Err(invalid("kafka.client_id", "expected 1 to 255 characters"));
    }
    let queue_max = s.queue_max.unwrap_or(10_000);
    if !(1..=10_000_000).contains(&queue_max) {
        return Err(invalid(
            "kafka.queue_max",
            format!("{queue_max}: expected 1 to 10000000 records (default 10000)"),
        ));
    }
    let mut options = BTreeMap::new();
    for (k, v) in &s.options {
        let key = format!("kafka.options.\"{k}\"");
        if let Some((_, why)) = RESERVED.iter().find(|(r, _)| r == k) {
            return Err(invalid(key, format!("tickerd sets this property itself; {why}")));
        }
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(invalid(
                    key,
                    "expected a string, number or boolean (librdkafka takes every property as a string)",
                ));
            }
        };
        if let Some((_, allowed)) = FIXED.iter().find(|(f, _)| f == k)
            && !allowed.contains(&value.as_str())
        {
            return Err(invalid(
                key,
                format!(
                    "{value:?}: tickerd always produces with enable.idempotence=true and acks=all \
                     (at-least-once, in order per ticker); remove this option"
                ),
            ));
        }
        options.insert(k.clone(), value);
    }
    for k in PATH_OPTIONS {
        if let Some(path) = options.get(*k)
            && !(*k == "ssl.ca.location" && path == "probe")
            && let Err(e) = std::fs::File::open(path)
        {
            return Err(invalid(format!("kafka.options.\"{k}\""), format!("{path}: {e}")));
        }
    }
    let cfg = KafkaConfig {
        brokers,
        client_id,
        queue_max,
        options,
    };
    // librdkafka checks each name and value as it is set; no client is made.
    cfg.client_config().create_native_config().map_err(|e| match e {
        rdkafka::error::KafkaError::ClientConfig(_, desc, key, _) => {
            invalid(format!("kafka.options.\"{key}\""), format!("{desc} (librdkafka)"))
        }
        other => invalid("kafka", other.to_string()),
    })?;
    Ok(cfg)
}

impl KafkaConfig {
    /// The librdkafka configuration of the producer: the user's options
    /// first, then what tickerd fixes (so those always win).
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        // Warnings and errors reach the sink's rate-limited log; librdkafka's
        // `debug` option (contexts such as "broker,eos,msg") turns on its
        // debug lines, logged at tickerd's debug level. The level is not
        // derived from the `log` crate, which tickerd does not use.
        c.set_log_level(if self.options.contains_key("debug") {
            rdkafka::config::RDKafkaLogLevel::Debug
        } else {
            rdkafka::config::RDKafkaLogLevel::Warning
        });
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("queue.buffering.max.messages", self.queue_max.to_string());
        c
    }
}

fn check_brokers(raw: &str) -> Result<(), String> {
    let bad = || format!("{raw:?}: expected host:port[,host:port...] such as localhost:9092");
    if raw.trim().is_empty() {
        return Err(bad());
    }
    for b in raw.split(',') {
        let b = b.trim();
        let b = b.strip_prefix("PLAINTEXT://").unwrap_or(b);
        let (host, port) = b.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || host.contains(['/', ' ', '@']) || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Resolves `sink`, `topic`, `stream` and `maxlen` of `watch[i]`.
pub(super) fn resolve_sink(
    key: &dyn Fn(&str) -> String,
    sink: Option<&str>,
    topic: Option<&str>,
    stream: Option<&str>,
    maxlen: Option<u64>,
) -> Result<WatchSink, ConfigError> {
    match sink.unwrap_or("redis-stream") {
        "redis-stream" => {
            if topic.is_some() {
                return Err(invalid(
                    key("topic"),
                    "topic is for sink = \"kafka\"; a Redis stream is named by `stream`",
                ));
            }
            let stream = stream.unwrap_or(DEFAULT_TOPIC).to_owned();
            if stream.is_empty() {
                return Err(invalid(key("stream"), "must not be empty"));
            }
            let maxlen = maxlen.unwrap_or(10_000);
            if maxlen == 0 {
                return Err(invalid(key("maxlen"), "must be at least 1"));
            }
            Ok(WatchSink::RedisStream { stream, maxlen })
        }
        "kafka" => {
            if stream.is_some() || maxlen.is_some() {
                let k = if stream.is_some() { "stream" } else { "maxlen" };
                return Err(invalid(
                    key(k),
                    "stream and maxlen are for sink = \"redis-stream\"; a Kafka sink is named by `topic` \
                     (retention is the topic's setting)",
                ));
            }
            let topic = topic.unwrap_or(DEFAULT_TOPIC).to_owned();
            // Kafka's own rule for topic names.
            if topic.is_empty()
                || topic.len() > 249
                || topic == "."
                || topic == ".."
                || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(
                    key("topic"),
                    format!("{topic:?}: a Kafka topic is 1-249 of [A-Za-z0-9._-]"),
                ));
            }
            Ok(WatchSink::Kafka { topic })
        }
        other => Err(invalid(
            key("sink"),
            format!("{other:?}: expected \"redis-stream\" (default) or \"kafka\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn section(toml_text: &str) -> KafkaSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_and_env() {
        let c = resolve_kafka(None, &no_env).unwrap();
        assert_eq!(c.brokers, "localhost:9092");
        assert_eq!(c.client_id, "tickerd");
        assert_eq!(c.queue_max, 10_000);
        let s = section("brokers = \"k1:9092,k2:9092\"\n");
        assert_eq!(resolve_kafka(Some(&s), &no_env).unwrap().brokers, "k1:9092,k2:9092");
        let env = |k: &str| (k == "KAFKA_BROKERS").then(|| "e:1".to_owned());
        assert_eq!(resolve_kafka(Some(&s), &env).unwrap().brokers, "e:1");
    }

    #[test]
    fn options_pass_through_and_typos_are_named() {
        let s = section(
            "[options]\n\"compression.type\" = \"lz4\"\n\"linger.ms\" = 5\n\"message.timeout.ms\" = \"3000\"\n",
        );
        let c = resolve_kafka(Some(&s), &no_env).unwrap();
        assert_eq!(c.options.get("linger.ms").map(String::as_str), Some("5"));
        let s = section("[options]\n\"compresion.type\" = \"lz4\"\n");
        let err = resolve_kafka(Some(&s), &no_env).unwrap_err().to_string();
        assert!(err.contains("kafka.options.\"compresion.type\""), "{err}");
        assert!(err.contains("No such configuration property"), "{err}");
        let s = section("[options]\n\"compression.type\" = \"zip\"\n");
        let err = resolve_kafka(Some(&s), &no_env).unwrap_err().to_string();
        assert!(err.contains("compression.type"), "{err}");
        // librdkafka is built with OpenSSL (rdkafka feature "ssl"): TLS and
        // SASL over TLS pass; a build without it refuses "ssl" right here.
        let s = section(
            "[options]\n\"security.protocol\" = \"ssl\"\n\"ssl.endpoint.identification.algorithm\" = \"https\"\n",
        );
        let c = resolve_kafka(Some(&s), &no_env).unwrap();
        assert_eq!(c.options.get("security.protocol").map(String::as_str), Some("ssl"));
        let s = section(
            "[options]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"\n",
        );
        assert!(resolve_kafka(Some(&s), &no_env).is_ok());
        let ca = std::env::temp_dir()
            .join(format!("tickerd-no-such-dir-{}", std::process::id()))
            .join("ca.pem");
        let s = section(&format!(
            "[options]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n",
            ca.display()
        ));
        let err = resolve_kafka(Some(&s), &no_env).unwrap_err().to_string();
        assert!(err.contains("kafka.options.\"ssl.ca.location\""), "{err}");
        assert!(
            err.contains(&ca.display().to_string()) && err.contains("No such file"),
            "{err}"
        );
        let s = section("[options]\n\"ssl.ca.location\" = \"probe\"\n");
        assert!(resolve_kafka(Some(&s), &no_env).is_ok(), "probe: the system's CA store");
        let s = section("[options]\n\"security.protocol\" = \"tls\"\n");
        let err = resolve_kafka(Some(&s), &no_env).unwrap_err().to_string();
        assert!(err.contains("kafka.options.\"security.protocol\""), "{err}");
        let s = section(
            "[options]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"\n",
        );
        assert!(resolve_kafka(Some(&s), &no_env).is_ok());
    }

    #[test]
    fn reserved_and_fixed_options_are_refused() {
        for (text, key) in [
            ("[options]\n\"bootstrap.servers\" = \"x:1\"\n", "bootstrap.servers"),
            ("[options]\n\"enable.idempotence\" = false\n", "enable.idempotence"),
            ("[options]\nacks = \"1\"\n", "acks"),
            ("queue_max = 0\n", "kafka.queue_max"),
            ("brokers = \"nohost\"\n", "kafka.brokers"),
            ("[options]\n\"x\" = [1]\n", "kafka.options.\"x\""),
        ] {
            let err = resolve_kafka(Some(&section(text)), &no_env).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let ok = section("[options]\nacks = \"all\"\n\"enable.idempotence\" = true\n");
        assert!(resolve_kafka(Some(&ok), &no_env).is_ok());
    }

    #[test]
    fn sinks() {
        let key = |k: &str| format!("watch[0].{k}");
        assert_eq!(
            resolve_sink(&key, None, None, None, None).unwrap(),
            WatchSink::RedisStream {
                stream: "stock-data".into(),
                maxlen: 10_000
            }
        );
        let k = resolve_sink(&key, Some("kafka"), None, None, None).unwrap();
        assert_eq!((k.kind(), k.target()), ("kafka", "stock-data"));
        for (sink, topic, stream, bad) in [
            (Some("kafka"), None, Some("s"), "watch[0].stream"),
            (Some("kafka"), Some("a b"), None, "watch[0].topic"),
            (None, Some("t"), None, "watch[0].topic"),
            (Some("kinesis"), None, None, "watch[0].sink"),
        ] {
            let err = resolve_sink(&key, sink, topic, stream, None).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_compose_producer_config_loads() {
        let text = include_str!("../../deploy/kafka/tickerd.toml");
        let c = super::super::Config::resolve(
            &super::super::Flags::default(),
            &std::collections::HashMap::new(),
            None,
            Some(text),
        )
        .unwrap();
        assert!(matches!(&c.watch[0].sink, WatchSink::Kafka { topic } if topic == "stock-data"));
        assert_eq!(c.kafka.unwrap().brokers, "kafka:9092");
    }
}
