//! Test harness: a real `redis-server` per test on its own loopback port, and
//! the real `tickerd` binary started against it. Both are killed (by the PID
//! we started) when dropped. Waits poll with a deadline and give up at once,
//! with the child's exit status and log tail, when the child has died.

#![allow(dead_code, unused_imports)]

pub mod daemon;
pub mod mock_upstream;
pub mod redis_server;

pub use daemon::{Daemon, DaemonBuilder};
pub use redis_server::RedisServer;

use std::time::{Duration, Instant};

/// The `code` and `message` of an error body `{"error": {...}}` (empty
/// strings where missing, so a wrong body fails the caller's assertion).
pub fn error_of(body: &serde_json::Value) -> (String, String) {
    (
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
        body["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// A loopback port that was free a moment ago (bound, then released).
///
/// Racy by nature: another process may take it before the caller binds it.
/// Callers that start a server on it must check that the server answering is
/// theirs (`RedisServer` compares `INFO server`'s `process_id` and retries on
/// another port; `DaemonBuilder` listens on port 0 and reads the bound port
/// from the daemon's own log). For "nothing listens here" use [`dead_port`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A loopback port where connections are refused, and that stays so for the
/// whole test binary: the port is bound by a socket that never listens (and
/// has no `SO_REUSEADDR`), so no later redis-server or daemon can take it.
pub fn dead_port() -> u16 {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind("127.0.0.1:0".parse().expect("loopback address"))
        .expect("bind a loopback port");
    let port = socket.local_addr().expect("bound address").port();
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    port
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

/// The last `lines` lines of `text` (for failure messages).
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads one sample from Prometheus text, e.g.
/// `metric(&text, "cache_hits_total", &[("plugin","synthetic"),("cache_type","redis")])`.
/// `None` when no series of that name carries those labels, so a metric
/// that disappeared never passes for a 0: compare with `Some(0.0)`, or use
/// [`expect_metric`] to assert presence.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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
            return Some(value.parse().unwrap_or(f64::NAN));
        }
    }
    None
}

/// Like [`metric`], but the series must be there: panics naming it and
/// listing the series of that name that are present.
pub fn expect_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| {
        let family: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(name))
            .collect();
        panic!("metric {name}{labels:?} is missing from /metrics; series of that name: {family:#?}")
    })
}

/// A counter that may legitimately not exist yet: a labelled Prometheus
/// counter appears at its first increment, so absent reads as 0 here. Use
/// only for "how many so far" of such counters; a value asserted to stay 0,
/// or any gauge, goes through [`metric`] / [`expect_metric`].
pub fn counter_or_zero(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP redis_up x\nredis_up 1\ncache_hits_total{plugin=\"a\",cache_type=\"redis\"} 3\n";

    #[test]
    fn metric_reads_present_series_and_none_for_absent_ones() {
        assert_eq!(metric(TEXT, "redis_up", &[]), Some(1.0));
        assert_eq!(metric(TEXT, "cache_hits_total", &[("plugin", "a")]), Some(3.0));
        assert_eq!(metric(TEXT, "cache_hits_total", &[("plugin", "b")]), None);
        assert_eq!(metric(TEXT, "redis", &[]), None, "a prefix of a name is not the name");
        assert_eq!(counter_or_zero(TEXT, "cache_hits_total", &[("plugin", "b")]), 0.0);
    }

    #[test]
    #[should_panic(expected = "missing from /metrics")]
    fn expect_metric_panics_on_an_absent_series() {
        expect_metric(TEXT, "plugins_loaded", &[]);
    }
}
