//! One private `redis-server` process for a test.
//!
//! Readiness means *our* child answers: `INFO server`'s `process_id` must be
//! the PID we started, so another server that happens to hold the port is
//! never mistaken for ours. A child that exits while we wait fails the wait
//! at once with its exit status and log tail; one that lost its port to
//! another process ("Address already in use") is started again on a new port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, tail};

/// How long a starting redis-server may take to answer on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// New ports tried when another process took the chosen one first.
const PORT_ATTEMPTS: usize = 5;

pub struct RedisServer {
    pub port: u16,
    /// The cluster bus port, when started in cluster mode.
    pub cluster_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    log: PathBuf,
    spawns: usize,
}

/// Why a start did not become ready.
enum NotReady {
    /// Another process holds one of our ports: try other ports.
    PortTaken(String),
    /// Anything else: the message says what and shows the log.
    Failed(String),
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra arguments on its own port. With
    /// `--cluster-enabled yes` the cluster bus gets its own free port
    /// (`--cluster-port`) instead of the default port + 10000, which does
    /// not exist for ports above 55535.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_trying(args, &mut free_port)
    }

    /// `start_with`, taking each port to try from `next_port` (the harness's
    /// own tests use it to hand out a port that is already taken).
    pub fn start_trying(args: &[&str], next_port: &mut dyn FnMut() -> u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut s = Self {
            port: 0,
            cluster_port: None,
            child: None,
            log: dir.path().join("redis-0.log"),
            dir,
            extra: args.iter().map(|a| (*a).to_owned()).collect(),
            spawns: 0,
        };
        let cluster = args.windows(2).any(|w| w[0] == "--cluster-enabled" && w[1] == "yes");
        let mut taken = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            s.port = next_port();
            s.cluster_port = cluster.then(free_port);
            match s.spawn() {
                Ok(()) => return s,
                Err(NotReady::PortTaken(why)) => {
                    s.kill();
                    taken.push(why);
                }
                Err(NotReady::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("redis-server lost its port to another process {PORT_ATTEMPTS} times: {taken:#?}");
    }

    fn command(&self) -> Command {
        let mut c = Command::new("redis-server");
        c.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .args(&self.extra);
        if let Some(bus) = self.cluster_port {
            c.args(["--cluster-port", &bus.to_string()]);
        }
        c
    }

    /// Starts the child (logging to its own file) and waits until it answers.
    fn spawn(&mut self) -> Result<(), NotReady> {
        self.spawns += 1;
        self.log = self.dir.path().join(format!("redis-{}.log", self.spawns));
        let out = std::fs::File::create(&self.log).expect("redis log file");
        let err = out.try_clone().expect("redis log file");
        let child = self
            .command()
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        let pid = child.id();
        self.child = Some(child);
        self.wait_ready(pid)
    }

    fn wait_ready(&mut self, pid: u32) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut answered_by = None;
        loop {
            if let Some(status) = self.exited() {
                let log = self.log_tail(30);
                let what = format!(
                    "redis-server (pid {pid}, port {}, args {:?}) exited with {status} before answering; log tail:\n{log}",
                    self.port, self.extra
                );
                return Err(if log.contains("Address already in use") {
                    NotReady::PortTaken(what)
                } else {
                    NotReady::Failed(what)
                });
            }
            match self.server_pid() {
                Some(p) if p == pid => return Ok(()),
                other => answered_by = other.or(answered_by),
            }
            if Instant::now() >= deadline {
                let who = match answered_by {
                    Some(p) => format!("process {p} answered on the port instead"),
                    None => "nothing answered PING".to_owned(),
                };
                return Err(NotReady::Failed(format!(
                    "redis-server (pid {pid}, port {}) not ready within {READY_TIMEOUT:?}: {who}; log tail:\n{}",
                    self.port,
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if our child has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// `process_id` from `INFO server` of whatever answers on our port.
    pub fn server_pid(&self) -> Option<u32> {
        let mut c = self
            .client()
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut c).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
    }

    /// The last lines of the current server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// Calls of one Redis command so far (`INFO commandstats`), 0 before the first.
    pub fn command_calls(&self, command: &str) -> u64 {
        let mut c = self.conn();
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut c).expect("INFO");
        let tag = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&tag))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap_or_else(|e| {
                panic!(
                    "connect to test redis on port {}: {e}; log tail:\n{}",
                    self.port,
                    self.log_tail(20)
                )
            })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server (SIGKILL). `restart` starts it again on the same
    /// port, which nothing reserves meanwhile (a clash fails `restart` loudly).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (the daemon under test knows only that one).
    pub fn restart(&mut self) {
        self.kill();
        match self.spawn() {
            Ok(()) => {}
            Err(NotReady::PortTaken(why) | NotReady::Failed(why)) => panic!("restart: {why}"),
        }
    }

    /// SIGSTOP: the server keeps its socket but stops answering.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([sig, &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        if std::thread::panicking()
            && let Some(status) = self.exited()
        {
            eprintln!(
                "--- redis-server on port {} had exited ({status}); log tail ---\n{}",
                self.port,
                self.log_tail(20)
            );
        }
        self.kill();
    }
}
