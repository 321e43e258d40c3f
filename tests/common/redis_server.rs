//! One private `redis-server` process for a test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut s = Self {
            port: free_port(),
            child: None,
            dir,
        };
        s.spawn();
        s
    }

    /// Starts a server with extra arguments (e.g. cluster mode) on its own port.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let port = free_port();
        let child = Self::command(port, dir.path(), args)
            .spawn()
            .expect("redis-server on PATH");
        let s = Self {
            port,
            child: Some(child),
            dir,
        };
        s.wait_ready();
        s
    }

    fn command(port: u16, dir: &std::path::Path, extra: &[&str]) -> Command {
        let mut c = Command::new("redis-server");
        c.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c
    }

    fn spawn(&mut self) {
        let child = Self::command(self.port, self.dir.path(), &[])
            .spawn()
            .expect("redis-server must be on PATH (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = self.client().get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within 10s", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to test redis")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server (SIGKILL); the port stays reserved for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server keeps its socket but stops answering.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-STOP", &pid.to_string()]).status();
        }
    }

    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
