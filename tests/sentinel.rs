//! Sentinel failover (README "Production Redis"): a master, a replica and three sentinels on
//! loopback; tickerd asks the sentinels for the master, and when the master
//! dies it moves to the promoted replica without a restart, while no request
//! fails (the memory layer serves during the switch).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, DaemonBuilder, RedisServer, free_port, unique, wait_for};

const MASTER: &str = "mymaster";
/// Sentinel's `down-after-milliseconds`: how long the master must be silent
/// before a sentinel calls it down.
const DOWN_AFTER_MS: u64 = 1000;
/// Sentinel's `failover-timeout` (also the wait before a failed election is retried, x2).
const FAILOVER_TIMEOUT_MS: u64 = 4000;
/// The daemon's `[redis] backoff`: its reconnect (and sentinel lookup) interval.
const BACKOFF_MS: u64 = 300;
/// The bound for "new entries land in the promoted master", counted from
/// the kill: down-after + Sentinel's agreement, election and promotion (a
/// few seconds here; one failed election is retried after 2 x failover
/// timeout) + the daemon's backoff + one connect. Measured runs are in the
/// README (Production Redis).
const SWITCH_BOUND: Duration =
    Duration::from_millis(DOWN_AFTER_MS + 2 * FAILOVER_TIMEOUT_MS + 4000 + BACKOFF_MS + 1000);

/// One `redis-server --sentinel` with a config file written here.
struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("sentinel dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let log = std::fs::File::create(dir.path().join("sentinel.log")).expect("sentinel log");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server on PATH (it runs Sentinel with --sentinel)");
        Self { port, child, _dir: dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SENTINEL MASTER mymaster` as field -> value, if the sentinel answers.
    fn master_info(&self) -> Option<std::collections::HashMap<String, String>> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut c = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
        redis::cmd("SENTINEL").arg("MASTER").arg(MASTER).query(&mut c).ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn role(r: &RedisServer) -> Option<String> {
    let mut c = r
        .client()
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let v: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
    match v.first() {
        Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

fn has_entry(r: &RedisServer, prefix: &str, ticker: &str) -> bool {
    let Ok(mut c) = r.client().get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*{ticker}*"))
        .query(&mut c)
        .unwrap_or_default();
    !keys.is_empty()
}

async fn get_ok(d: &Daemon, ticker: &str) {
    let (status, x, body) = d
        .data(&format!("/v1/data/synthetic/{ticker}?start=2024-01-01&end=2024-01-31"))
        .await;
    assert_eq!(
        status,
        200,
        "request for {ticker} failed during the switch: {body}\n{}",
        d.log()
    );
    assert_eq!(x, "MISS", "{ticker} is new, so a miss: {body}");
}

#[tokio::test]
async fn a_failover_moves_tickerd_to_the_promoted_master_without_a_failed_request() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master.port)).collect();
    // Failover needs each sentinel to know the replica and the two others.
    wait_for(
        "the sentinels to see the replica and each other",
        Duration::from_secs(30),
        || async {
            sentinels
                .iter()
                .all(|s| {
                    s.master_info().is_some_and(|m| {
                        m.get("num-slaves").map(String::as_str) == Some("1")
                            && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                    })
                })
                .then_some(())
        },
    )
    .await;
    wait_for("the replica to sync", Duration::from_secs(20), || async {
        let mut c = replica.conn();
        let info: String = redis::cmd("INFO").arg("replication").query(&mut c).ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .await;

    let prefix = unique("sen");
    let list = sentinels
        .iter()
        .map(|s| format!("\"{}\"", s.url()))
        .collect::<Vec<_>>()
        .join(", ");
    let d = DaemonBuilder::new("redis://unused")
        .bundled("synthetic")
        .config(&format!(
            "[redis]\nsentinels = [{list}]\nsentinel_master = \"{MASTER}\"\nkey_prefix = \"{prefix}\"\nop_timeout = \"250ms\"\nconnect_timeout = \"500ms\"\nbackoff = \"{BACKOFF_MS}ms\"\n"
        ))
        .start()
        .await;
    let old = format!("127.0.0.1:{}", master.port);
    let new = format!("127.0.0.1:{}", replica.port);
    wait_for("/readyz to name the first master", Duration::from_secs(10), || async {
        let r = d.get_json("/readyz").await.1;
        (r["redis"] == "up" && r["redis_master"] == old.as_str()).then_some(())
    })
    .await;
    assert_eq!(d.get_json("/readyz").await.1["redis_mode"], "sentinel");
    get_ok(&d, "BEFORE").await;
    assert!(has_entry(&master, &prefix, "BEFORE"), "entries go to the first master");

    master.kill();
    let killed = Instant::now();
    // Requests for new tickers all through the switch; each must succeed.
    let mut n = 0;
    let mut slowest = Duration::ZERO;
    let landed = loop {
        // Unique names, so one is never a substring of another in a key.
        let ticker = format!("N{n}X");
        let asked = Instant::now();
        get_ok(&d, &ticker).await;
        slowest = slowest.max(asked.elapsed());
        if role(&replica).as_deref() == Some("master") && has_entry(&replica, &prefix, &ticker) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < SWITCH_BOUND,
            "no new entry reached the promoted master within {SWITCH_BOUND:?} (replica role {:?}, {n} requests)\n{}",
            role(&replica),
            d.log()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "failover: a new entry was in the promoted master {landed:?} after the kill ({n} requests meanwhile, none failed, the slowest took {slowest:?})"
    );
    let ready = d.get_json("/readyz").await.1;
    assert_eq!(ready["redis"], "up", "{ready}");
    assert_eq!(ready["redis_master"], new.as_str(), "{ready}");
    assert_eq!(d.get_json("/v1/stats").await.1["redis_master"], new.as_str());
    assert!(d.log().contains(&new), "the log names the new master:\n{}", d.log());
}

/// A sentinel that hangs (SIGSTOP: it accepts connections and never
/// answers) and is listed first does not keep tickerd from its master: the
/// sentinels are asked apart, each lookup bounded, and the one that answers
/// names the master.
#[tokio::test]
async fn a_hung_sentinel_listed_first_does_not_hold_up_the_master_lookup() {
    let master = RedisServer::start();
    let hung = Sentinel::start(master.port);
    let ok = Sentinel::start(master.port);
    wait_for("both sentinels to answer", Duration::from_secs(30), || async {
        (hung.master_info().is_some() && ok.master_info().is_some()).then_some(())
    })
    .await;
    let stopped = Command::new("kill")
        .args(["-STOP", &hung.child.id().to_string()])
        .status()
        .expect("kill on PATH");
    assert!(stopped.success(), "SIGSTOP the first sentinel");
    let d = DaemonBuilder::new("redis://unused")
        .bundled("synthetic")
        .config(&format!(
            "[redis]\nsentinels = [\"{}\", \"{}\"]\nsentinel_master = \"{MASTER}\"\nkey_prefix = \"{}\"\nop_timeout = \"250ms\"\nconnect_timeout = \"500ms\"\nbackoff = \"{BACKOFF_MS}ms\"\n",
            hung.url(),
            ok.url(),
            unique("hung")
        ))
        .start()
        .await;
    let want = format!("127.0.0.1:{}", master.port);
    wait_for("/readyz to name the master", Duration::from_secs(10), || async {
        let r = d.get_json("/readyz").await.1;
        (r["redis"] == "up" && r["redis_master"] == want.as_str()).then_some(())
    })
    .await;
}
