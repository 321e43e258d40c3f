//! Test harness: a real `redis-server` per test on a free loopback port, and
//! the real `tickerd` binary started against it. Both are killed (by the PID
//! we started) when dropped. Waits poll with a deadline; nothing sleeps blind.

#![allow(dead_code, unused_imports)]

pub mod daemon;
pub mod mock_upstream;
pub mod redis_server;

pub use daemon::{Daemon, DaemonBuilder};
pub use redis_server::RedisServer;

use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique name for keys, dirs and prefixes in parallel tests.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{tag}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Reads one sample from Prometheus text, e.g.
/// `metric(&text, "cache_hits_total", &[("plugin","synthetic"),("cache_type","redis")])`.
/// Missing series read as 0.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else { continue };
            (l, v.trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue;
        };
        let ok = labels
            .iter()
            .all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if ok {
            return value.parse().unwrap_or(f64::NAN);
        }
    }
    0.0
}
