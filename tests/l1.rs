//! The optional L1: a hot key costs no Redis round trip, and invalidations
//! and refreshes in one daemon evict the entry from every daemon's L1.

mod common;

use std::time::Duration;

use common::{Daemon, DaemonBuilder, RedisServer, unique, wait_for};
use serde_json::Value;

const PATH: &str = "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31";

async fn layer(d: &Daemon, path: &str) -> (String, String, Value) {
    let r = d.get(path).await;
    let x = r.headers()["x-cache"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    (x, body["cache"]["layer"].as_str().unwrap_or("").to_owned(), body)
}

async fn l1_daemon(redis: &RedisServer, prefix: &str) -> Daemon {
    let cfg = format!(
        "[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n[cache]\nl1_ttl = \"60s\"\n",
        redis.url()
    );
    let d = DaemonBuilder::new(&redis.url())
        .bundled("synthetic")
        .config(&cfg)
        .start()
        .await;
    wait_for("L1 to subscribe", Duration::from_secs(10), || async {
        (d.get_json("/v1/stats").await.1["l1"] == "active").then_some(())
    })
    .await;
    d
}

#[tokio::test]
async fn invalidation_and_refresh_in_one_daemon_evict_every_l1() {
    let redis = RedisServer::start();
    let prefix = unique("l1");
    let a = l1_daemon(&redis, &prefix).await;
    let b = l1_daemon(&redis, &prefix).await;

    assert_eq!(layer(&a, PATH).await.0, "MISS");
    let (x, l, _) = layer(&a, PATH).await;
    assert_eq!((x.as_str(), l.as_str()), ("HIT", "l1"));
    let (x, l, _) = layer(&b, PATH).await;
    assert_eq!(
        (x.as_str(), l.as_str()),
        ("HIT", "redis"),
        "B's first read goes to redis"
    );
    let (x, l, first) = layer(&b, PATH).await;
    assert_eq!((x.as_str(), l.as_str()), ("HIT", "l1"), "then B serves from its L1");

    // A refresh in A rewrites the entry; B's L1 copy must go.
    let (x, _, refreshed) = layer(&a, &format!("{PATH}&refresh=true")).await;
    assert_eq!(x, "BYPASS");
    assert_ne!(refreshed["fetched_at"], Value::Null);
    let seen = wait_for(
        "B to drop its L1 copy after A's refresh",
        Duration::from_secs(5),
        || async {
            let (_, l, body) = layer(&b, PATH).await;
            (l != "l1").then_some(body)
        },
    )
    .await;
    assert_eq!(seen["fetched_at"], refreshed["fetched_at"]);
    let _ = first;

    // Make sure B holds it in L1 again, then invalidate through A.
    wait_for("B to cache it in L1 again", Duration::from_secs(5), || async {
        (layer(&b, PATH).await.1 == "l1").then_some(())
    })
    .await;
    let r = a.http.delete(a.url("/v1/cache?ticker=AAPL")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 1);
    wait_for("B to miss after A's invalidation", Duration::from_secs(5), || async {
        (layer(&b, PATH).await.0 == "MISS").then_some(())
    })
    .await;
    let m = b.metrics().await;
    assert!(common::expect_metric(&m, "cache_hits_total", &[("plugin", "synthetic"), ("cache_type", "l1")]) >= 1.0);
}

/// README "L1": a daemon that is not subscribed to invalidations does not
/// read its L1 (it could miss another daemon's write). The daemon's Redis
/// user may do everything but subscribe, so its subscription never comes up
/// while reads and writes work.
#[tokio::test]
async fn a_daemon_that_cannot_subscribe_never_reads_its_l1() {
    let redis = RedisServer::start();
    let mut c = redis.conn();
    let user = unique("nosub");
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">nosub-password")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-subscribe")
        .arg("-psubscribe")
        .arg("-ssubscribe")
        .query(&mut c)
        .expect("ACL SETUSER");
    let url = redis
        .url()
        .replace("redis://", &format!("redis://{user}:nosub-password@"));
    let prefix = unique("l1");
    let d = DaemonBuilder::new(&url)
        .bundled("synthetic")
        .config(&format!(
            "[redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n[cache]\nl1_ttl = \"60s\"\n"
        ))
        .start()
        .await;
    // The event: Redis refused this daemon's SUBSCRIBE.
    wait_for(
        "the daemon's SUBSCRIBE to be refused",
        Duration::from_secs(10),
        || async {
            let mut c = redis.conn();
            let log: redis::Value = redis::cmd("ACL").arg("LOG").query(&mut c).expect("ACL LOG");
            let log = format!("{log:?}");
            (log.contains(&user) && log.contains("subscribe")).then_some(())
        },
    )
    .await;
    assert_eq!(d.get_json("/v1/stats").await.1["l1"], "bypassed");

    assert_eq!(layer(&d, PATH).await.0, "MISS");
    for _ in 0..3 {
        let (x, l, body) = layer(&d, PATH).await;
        assert_eq!((x.as_str(), l.as_str()), ("HIT", "redis"), "{body}");
    }
    let m = d.metrics().await;
    assert!(
        matches!(
            common::metric(&m, "cache_hits_total", &[("plugin", "synthetic"), ("cache_type", "l1")]),
            None | Some(0.0)
        ),
        "no L1 hit"
    );
    assert_eq!(
        common::expect_metric(
            &m,
            "cache_hits_total",
            &[("plugin", "synthetic"), ("cache_type", "redis")]
        ),
        3.0
    );
    assert_eq!(d.get_json("/v1/stats").await.1["l1"], "bypassed");
}
