//! The real `tickerd serve` binary, started for one test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{free_port, wait_for};

pub struct DaemonBuilder {
    plugins: tempfile::TempDir,
    config: String,
    env: Vec<(String, String)>,
    redis_url: String,
    listen: Option<String>,
    extra_args: Vec<String>,
    nofile: Option<u64>,
}

pub struct Daemon {
    pub base: String,
    pub port: u16,
    pub plugins_dir: PathBuf,
    pub config_path: PathBuf,
    /// Behind a lock so waits holding `&Daemon` can check it is still alive.
    child: Mutex<Option<Child>>,
    _plugins: tempfile::TempDir,
    _config: tempfile::NamedTempFile,
    pub http: reqwest::Client,
    log: PathBuf,
}

/// The bundled plugins directory of this repository.
pub fn repo_plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

impl DaemonBuilder {
    /// A daemon against `redis_url` (use a closed port for "no Redis").
    pub fn new(redis_url: &str) -> Self {
        Self {
            plugins: tempfile::tempdir().expect("plugins temp dir"),
            config: String::new(),
            env: Vec::new(),
            redis_url: redis_url.to_owned(),
            listen: None,
            extra_args: Vec::new(),
            nofile: None,
        }
    }

    /// Copies a bundled plugin into this daemon's plugins dir.
    pub fn bundled(self, name: &str) -> Self {
        let src = repo_plugins().join(format!("{name}.lua"));
        std::fs::copy(&src, self.plugins.path().join(format!("{name}.lua")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        self
    }

    /// Writes a plugin file with the given source.
    pub fn plugin(self, name: &str, source: &str) -> Self {
        std::fs::write(self.plugins.path().join(format!("{name}.lua")), source).expect("write plugin");
        self
    }

    /// Appends TOML to the config file (a `[redis]` section with a unique
    /// key prefix and the URL is always written).
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_owned());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.to_owned());
        self
    }

    /// Starts the daemon with this open-files limit (soft and hard), as
    /// `ulimit -n` or systemd's `LimitNOFILE` would.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    pub fn plugins_path(&self) -> &Path {
        self.plugins.path()
    }

    /// Starts the daemon and waits until it serves. Unless `listen` was
    /// given, it listens on 127.0.0.1 port 0 and the port is read back from
    /// its own "tickerd is serving" log line, so the process answering is
    /// always the one we started. If the child exits first, this fails at once
    /// with its exit status and log tail.
    pub async fn start(self) -> Daemon {
        let listen = self.listen.clone().unwrap_or_else(|| "127.0.0.1:0".to_owned());
        let prefix = super::unique("t");
        let mut config = tempfile::NamedTempFile::new().expect("config temp file");
        let has_redis_section = self.config.contains("[redis]");
        let text = if has_redis_section {
            self.config.clone()
        } else {
            // The caller's text first, so its top-level keys stay top-level.
            format!(
                "{}\n[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\nop_timeout = \"250ms\"\nconnect_timeout = \"250ms\"\nbackoff = \"300ms\"\n",
                self.config, self.redis_url
            )
        };
        std::io::Write::write_all(&mut config, text.as_bytes()).expect("write config");
        let log = std::env::temp_dir().join(format!("{prefix}-tickerd.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickerd"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--plugins")
            .arg(self.plugins.path())
            .arg("--config")
            .arg(config.path())
            .args(&self.extra_args)
            .env_remove("REDIS_URL")
            .env_remove("REDIS_HOST")
            .env_remove("REDIS_PORT")
            .env_remove("REDIS_DB")
            .env_remove("REDIS_PASSWORD")
            .env_remove("CACHE_TTL_SECONDS")
            .env("TICKERD_LOG", "info,tickerd=debug")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, _) in std::env::vars() {
            if k.starts_with("TICKERD_") && k != "TICKERD_LOG" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt as _;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: only setrlimit, which is async-signal-safe, runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("start tickerd");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut d = Daemon {
            base: String::new(),
            port: 0,
            plugins_dir: self.plugins.path().to_path_buf(),
            config_path: config.path().to_path_buf(),
            child: Mutex::new(Some(child)),
            _plugins: self.plugins,
            _config: config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            log,
        };
        let addr = d
            .wait_alive("its \"tickerd is serving\" log line", Duration::from_secs(30), || {
                let log = d.log();
                async move {
                    log.lines()
                        .find(|l| l.contains("tickerd is serving"))
                        .and_then(served_addr)
                }
            })
            .await;
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in the logged listen address {addr:?}"));
        // A wildcard listener is reached over loopback.
        let host = match addr.rsplit_once(':').map(|(h, _)| h) {
            Some("0.0.0.0") | None => "127.0.0.1".to_owned(),
            Some("[::]") => "[::1]".to_owned(),
            Some(h) => h.to_owned(),
        };
        d.port = port;
        d.base = format!("http://{host}:{port}");
        let url = format!("{}/readyz", d.base);
        d.wait_alive("tickerd /readyz to answer 200", Duration::from_secs(30), || {
            let (http, url) = (d.http.clone(), url.clone());
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => Some(()),
                    _ => None,
                }
            }
        })
        .await;
        d
    }
}

/// The address in a "tickerd is serving" line: `listen=ADDR` in text logs,
/// `"listen":"ADDR"` in JSON logs.
fn served_addr(line: &str) -> Option<String> {
    let rest = line
        .split_once("\"listen\":\"")
        .or_else(|| line.split_once(" listen="))
        .map(|(_, r)| r)?;
    let addr: String = rest.chars().take_while(|c| !matches!(c, '"' | ' ')).collect();
    (!addr.is_empty()).then_some(addr)
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    /// GET a data path: status, `X-Cache` header ("" when absent), JSON body.
    pub async fn data(&self, path: &str) -> (u16, String, serde_json::Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        let x = r
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, x, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.expect("metrics text")
    }

    pub fn pid(&self) -> u32 {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Polls `f` like [`super::wait_for`], but fails at once, with the exit
    /// status and log tail, if the daemon process has exited.
    pub async fn wait_alive<T, F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                panic!(
                    "tickerd (pid {}) exited with {status} while waiting for {what}; log tail:\n{}",
                    self.pid(),
                    super::tail(&self.log(), 40)
                );
            }
            if let Some(v) = f().await {
                return v;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} (tickerd pid {} still running); log tail:\n{}",
                    self.pid(),
                    super::tail(&self.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if the daemon process has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Log output so far (for assertions and for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.get_mut().unwrap_or_else(|e| e.into_inner()).take()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let exited = self.exit_status();
        if let Some(mut c) = self.child.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            let state = match exited {
                Some(status) => format!("it had exited with {status}"),
                None => "it was still running".to_owned(),
            };
            eprintln!("--- tickerd log ({}; {state}) ---\n{}", self.log.display(), self.log());
        }
    }
}

/// A loopback port where connections are refused for the whole test (for
/// "Redis absent"): see [`super::dead_port`].
pub fn dead_redis_url() -> String {
    format!("redis://127.0.0.1:{}/0", super::dead_port())
}
