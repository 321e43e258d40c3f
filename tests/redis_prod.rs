//! Production Redis (README "Production Redis"): TLS through rustls against a real
//! `redis-server --tls-port` with certificates made here, ACL users under
//! the README's least-privilege rule, and passwords that never show.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, DaemonBuilder, RedisServer, free_port, unique, wait_for};
use pki::Pki;
use serde_json::Value;

const PATH: &str = "/v1/data/synthetic/AAPL?start=2024-01-01&end=2024-01-31";

/// A TLS-only `redis-server` (no plain port) using `pki`'s server certificate.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki, auth_clients: bool) -> Self {
        Self::start_with(pki, auth_clients, "server", &[])
    }

    /// A TLS-only server presenting `pki`'s `<cert>.pem`, with `extra`
    /// arguments (cluster mode).
    fn start_with(pki: &Pki, auth_clients: bool, cert: &str, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("redis dir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--tls-cert-file")
            .arg(pki.file(&format!("{cert}.pem")))
            .arg("--tls-key-file")
            .arg(pki.file(&format!("{cert}.key")))
            .arg("--tls-ca-cert-file")
            .arg(pki.file("ca.pem"))
            .args(["--tls-auth-clients", if auth_clients { "yes" } else { "no" }])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (Debian's build supports --tls-port)");
        let s = Self { port, child, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "TLS redis-server did not listen on {port} within 10s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

/// A daemon whose `[redis]` section is `extra` plus the URL and fast timeouts.
async fn daemon(url: &str, extra: &str) -> DaemonBuilder {
    let prefix = unique("tls");
    DaemonBuilder::new(url).bundled("synthetic").config(&format!(
        "[redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\nop_timeout = \"500ms\"\nconnect_timeout = \"1s\"\nbackoff = \"300ms\"\n{extra}"
    ))
}

/// `X-Cache` and the layer that served.
async fn fetch(d: &Daemon, path: &str) -> (String, String) {
    let (status, x, body) = d.data(path).await;
    assert_eq!(status, 200, "{body}");
    (x, body["cache"]["layer"].as_str().unwrap_or("").to_owned())
}

async fn wait_redis(d: &Daemon, state: &str) {
    wait_for(
        &format!("/readyz to say redis {state}"),
        Duration::from_secs(15),
        || async { (d.get_json("/readyz").await.1["redis"] == state).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn tls_with_the_right_ca_serves_hits_from_redis() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, false);
    let extra = format!("tls_ca_file = \"{}\"\n", toml_path(&pki.file("ca.pem")));
    let d = daemon(&redis.url(), &extra).await.start().await;
    wait_redis(&d, "up").await;
    assert_eq!(fetch(&d, PATH).await.0, "MISS");
    assert_eq!(fetch(&d, PATH).await, ("HIT".to_owned(), "redis".to_owned()));
    let ready = d.get_json("/readyz").await.1;
    assert_eq!(ready["redis_master"], format!("127.0.0.1:{}", redis.port), "{ready}");
    assert_eq!(ready["redis_mode"], "standalone");
}

#[tokio::test]
async fn tls_with_a_wrong_ca_is_refused_with_the_reason_and_memory_serves() {
    let pki = Pki::new();
    let other = Pki::new();
    let redis = TlsRedis::start(&pki, false);
    let extra = format!("tls_ca_file = \"{}\"\n", toml_path(&other.file("ca.pem")));
    let d = daemon(&redis.url(), &extra).await.start().await;
    assert_eq!(fetch(&d, PATH).await.0, "MISS");
    assert_eq!(fetch(&d, PATH).await, ("HIT".to_owned(), "memory".to_owned()));
    assert_eq!(d.get_json("/readyz").await.1["redis"], "down");
    let log = d.log();
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer") && log.contains("redis.tls_ca_file"),
        "the log names the reason and the setting to check:\n{log}"
    );
}

#[tokio::test]
async fn tls_insecure_connects_without_verification_and_warns() {
    let other = Pki::new();
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, false);
    // A CA that did not sign the server's certificate: only skipping the
    // verification lets this connect.
    let extra = format!(
        "tls_insecure = true\ntls_ca_file = \"{}\"\n",
        toml_path(&other.file("ca.pem"))
    );
    let d = daemon(&redis.url(), &extra).await.start().await;
    wait_redis(&d, "up").await;
    assert_eq!(fetch(&d, PATH).await.0, "MISS");
    assert_eq!(fetch(&d, PATH).await, ("HIT".to_owned(), "redis".to_owned()));
    let log = d.log();
    assert!(log.contains("tls_insecure") && log.contains("NOT verified"), "{log}");
}

#[tokio::test]
async fn mutual_tls_connects_with_the_client_certificate_and_not_without() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, true);
    let ca = format!("tls_ca_file = \"{}\"\n", toml_path(&pki.file("ca.pem")));
    let with_cert = format!(
        "{ca}tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        toml_path(&pki.file("client.pem")),
        toml_path(&pki.file("client.key"))
    );
    let d = daemon(&redis.url(), &with_cert).await.start().await;
    wait_redis(&d, "up").await;
    assert_eq!(fetch(&d, PATH).await.0, "MISS");
    assert_eq!(fetch(&d, PATH).await, ("HIT".to_owned(), "redis".to_owned()));

    let without = daemon(&redis.url(), &ca).await.start().await;
    assert_eq!(fetch(&without, PATH).await.0, "MISS");
    assert_eq!(fetch(&without, PATH).await, ("HIT".to_owned(), "memory".to_owned()));
    assert_eq!(without.get_json("/readyz").await.1["redis"], "down");
}

/// The README's ACL rule, as written there (one line starting `ACL SETUSER`).
fn readme_acl_rule() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("ACL SETUSER tickerd "))
        .expect("README's Production Redis section has an `ACL SETUSER tickerd ...` line");
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

/// Applies the README's rule with `password` and clears the ACL log.
fn create_acl_user(redis: &RedisServer, password: &str) {
    let mut c = redis.conn();
    let mut cmd = redis::cmd("ACL");
    for arg in readme_acl_rule() {
        if arg == ">CHANGE-ME" {
            cmd.arg(format!(">{password}"));
        } else {
            cmd.arg(arg);
        }
    }
    let () = cmd
        .query(&mut c)
        .expect("the README's ACL rule is valid for this redis-server");
    let () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query(&mut c)
        .expect("ACL LOG RESET");
}

fn acl_denials(redis: &RedisServer) -> Vec<String> {
    let log: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(&mut redis.conn()).expect("ACL LOG");
    log.iter().map(|v| format!("{v:?}")).collect()
}

fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(!text.contains(secret), "{what} shows the password:\n{text}");
}

#[tokio::test]
async fn an_acl_user_under_the_readme_rule_uses_every_feature() {
    let redis = RedisServer::start();
    let secret = unique("pw-Zq");
    create_acl_user(&redis, &secret);
    let port = redis.port;
    // The user in the URL, the password from the environment; the default
    // key prefix and stream, which the README's rule names.
    let url = format!("redis://tickerd@127.0.0.1:{port}/0");
    let d = DaemonBuilder::new(&url)
        .bundled("synthetic")
        .env("REDIS_PASSWORD", &secret)
        .config(
            "[[watch]]\nplugin = \"synthetic\"\ntickers = [\"MSFT\"]\nevery = \"1s\"\nlookback = \"10d\"\n",
        )
        .config(&format!(
            "[redis]\nurl = \"{url}\"\nop_timeout = \"500ms\"\nconnect_timeout = \"1s\"\nbackoff = \"300ms\"\n[cache]\nl1_ttl = \"60s\"\n[plugins.synthetic]\nrate_limit = \"1000/s\"\n"
        ))
        .start()
        .await;
    wait_redis(&d, "up").await;
    // Pub/sub invalidation for the L1.
    wait_for("L1 to subscribe", Duration::from_secs(10), || async {
        (d.get_json("/v1/stats").await.1["l1"] == "active").then_some(())
    })
    .await;
    // Reads, writes and the fleet lock (every miss takes it); each fetch
    // also passes the rate limit's Redis Function (FCALL).
    assert_eq!(fetch(&d, PATH).await.0, "MISS");
    assert_eq!(fetch(&d, PATH).await.0, "HIT");
    // A refresh rewrites and announces the rewrite.
    assert_eq!(fetch(&d, &format!("{PATH}&refresh=true")).await.0, "BYPASS");
    // Invalidation through the index sets.
    let r = d
        .http
        .delete(d.url("/v1/cache?plugin=synthetic&ticker=AAPL"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deleted: Value = r.json().await.unwrap();
    assert!(deleted["deleted"].as_u64().unwrap_or(0) >= 1, "{deleted}");
    assert_eq!(fetch(&d, PATH).await.0, "MISS");
    // A whole plugin: the index sets plus a SCAN for series they lost.
    let r = d.http.delete(d.url("/v1/cache?plugin=synthetic")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(fetch(&d, PATH).await.0, "MISS");
    // The producer's stream.
    wait_for("the producer's XADD", Duration::from_secs(15), || async {
        let n: u64 = redis::cmd("XLEN")
            .arg("stock-data")
            .query(&mut redis.conn())
            .unwrap_or(0);
        (n >= 1).then_some(())
    })
    .await;
    // The data really is in Redis, written by the ACL user.
    let keys: Vec<String> = redis::cmd("KEYS").arg("tickerd:*").query(&mut redis.conn()).unwrap();
    assert!(keys.iter().any(|k| k.contains("AAPL")), "{keys:?}");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut redis.conn()).unwrap();
    assert!(clients.contains("user=tickerd"), "{clients}");
    assert_eq!(d.get_json("/readyz").await.1["redis"], "up");
    let denied = acl_denials(&redis);
    assert!(
        denied.is_empty(),
        "the rule denied something tickerd does: {denied:?}\n{}",
        d.log()
    );

    let stats = d.get("/v1/stats").await.text().await.unwrap();
    let ready = d.get("/readyz").await.text().await.unwrap();
    for (what, text) in [("log", d.log()), ("/v1/stats", stats), ("/readyz", ready)] {
        assert_no_secret(what, &text, &secret);
    }
}

#[tokio::test]
async fn passwords_never_appear_in_logs_stats_readiness_or_errors() {
    let redis = RedisServer::start();
    let secret = unique("pw-Xk");
    create_acl_user(&redis, &secret);
    let wrong = unique("wrong-Yh");
    let port = redis.port;
    // A wrong password from the config file, and one inside the URL of a
    // second daemon: both are refused, and neither may show anywhere.
    let a = daemon(
        &format!("redis://127.0.0.1:{port}/0"),
        &format!("username = \"tickerd\"\npassword = \"{wrong}\"\n"),
    )
    .await
    .start()
    .await;
    let b = daemon(&format!("redis://tickerd:{wrong}@127.0.0.1:{port}/0"), "")
        .await
        .start()
        .await;
    for d in [&a, &b] {
        assert_eq!(fetch(d, PATH).await.0, "MISS");
        wait_for("the refusal in the log", Duration::from_secs(10), || async {
            d.log().contains("authentication failed").then_some(())
        })
        .await;
        assert!(
            d.log().contains("REDIS_PASSWORD"),
            "the log says what to check:\n{}",
            d.log()
        );
        let mut texts = vec![("log".to_owned(), d.log())];
        for path in [
            "/v1/stats",
            "/readyz",
            "/metrics",
            "/v1/data/nope/AAPL",
            "/v1/data/synthetic/AAPL?start=bad",
            "/v1/plugins",
        ] {
            texts.push((path.to_owned(), d.get(path).await.text().await.unwrap()));
        }
        let cli = Command::new(env!("CARGO_BIN_EXE_tickerd"))
            .args(["--config"])
            .arg(&d.config_path)
            .args([
                "fetch",
                "synthetic",
                "AAPL",
                "--start",
                "2024-01-01",
                "--end",
                "2024-01-05",
            ])
            .arg("--plugins")
            .arg(&d.plugins_dir)
            .env_remove("REDIS_URL")
            .env_remove("REDIS_PASSWORD")
            .output();
        if let Ok(out) = cli {
            texts.push((
                "CLI stderr".to_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        for (what, text) in &texts {
            assert_no_secret(what, text, &wrong);
        }
    }
    // A URL the config rejects names the key without the password.
    let out = Command::new(env!("CARGO_BIN_EXE_tickerd"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("REDIS_URL", format!("http://tickerd:{wrong}@127.0.0.1:{port}/0"))
        .output()
        .expect("run tickerd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    assert_no_secret("config error", &stderr, &wrong);
}

/// `redis-cli` over TLS (verifying with `pki`'s CA) against one TLS node,
/// killed after 60 s (`--cluster create` waits for the join forever).
fn tls_cli(pki: &Pki, port: u16, args: &[&str]) -> String {
    let mut child = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(pki.file("ca.pem"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli on PATH (Debian's build supports --tls)");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("redis-cli status").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("redis-cli output");
            panic!(
                "redis-cli {args:?} on {port} still running after 60s:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("redis-cli output");
    assert!(
        out.status.success(),
        "redis-cli {args:?} on {port}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Redis Cluster over TLS only: three masters with `--tls-cluster yes` (the
/// cluster bus and the addresses the cluster hands out are TLS too), formed
/// with `redis-cli --tls --cluster create`. tickerd gets `rediss://` seed
/// nodes and the CA; its entries land in the cluster and come back as HITs
/// from the Redis layer.
#[tokio::test]
async fn tls_cluster_serves_hits_from_redis() {
    let pki = Pki::new();
    let nodes: Vec<TlsRedis> = (0..3)
        .map(|_| {
            // The bus port is chosen, not port + 10000 (absent above 55535).
            let bus = free_port().to_string();
            let args: Vec<String> = [
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                &bus,
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
            TlsRedis::start_with(&pki, false, "node", &args)
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let mut create: Vec<&str> = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    tls_cli(&pki, nodes[0].port, &create);
    wait_for(
        "the TLS cluster to reach cluster_state:ok",
        Duration::from_secs(30),
        || async {
            nodes
                .iter()
                .all(|n| tls_cli(&pki, n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                .then_some(())
        },
    )
    .await;

    let prefix = unique("tlsc");
    let seeds = nodes
        .iter()
        .map(|n| format!("\"{}\"", n.url()))
        .collect::<Vec<_>>()
        .join(", ");
    let d = DaemonBuilder::new(&nodes[0].url())
        .bundled("synthetic")
        .config(&format!(
            "[redis]\nurl = \"{}\"\ncluster = true\nnodes = [{seeds}]\nkey_prefix = \"{prefix}\"\nop_timeout = \"500ms\"\nconnect_timeout = \"1s\"\nbackoff = \"300ms\"\ntls_ca_file = \"{}\"\n",
            nodes[0].url(),
            toml_path(&pki.file("ca.pem"))
        ))
        .start()
        .await;
    wait_redis(&d, "up").await;
    assert_eq!(d.get_json("/readyz").await.1["redis_mode"], "cluster");
    let tickers = ["AAPL", "MSFT", "IBM", "ORCL"];
    for t in tickers {
        let path = format!("/v1/data/synthetic/{t}?start=2024-01-01&end=2024-01-31");
        assert_eq!(fetch(&d, &path).await, ("MISS".to_owned(), "redis".to_owned()), "{t}");
        assert_eq!(fetch(&d, &path).await, ("HIT".to_owned(), "redis".to_owned()), "{t}");
    }
    // The entries are in the cluster, spread over its masters.
    let pattern = format!("{prefix}:synthetic:*");
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|n| {
            tls_cli(&pki, n.port, &["KEYS", &pattern])
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .collect();
    assert_eq!(per_node.iter().sum::<usize>(), tickers.len(), "{per_node:?}");
    assert!(per_node.iter().filter(|k| **k > 0).count() >= 2, "{per_node:?}");
}
