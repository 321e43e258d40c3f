//! Where the producer's records go (README, "The producer"): a capped Redis stream on the
//! cache's Redis, or a Kafka topic through one idempotent producer.
//!
//! Both sinks take the same [`Record`]. Publishing never waits on Kafka: a
//! record is handed to librdkafka's bounded queue and the delivery outcome
//! is counted when the broker answers (or the record times out). A Redis
//! stream write is one `XADD` bounded by the cache's `op_timeout`, skipped
//! while the circuit breaker is open.

mod kafka;
mod redis_stream;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::cache::RedisStore;
use crate::config::{KafkaConfig, WatchSink};
use crate::metrics::Metrics;

pub(crate) use kafka::KafkaSink;
pub(crate) use throttle::LogThrottle;

/// One published record: the data answer of one ticker without its `meta`,
/// and with the cache status as a word. Field order is the wire order of
/// both the stream fields and the Kafka JSON value.
#[derive(Debug, Serialize)]
pub(crate) struct Record {
    pub plugin: String,
    pub ticker: String,
    pub start: String,
    pub end: String,
    pub fetched_at: String,
    /// The bars as already-serialised JSON (an array): written into the
    /// Kafka value as an array and into the stream field as its text.
    pub bars: Box<RawValue>,
    /// `hit`, `miss`, `stale` or `bypass`.
    pub cache: &'static str,
}

impl Record {
    /// The Kafka record value: a JSON object whose `bars` is an array.
    pub(crate) fn to_json(&self) -> String {
        // Only strings and already-valid JSON: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The Redis stream fields; `bars` is the JSON text of the array.
    pub(crate) fn stream_fields(&self) -> [(&'static str, &str); 7] {
        [
            ("plugin", &self.plugin),
            ("ticker", &self.ticker),
            ("start", &self.start),
            ("end", &self.end),
            ("fetched_at", &self.fetched_at),
            ("bars", self.bars.get()),
            ("cache", self.cache),
        ]
    }
}

/// The Kafka producer could not be made from `[kafka]`.
#[derive(Debug, thiserror::Error)]
#[error("kafka: cannot create the producer: {0}")]
pub(crate) struct SinkError(String);

/// The outlets of every `[[watch]]` entry, made once at start.
pub(crate) struct Sinks {
    redis: Arc<RedisStore>,
    kafka: Option<KafkaSink>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    /// Creates the Kafka producer when `kafka` is given (a `[[watch]]` has
    /// `sink = "kafka"`); it connects in the background, so a broker that is
    /// down at start delays nothing.
    pub(crate) fn new(
        kafka: Option<&KafkaConfig>,
        redis: Arc<RedisStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let kafka = kafka.map(|cfg| KafkaSink::new(cfg, Arc::clone(&metrics))).transpose()?;
        Ok(Self { redis, kafka, metrics })
    }

    /// Publishes one record; returns once it is written (Redis) or queued
    /// (Kafka). Failures are counted and logged here, never returned: the
    /// producer goes on with the next ticker either way.
    pub(crate) async fn publish(&self, sink: &WatchSink, record: &Record) {
        match sink {
            WatchSink::RedisStream { stream, maxlen } => {
                redis_stream::publish(&self.redis, &self.metrics, stream, *maxlen, record).await
            }
            WatchSink::Kafka { topic } => match &self.kafka {
                Some(k) => k.publish(topic, record),
                None => {
                    // Config resolution makes `[kafka]` whenever a watch uses it.
                    self.metrics.stream_error(topic, "kafka", "delivery");
                }
            },
        }
    }

    /// On shutdown: waits at most `timeout` for queued Kafka records to be
    /// acknowledged; what is left is dropped and counted (`reason="shutdown"`).
    pub(crate) async fn flush(self, timeout: Duration) {
        if let Some(k) = self.kafka {
            // librdkafka's flush blocks its caller: keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || k.flush_and_close(timeout)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            plugin: "synthetic".into(),
            ticker: "AAPL".into(),
            start: "2024-01-01".into(),
            end: "2024-01-02".into(),
            fetched_at: "2026-01-01T00:00:00Z".into(),
            bars: RawValue::from_string(
                r#"[{"date":"2024-01-02","open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":10}]"#.into(),
            )
            .unwrap(),
            cache: "miss",
        }
    }

    #[test]
    fn kafka_value_is_one_object_with_bars_as_an_array() {
        let v: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7);
        assert_eq!(v["ticker"], "AAPL");
        assert_eq!(v["cache"], "miss");
        assert_eq!(v["bars"][0]["close"], 1.5);
        let text = record().to_json();
        assert!(
            text.starts_with(r#"{"plugin":"synthetic","ticker":"AAPL","start""#),
            "{text}"
        );
    }

    #[test]
    fn stream_fields_carry_the_bars_as_json_text() {
        let r = record();
        let f = r.stream_fields();
        assert_eq!(
            f.map(|(k, _)| k),
            ["plugin", "ticker", "start", "end", "fetched_at", "bars", "cache"]
        );
        let bars: serde_json::Value = serde_json::from_str(f[5].1).unwrap();
        assert_eq!(bars[0]["volume"], 10);
    }
}
