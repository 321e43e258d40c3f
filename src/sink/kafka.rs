//! The `kafka` sink: one idempotent librdkafka producer (`acks=all`) for
//! every `[[watch]]` entry with `sink = "kafka"`.
//!
//! `publish` only enqueues: librdkafka's queue, bounded by `queue_max`, holds
//! records while the broker is slow or down, and a record that does not fit
//! is dropped and counted at once. Delivery outcomes arrive on librdkafka's
//! polling thread ([`Context::delivery`]) and are counted there. Records of
//! one ticker share a key, hence a partition, and the idempotent producer
//! keeps them in order across retries.
//!
//! A producer instance can get wedged: after a fatal error, or when a broker
//! forgot the producer id (a broker restarted without its state) librdkafka
//! bumps the epoch locally and retries forever while every record times
//! out. So when records time out while the cluster answers a metadata
//! request, the instance is replaced by a fresh one (new producer id); while
//! the cluster does not answer, the broker is simply down and records wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Dropped from the queue at shutdown, or when the producer was replaced.
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

/// Shared by the sink and every producer instance it makes.
struct Shared {
    metrics: Arc<Metrics>,
    brokers: String,
    failed_log: LogThrottle,
    client_log: LogThrottle,
    /// A record timed out and none was acknowledged since.
    stalled: AtomicBool,
    /// A health check of a stalled producer is running.
    checking: AtomicBool,
    last_check: Mutex<Option<Instant>>,
}

/// What librdkafka calls back into: counts deliveries, logs rate-limited.
struct Context {
    shared: Arc<Shared>,
    /// This producer instance can send nothing more (a fatal error, or it is
    /// wedged): the next publish replaces it.
    replace: AtomicBool,
    /// Records purged when the instance is closed count as `reason` here.
    purge_reason: Mutex<&'static str>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(left_out) = self.shared.client_log.allow() {
                    tracing::warn!(brokers = %self.shared.brokers, facility = fac, left_out, "kafka client: {message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(facility = fac, "kafka client: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.replace.store(true, Ordering::Release);
            tracing::error!(
                brokers = %self.shared.brokers, error = %error, reason,
                "kafka producer hit a fatal error; tickerd replaces it before the next record (records queued in it are dropped and counted)"
            );
            return;
        }
        if let Some(left_out) = self.shared.client_log.allow() {
            tracing::warn!(
                brokers = %self.shared.brokers, error = %error, reason, left_out,
                "kafka: broker trouble; records wait in the queue (queue_max) and are retried until message.timeout.ms"
            );
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let shared = &self.shared;
        match result {
            Ok(m) => {
                shared.stalled.store(false, Ordering::Release);
                shared.metrics.stream_published(m.topic(), SINK)
            }
            Err((e, m)) => {
                let failure = Failure::of(e);
                if failure == Failure::Purged {
                    let reason = *self.purge_reason.lock().unwrap_or_else(|p| p.into_inner());
                    shared.metrics.stream_error(m.topic(), SINK, reason);
                    return; // counted; the shutdown or the replacement logs once
                }
                shared.metrics.stream_error(m.topic(), SINK, failure.label());
                if failure == Failure::Timeout {
                    shared.stalled.store(true, Ordering::Release);
                }
                if let Some(left_out) = shared.failed_log.allow() {
                    let ticker = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                    tracing::warn!(
                        topic = m.topic(), ticker = %ticker, brokers = %shared.brokers, reason = failure.label(),
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
    shared: Arc<Shared>,
    producer: ArcSwap<ThreadedProducer<Context>>,
}

/// How often a stalled producer is checked against the cluster at most.
const CHECK_EVERY: Duration = Duration::from_secs(10);

impl KafkaSink {
    pub(crate) fn new(cfg: &KafkaConfig, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        let shared = Arc::new(Shared {
            metrics,
            brokers: cfg.brokers.clone(),
            failed_log: LogThrottle::new(Duration::from_secs(10)),
            client_log: LogThrottle::new(Duration::from_secs(30)),
            stalled: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            last_check: Mutex::new(None),
        });
        let producer = make_producer(cfg, &shared)?;
        tracing::info!(
            brokers = %cfg.brokers, client_id = %cfg.client_id, queue_max = cfg.queue_max,
            "kafka producer ready (idempotent, acks=all); it connects in the background"
        );
        Ok(Self {
            cfg: cfg.clone(),
            shared,
            producer: ArcSwap::from_pointee(producer),
        })
    }

    /// Enqueues one record keyed by its ticker; never waits for the broker.
    pub(crate) fn publish(&self, topic: &str, record: &Record) {
        self.replace_if_needed();
        self.check_if_stalled(topic);
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
            self.shared.metrics.stream_error(topic, SINK, failure.label());
            if let Some(left_out) = self.shared.failed_log.allow() {
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

    /// Records time out and none is acknowledged: ask the cluster for
    /// metadata on a side thread (it may take seconds). If it answers, the
    /// broker is up and this producer instance is wedged: mark it for
    /// replacement. If not, the broker is down and records just wait.
    fn check_if_stalled(&self, topic: &str) {
        let shared = &self.shared;
        if !shared.stalled.load(Ordering::Acquire) || shared.checking.load(Ordering::Acquire) {
            return;
        }
        {
            let mut last = shared.last_check.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        shared.checking.store(true, Ordering::Release);
        let producer = self.producer.load_full();
        let (shared, topic) = (Arc::clone(shared), topic.to_owned());
        let spawned = std::thread::Builder::new().name("kafka-check".into()).spawn(move || {
            let up = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(3))
                .is_ok();
            if up && shared.stalled.load(Ordering::Acquire) {
                tracing::warn!(
                    brokers = %shared.brokers, topic = %topic,
                    "kafka: the cluster answers but records time out unacknowledged; replacing the producer \
                     (a broker may have lost its producer state)"
                );
                producer.context().replace.store(true, Ordering::Release);
            }
            shared.checking.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.shared.checking.store(false, Ordering::Release);
        }
    }

    /// Makes a fresh producer (new producer id) when the current one is
    /// marked, and closes the old one on a side thread (closing waits up to
    /// 500 ms); what was queued in it is dropped and counted as `reset`.
    fn replace_if_needed(&self) {
        if !self.producer.load().context().replace.load(Ordering::Acquire) {
            return;
        }
        match make_producer(&self.cfg, &self.shared) {
            Ok(p) => {
                let old = self.producer.swap(Arc::new(p));
                self.shared.stalled.store(false, Ordering::Release);
                *old.context().purge_reason.lock().unwrap_or_else(|p| p.into_inner()) = "reset";
                tracing::warn!(
                    brokers = %self.cfg.brokers, dropped = old.in_flight_count(),
                    "kafka producer replaced; records queued in the old one are dropped (reason=\"reset\")"
                );
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

fn make_producer(cfg: &KafkaConfig, shared: &Arc<Shared>) -> Result<ThreadedProducer<Context>, SinkError> {
    let ctx = Context {
        shared: Arc::clone(shared),
        replace: AtomicBool::new(false),
        purge_reason: Mutex::new(Failure::Purged.label()),
    };
    cfg.client_config()
        .create_with_context(ctx)
        .map_err(|e| SinkError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
    /// librdkafka's TLS and its SASL SCRAM both need OpenSSL at build time
    /// (rdkafka feature "ssl"); without it `rd_kafka_new` refuses these
    /// settings, so making the producer is the check.
    #[test]
    fn tls_and_sasl_scram_are_compiled_in() {
        for options in [
            &[("security.protocol", "ssl")][..],
            &[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ],
            &[
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanisms", "SCRAM-SHA-256"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ],
        ] {
            let mut cfg = config("127.0.0.1:1");
            cfg.options = options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            match KafkaSink::new(&cfg, Metrics::new()) {
                Ok(sink) => sink.flush_and_close(Duration::ZERO),
                Err(e) => panic!("{options:?}: {e}"),
            }
        }
    }
}
