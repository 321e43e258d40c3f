//! The test harness itself: waits notice a dead child at once and say why,
//! the server answering is the one we started, and a "dead" port stays dead.

mod common;

use std::time::{Duration, Instant};

use common::{DaemonBuilder, RedisServer, dead_port};

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("it should have panicked");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn a_redis_server_that_exits_fails_the_wait_at_once_with_status_and_log() {
    let started = Instant::now();
    let msg = panic_message(|| {
        RedisServer::start_with(&["--maxmemory-policy", "no-such-policy"]);
    });
    assert!(msg.contains("exited with exit status: 1"), "{msg}");
    assert!(msg.contains("maxmemory-policy"), "the log tail says why: {msg}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failed fast, not after the readiness timeout: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_port_held_by_another_redis_is_detected_and_another_port_used() {
    let other = RedisServer::start();
    let mut ports = vec![other.port];
    let ours = RedisServer::start_trying(&[], &mut || ports.pop().unwrap_or_else(common::free_port));
    assert_ne!(ours.port, other.port);
    assert_eq!(ours.server_pid(), ours.pid(), "the server answering is ours");
    assert_eq!(other.server_pid(), other.pid());
}

#[test]
fn a_dead_port_refuses_connections_and_no_server_can_take_it() {
    let port = dead_port();
    let err = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let msg = panic_message(|| {
        RedisServer::start_trying(&[], &mut || port);
    });
    assert!(msg.contains("lost its port"), "{msg}");
    assert!(msg.contains("Address already in use"), "{msg}");
}

#[test]
fn cluster_nodes_get_an_explicit_bus_port() {
    let node = RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
    let bus = node.cluster_port.expect("a cluster bus port");
    let mut c = node.conn();
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("cluster-port")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, vec!["cluster-port".to_owned(), bus.to_string()]);
}

#[tokio::test]
async fn a_daemon_that_exits_fails_the_start_at_once_with_status_and_log() {
    let started = Instant::now();
    let task = tokio::spawn(async {
        DaemonBuilder::new(&common::daemon::dead_redis_url())
            .config("http_threads = \"many\"\n")
            .start()
            .await;
    });
    let err = task.await.expect_err("start should panic");
    let payload = err.into_panic();
    let msg = payload.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exited with exit status: 2"), "{msg}");
    assert!(msg.contains("http_threads"), "the log tail says why: {msg}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed fast, not after the 30 s readiness timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_daemon_listens_on_port_zero_and_reports_the_port_it_got() {
    let redis = RedisServer::start();
    let d = DaemonBuilder::new(&redis.url()).bundled("synthetic").start().await;
    assert_ne!(d.port, 0);
    assert_eq!(d.base, format!("http://127.0.0.1:{}", d.port));
    assert_eq!(d.get_json("/healthz").await.0, 200);
}
