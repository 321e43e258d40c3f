//! The `kafka` sink: one idempotent librdkafka producer (`acks=all`) for
//! every `[[watch]]` entry with `sink = "kafka"`.
//!
//! `publish` only enqueues: librdkafka's queue, bounded by `queue_max`, holds
//! records while the broker is slow or down, and a record that does not fit
//! is dropped and counted at once. Delivery outcomes arrive on librdkafka's
//! polling thread ([`Context::delivery`]) and are counted there. Records of
//! one ticker share a key, hence a partition, and the idempotent producer
//! keeps them in order across retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{LogThrottle, Record, SinkError};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

const SINK: &str = "kafka";

/// Why a record was not published: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// `queue_max` records were already waiting.
    QueueFull,
    /// Not acknowledged within `message.timeout.ms` (broker down or slow).
    Timeout,
    /// Dropped from the queue at shutdown or when the producer was reset.
    Purged,
    /// The broker refused it, or librdkafka would not take it.
    Delivery,
}

impl Failure {
    fn of(e: &KafkaError) -> Self {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => Failure::QueueFull,
            Some(RDKafkaErrorCode::MessageTimedOut) => Failure::Timeout,
            Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => Failure::Purged,
            _ => Failure::Delivery,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Failure::QueueFull => "queue_full",
            Failure::Timeout => "timeout",
            Failure::Purged => "shutdown",
            Failure::Delivery => "delivery",
        }
    }
}

/// What librdkafka calls back into: counts deliveries, logs rate-limited.
struct Context {
    metrics: Arc<Metrics>,
    brokers: String,
    failed_log: Arc<LogThrottle>,
    client_log: Arc<LogThrottle>,
    /// Set when librdkafka reports a fatal error: this producer instance can
    /// send nothing more, and the next publish replaces it.
    fatal: AtomicBool,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(left_out) = self.client_log.allow() {
                    tracing::warn!(brokers = %self.brokers, facility = fac, left_out, "kafka client: {message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(facility = fac, "kafka client: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::trace!(facility = fac, "kafka client: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::Release);
            tracing::error!(
                brokers = %self.brokers, error = %error, reason,
                "kafka producer hit a fatal error; tickerd replaces it before the next record (records queued in it are dropped and counted)"
            );
            return;
        }
        if let Some(left_out) = self.client_log.allow() {
            tracing::warn!(
                brokers = %self.brokers, error = %error, reason, left_out,
                "kafka: broker trouble; records wait in the queue (queue_max) and are retried until message.timeout.ms"
            );
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => self.metrics.stream_published(m.topic(), SINK),
            Err((e, m)) => {
                let failure = Failure::of(e);
                self.metrics.stream_error(m.topic(), SINK, failure.label());
                if failure == Failure::Purged {
                    return; // counted; the shutdown or reset logs the total once
                }
                if let Some(left_out) = self.failed_log.allow() {
                    let ticker = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                    tracing::warn!(
                        topic = m.topic(), ticker = %ticker, brokers = %self.brokers, reason = failure.label(),
                        error = %e, left_out,
                        "kafka did not acknowledge a record; it is dropped and counted in stream_publish_errors_total \
                         (check the brokers; the next rounds publish fresh records)"
                    );
                }
            }
        }
    }
}

pub(crate) struct KafkaSink {
    cfg: KafkaConfig,
    metrics: Arc<Metrics>,
    producer: ArcSwap<ThreadedProducer<Context>>,
    failed_log: Arc<LogThrottle>,
    client_log: Arc<LogThrottle>,
}

impl KafkaSink {
    pub(crate) fn new(cfg: &KafkaConfig, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        let failed_log = Arc::new(LogThrottle::new(Duration::from_secs(10)));
        let client_log = Arc::new(LogThrottle::new(Duration::from_secs(30)));
        let producer = make_producer(cfg, &metrics, &failed_log, &client_log)?;
        tracing::info!(
            brokers = %cfg.brokers, client_id = %cfg.client_id, queue_max = cfg.queue_max,
            "kafka producer ready (idempotent, acks=all); it connects in the background"
        );
        Ok(Self {
            cfg: cfg.clone(),
            metrics,
            producer: ArcSwap::from_pointee(producer),
            failed_log,
            client_log,
        })
    }

    /// Enqueues one record keyed by its ticker; never waits for the broker.
    pub(crate) fn publish(&self, topic: &str, record: &Record) {
        self.replace_if_fatal();
        let value = record.to_json();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: "plugin",
                value: Some(record.plugin.as_str()),
            })
            .insert(Header {
                key: "cache",
                value: Some(record.cache),
            });
        let r = BaseRecord::to(topic)
            .key(record.ticker.as_str())
            .payload(&value)
            .headers(headers);
        if let Err((e, _)) = self.producer.load().send(r) {
            let failure = Failure::of(&e);
            self.metrics.stream_error(topic, SINK, failure.label());
            if let Some(left_out) = self.failed_log.allow() {
                let hint = if failure == Failure::QueueFull {
                    "the queue is full (kafka.queue_max records wait for the broker); new records are dropped until it drains"
                } else {
                    "librdkafka refused the record; it is dropped"
                };
                tracing::warn!(
                    topic, ticker = %record.ticker, brokers = %self.cfg.brokers, reason = failure.label(),
                    queue_max = self.cfg.queue_max, error = %e, left_out, "kafka: {hint}"
                );
            }
        }
    }

    /// After a fatal error (e.g. the idempotent producer's state fenced by
    /// the broker) the instance is unusable: make a fresh one and close the
    /// old one on a side thread (closing waits up to 500 ms).
    fn replace_if_fatal(&self) {
        if !self.producer.load().context().fatal.load(Ordering::Acquire) {
            return;
        }
        match make_producer(&self.cfg, &self.metrics, &self.failed_log, &self.client_log) {
            Ok(p) => {
                let old = self.producer.swap(Arc::new(p));
                tracing::warn!(brokers = %self.cfg.brokers, "kafka producer replaced after a fatal error");
                let _ = std::thread::Builder::new()
                    .name("kafka-close".into())
                    .spawn(move || drop(old));
            }
            Err(e) => {
                tracing::error!(error = %e, "kafka producer could not be replaced; will try again on the next record")
            }
        }
    }

    /// Waits up to `timeout` for every queued record to be acknowledged,
    /// then closes the producer; records still queued are dropped (counted
    /// with `reason="shutdown"`). Blocks: call it off the async runtime.
    pub(crate) fn flush_and_close(self, timeout: Duration) {
        let producer = self.producer.load_full();
        let queued = producer.in_flight_count();
        if queued > 0 {
            tracing::info!(queued, timeout = ?timeout, "kafka: flushing queued records before exit");
        }
        let flushed = producer.flush(timeout);
        let left = producer.in_flight_count();
        match flushed {
            Ok(()) if queued > 0 => tracing::info!(delivered = queued, "kafka: every queued record was acknowledged"),
            Ok(()) => {}
            Err(e) => tracing::warn!(
                left, error = %e, timeout = ?timeout, brokers = %self.cfg.brokers,
                "kafka: records not acknowledged within drain_timeout are dropped (counted in stream_publish_errors_total{{reason=\"shutdown\"}})"
            ),
        }
    }
}

fn make_producer(
    cfg: &KafkaConfig,
    metrics: &Arc<Metrics>,
    failed_log: &Arc<LogThrottle>,
    client_log: &Arc<LogThrottle>,
) -> Result<ThreadedProducer<Context>, SinkError> {
    let ctx = Context {
        metrics: Arc::clone(metrics),
        brokers: cfg.brokers.clone(),
        failed_log: Arc::clone(failed_log),
        client_log: Arc::clone(client_log),
        fatal: AtomicBool::new(false),
    };
    cfg.client_config()
        .create_with_context(ctx)
        .map_err(|e| SinkError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;

    fn config(brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_owned(),
            client_id: "tickerd-test".into(),
            queue_max: 10_000,
            options: BTreeMap::new(),
        }
    }

    fn record(ticker: &str, seq: usize) -> Record {
        Record {
            plugin: "synthetic".into(),
            ticker: ticker.into(),
            start: "2024-01-01".into(),
            end: "2024-01-31".into(),
            fetched_at: format!("{seq:06}"),
            bars: serde_json::value::to_raw_value(&serde_json::json!([{"date": "2024-01-02", "close": seq}])).unwrap(),
            cache: "miss",
        }
    }

    /// (partition, key, value, headers) of one record read back.
    type Read = (i32, String, serde_json::Value, Vec<(String, String)>);

    /// Every record on `topic`, read
    /// without a consumer group until `n` arrived or 20 s passed.
    fn read_all(brokers: &str, topic: &str, partitions: i32, n: usize) -> Vec<Read> {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_owned(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.partition(), key, value, headers));
        }
        out
    }

    #[test]
    fn records_keep_their_order_per_ticker_through_broker_retries() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 4, 1).unwrap();
        // The broker answers the first produce requests with a retriable
        // error: librdkafka retries them, and the idempotent producer must
        // still write each ticker's records in the order they were handed in.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
        );
        let metrics = Metrics::new();
        let sink = KafkaSink::new(&config(&cluster.bootstrap_servers()), Arc::clone(&metrics)).unwrap();
        let tickers = ["AAPL", "MSFT", "GOOG"];
        for seq in 0..60 {
            sink.publish("t", &record(tickers[seq % 3], seq));
        }
        sink.flush_and_close(Duration::from_secs(20));
        let got = read_all(&cluster.bootstrap_servers(), "t", 4, 60);
        assert_eq!(got.len(), 60, "every record arrives");
        for t in tickers {
            let mine: Vec<_> = got.iter().filter(|r| r.1 == t).collect();
            assert_eq!(mine.len(), 20, "{t}");
            assert!(mine.iter().all(|r| r.0 == mine[0].0), "{t}: one key, one partition");
            let seqs: Vec<&str> = mine.iter().map(|r| r.2["fetched_at"].as_str().unwrap()).collect();
            let mut sorted = seqs.clone();
            sorted.sort();
            assert_eq!(seqs, sorted, "{t}: records in the order they were published");
        }
        let (_, key, value, headers) = &got[0];
        assert_eq!(value["ticker"], key.as_str());
        assert_eq!(
            headers,
            &vec![
                ("plugin".to_owned(), "synthetic".to_owned()),
                ("cache".to_owned(), "miss".to_owned())
            ]
        );
        let text = metrics.render();
        assert!(
            text.contains("stream_published_total{sink=\"kafka\",stream=\"t\"} 60"),
            "{text}"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // Nothing listens on this port: every record stays queued.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = config(&format!("127.0.0.1:{port}"));
        cfg.queue_max = 5;
        let metrics = Metrics::new();
        let sink = KafkaSink::new(&cfg, Arc::clone(&metrics)).unwrap();
        let t0 = Instant::now();
        for seq in 0..50 {
            sink.publish("t", &record("AAPL", seq));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "publishing never waits for the broker"
        );
        let text = metrics.render();
        assert!(
            text.contains("stream_publish_errors_total{reason=\"queue_full\",sink=\"kafka\",stream=\"t\"} 45"),
            "{text}"
        );
        sink.flush_and_close(Duration::from_millis(100));
        let text = metrics.render();
        assert!(
            text.contains("stream_publish_errors_total{reason=\"shutdown\",sink=\"kafka\",stream=\"t\"} 5"),
            "records left at close are counted: {text}"
        );
    }
}
