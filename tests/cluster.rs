//! Redis Cluster: a local three-master cluster started by the test.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{DaemonBuilder, RedisServer};
use serde_json::Value;

struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| {
                let mut c = n.conn();
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
                info.contains("cluster_state:ok")
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }
}

#[tokio::test]
async fn caches_and_invalidates_on_a_three_master_cluster() {
    let cluster = Cluster::start();
    let nodes = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let prefix = common::unique("c");
    let cfg = format!(
        "[redis]\nurl = \"{}\"\ncluster = true\nnodes = [{nodes}]\nkey_prefix = \"{prefix}\"\nop_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\n",
        cluster.urls()[0]
    );
    let d = DaemonBuilder::new(&cluster.urls()[0])
        .bundled("synthetic")
        .config(&cfg)
        .start()
        .await;
    let paths: Vec<String> = ["AAPL", "MSFT", "IBM", "ORCL", "TSLA", "NVDA"]
        .iter()
        .map(|t| format!("/v1/data/synthetic/{t}?start=2024-01-01&end=2024-01-31"))
        .collect();
    for p in &paths {
        let r = d.get(p).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-cache"], "MISS");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["cache"]["layer"], "redis", "{body}");
    }
    for p in &paths {
        assert_eq!(d.get(p).await.headers()["x-cache"], "HIT", "{p}");
    }
    // Series spread over the masters; a series and its lock share a slot
    // (the ticker is the hash tag), so the lock and write scripts run.
    let mut per_node = Vec::new();
    for n in &cluster.nodes {
        let mut c = n.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:synthetic:*"))
            .query(&mut c)
            .unwrap();
        per_node.push(keys);
    }
    assert!(per_node.iter().filter(|k| !k.is_empty()).count() >= 2, "{per_node:?}");
    assert_eq!(per_node.iter().map(Vec::len).sum::<usize>(), 6, "{per_node:?}");
    let slot = |key: &str| -> i64 {
        let mut c = cluster.nodes[0].conn();
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut c).unwrap()
    };
    for t in ["AAPL", "MSFT"] {
        assert_eq!(
            slot(&format!("{prefix}:synthetic:1:{{{t}}}")),
            slot(&format!("{prefix}:lock:synthetic:1:{{{t}}}"))
        );
    }
    // An overlapping range asks only the missing days, on the cluster too.
    let r = d.get("/v1/data/synthetic/AAPL?start=2024-01-15&end=2024-02-15").await;
    assert_eq!(r.headers()["x-cache"], "PARTIAL");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["cache"]["fetched_days"], 15);
    let r = d
        .get("/v1/data/synthetic/AAPL?start=2024-01-20&end=2024-02-10&refresh=true")
        .await;
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    let r = d.http.delete(d.url("/v1/cache?ticker=MSFT")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 1);
    assert_eq!(d.get(&paths[1]).await.headers()["x-cache"], "MISS");
    assert_eq!(d.get(&paths[0]).await.headers()["x-cache"], "HIT");
    let r = d.http.delete(d.url("/v1/cache?plugin=synthetic")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 6);
    assert_eq!(d.get(&paths[2]).await.headers()["x-cache"], "MISS");
}
