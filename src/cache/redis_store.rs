//! The Redis connection with a circuit breaker.
//!
//! Every call is bounded by `op_timeout`. A failure opens the breaker: calls
//! are skipped (the memory layer serves) until a background supervisor has
//! reconnected and seen a `PING` answered. Requests therefore never wait on
//! a reconnect, which is what makes "Redis failure is not request failure"
//! hold even when Redis hangs (SIGSTOP) rather than refusing connections.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Notify;

use super::redis_target::{Endpoint, RedisMode, RedisTarget, Resolved, explain};
use crate::config::RedisConfig;
use crate::metrics::Metrics;

/// One Redis deployment, standalone or cluster, behind one interface.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis is marked down; skipping it until the background reconnect succeeds")]
    Skipped,
    #[error("redis {op} did not answer within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("redis {op} failed: {message}")]
    Redis { op: &'static str, message: String },
}

pub struct RedisStore {
    cfg: RedisConfig,
    /// URL, credentials, TLS and Sentinel turned into clients.
    target: Arc<RedisTarget>,
    /// Where `conn` went at its last (re)connect; the HTTP threads' own
    /// connections follow it (the master in use, under Sentinel).
    resolved: ArcSwapOption<Resolved>,
    conn: ArcSwapOption<Conn>,
    /// Counts successful (re)connects of `conn`; a thread's own connection
    /// from an older generation is replaced (see [`own_connections`]).
    generation: AtomicU64,
    /// For tasks that open a thread's own connection.
    me: Weak<RedisStore>,
    /// Tells apart stores in one process (tests run several daemons).
    id: u64,
    up: AtomicBool,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl RedisStore {
    pub fn new(cfg: RedisConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.redis_up.set(0);
        Arc::new_cyclic(|me| Self {
            target: Arc::new(RedisTarget::new(&cfg)),
            resolved: ArcSwapOption::empty(),
            cfg,
            conn: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            me: me.clone(),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            up: AtomicBool::new(false),
            wake: Notify::new(),
            metrics,
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Where the daemon connects, for log lines: no password (see `redis_target`).
    pub fn display_url(&self) -> String {
        match self.master() {
            Some(m) if self.mode() == RedisMode::Sentinel => format!("{} (master {m})", self.target.describe()),
            _ => self.target.describe(),
        }
    }

    /// Standalone, cluster or sentinel.
    pub fn mode(&self) -> RedisMode {
        self.target.mode()
    }

    /// The `host:port` of the server in use (under Sentinel: the master the
    /// sentinels named at the last reconnect); `None` for a cluster or
    /// before the first connection.
    pub fn master(&self) -> Option<String> {
        self.resolved.load().as_ref().and_then(|r| r.address.clone())
    }

    pub(crate) fn target(&self) -> &Arc<RedisTarget> {
        &self.target
    }

    /// Opens a connection and checks it with `PING`. `name` labels it in
    /// `CLIENT LIST` (best effort: an ACL may forbid `CLIENT SETNAME`), so an
    /// operator can tell the shared connection from the HTTP threads' own.
    async fn open(&self, name: &str, via: &Resolved) -> RedisResult<Conn> {
        let cfg = &self.cfg;
        let conn = match &via.endpoint {
            Endpoint::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            Endpoint::Single(client) => {
                let client = client.clone();
                // Explicit timeouts and a single retry: the crate's defaults wait
                // on a shared reconnect future for seconds while Redis is down.
                let mgr_cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.connect_timeout))
                    .set_response_timeout(Some(cfg.op_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(100));
                Conn::Single(ConnectionManager::new_with_config(client, mgr_cfg).await?)
            }
        };
        let mut probe = conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut probe).await?;
        if !cfg.cluster {
            let _ = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .query_async::<()>(&mut probe)
                .await;
        }
        Ok(conn)
    }

    /// One connection attempt, bounded by the connect timeout plus `op_timeout`.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let limit = self.cfg.connect_timeout + self.cfg.op_timeout;
        let attempt = async {
            // Asks the sentinels again on every reconnect: after a failover
            // they name the promoted master.
            let via = self.target.resolve().await?;
            let conn = self.open("tickerd", &via).await?;
            Ok::<_, redis::RedisError>((conn, via))
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok((conn, via))) => {
                let moved = via.address.is_some() && via.address != self.master();
                self.resolved.store(Some(Arc::new(via)));
                if moved && self.mode() == RedisMode::Sentinel {
                    tracing::info!(redis = %self.display_url(), "connected to the master the sentinels name");
                }
                self.conn.store(Some(Arc::new(conn)));
                self.generation.fetch_add(1, Ordering::AcqRel);
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(redis = %self.display_url(), "redis is up; cache entries go to redis again");
                }
                self.metrics.redis_up.set(1);
                Ok(())
            }
            Ok(Err(e)) => Err(StoreError::Redis {
                op: "connect",
                message: explain(&e),
            }),
            Err(_) => Err(StoreError::Timeout {
                op: "connect",
                timeout: limit,
            }),
        }
    }

    /// Keeps trying to reconnect while Redis is down. Runs for the life of the daemon.
    pub fn spawn_supervisor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut logged_down = false;
            loop {
                if this.is_up() {
                    this.wake.notified().await;
                    // Let the back-off pass before probing again.
                    tokio::time::sleep(this.cfg.backoff).await;
                    continue;
                }
                match this.connect().await {
                    Ok(()) => logged_down = false,
                    Err(e) => {
                        if !logged_down {
                            tracing::warn!(
                                redis = %this.display_url(), error = %e,
                                retry_every = ?this.cfg.backoff,
                                "redis unreachable; serving from the in-process memory cache and retrying in the background (check that redis-server is running and REDIS_URL/REDIS_HOST point at it)"
                            );
                            logged_down = true;
                        }
                        tokio::time::sleep(this.cfg.backoff).await;
                    }
                }
            }
        })
    }

    fn trip(&self, err: &StoreError) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.redis_up.set(0);
            self.metrics.redis_breaker_trips.inc();
            tracing::warn!(
                redis = %self.display_url(), error = %err, backoff = ?self.cfg.backoff,
                "redis call failed; skipping redis and serving from memory until it answers again"
            );
        }
        self.wake.notify_one();
    }

    /// Runs one Redis operation, or fails fast while the breaker is open.
    pub async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> BoxFuture<'static, RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(StoreError::Skipped);
        }
        let (conn, own) = match self.thread_conn() {
            Some(c) => (c, true),
            None => match self.conn.load_full() {
                Some(c) => ((*c).clone(), false),
                None => return Err(StoreError::Skipped),
            },
        };
        let timeout = self.cfg.op_timeout;
        let res = match tokio::time::timeout(timeout, f(conn)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => {
                let err = StoreError::Redis {
                    op,
                    message: e.to_string(),
                };
                if !is_connection_problem(&e) {
                    // A command error (wrong type, script error) says nothing
                    // about Redis's health: report it without tripping.
                    return Err(err);
                }
                err
            }
            Err(_) => StoreError::Timeout { op, timeout },
        };
        if own {
            // Only this thread's connection failed so far; it may just have
            // gone stale (a server `timeout` or a NAT closing idle
            // connections). Drop it without tripping the breaker for the
            // whole daemon: the next call here goes through the shared
            // connection, which trips it if Redis itself is gone.
            self.drop_thread_conn();
            return Err(res);
        }
        self.trip(&res);
        Err(res)
    }

    /// Sends one command (bounded, breaker-aware like every call).
    pub async fn query<T>(&self, op: &'static str, cmd: Cmd) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        self.call(op, move |mut c| {
            async move { cmd.query_async::<T>(&mut c).await }.boxed()
        })
        .await
    }

    /// Runs a script by its SHA (`EVALSHA`; on `NOSCRIPT` it is loaded and
    /// run again), never sending the body with `EVAL`.
    pub async fn invoke<T>(&self, op: &'static str, inv: redis::ScriptInvocation<'static>) -> Result<T, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        self.call(op, move |mut c| {
            async move { inv.invoke_async::<T>(&mut c).await }.boxed()
        })
        .await
    }

    /// This thread's own connection, if the thread asked for one
    /// ([`own_connections`]) and it is open and current. Otherwise starts
    /// opening it in the background and returns `None` (the shared
    /// connection serves meanwhile), so no request waits on a connect.
    fn thread_conn(&self) -> Option<Conn> {
        if self.cfg.cluster {
            return None;
        }
        THREAD_CONN.with(|slot| {
            let mut slot = slot.try_borrow_mut().ok()?;
            let own = slot.as_mut()?;
            let generation = self.generation.load(Ordering::Acquire);
            let store = self.id;
            if own.store == store && own.generation == generation {
                if let Some(c) = &own.conn {
                    return Some(c.clone());
                }
                if own.opening || own.retry_at.is_some_and(|t| Instant::now() < t) {
                    return None;
                }
            }
            // A retry within one generation keeps the "already logged" mark.
            let warned = own.store == store && own.generation == generation && own.warned;
            *own = OwnConn {
                store,
                generation,
                conn: None,
                opening: true,
                retry_at: None,
                warned,
            };
            let this = self.me.upgrade()?;
            let name = format!("tickerd-{}", std::thread::current().name().unwrap_or("thread"));
            tokio::spawn(async move {
                let limit = this.cfg.connect_timeout + this.cfg.op_timeout;
                let opened = match this.resolved.load_full() {
                    Some(via) => tokio::time::timeout(limit, this.open(&name, &via)).await,
                    None => Ok(Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "not connected yet",
                    )))),
                };
                // Runs on the thread that asked: its runtime is single-threaded.
                THREAD_CONN.with(|slot| {
                    if let Ok(mut slot) = slot.try_borrow_mut()
                        && let Some(own) = slot.as_mut()
                        && own.store == store
                        && own.generation == generation
                    {
                        own.opening = false;
                        match opened {
                            Ok(Ok(c)) => own.conn = Some(c),
                            // The shared connection keeps serving; try again later.
                            failed => {
                                own.retry_at = Some(Instant::now() + this.cfg.backoff);
                                let error = match failed {
                                    Ok(Err(e)) => explain(&e),
                                    _ => format!("no answer within {limit:?}"),
                                };
                                if !own.warned {
                                    own.warned = true;
                                    let hint = connect_hint(&error);
                                    tracing::warn!(
                                        redis = %this.display_url(), %error, retry_every = ?this.cfg.backoff, hint,
                                        "an HTTP thread cannot open its own redis connection; it uses the shared one meanwhile"
                                    );
                                }
                            }
                        }
                    }
                });
            });
            None
        })
    }

    /// Forgets this thread's connection after a failure on it; the next
    /// call after the supervisor's reconnect opens a fresh one.
    fn drop_thread_conn(&self) {
        THREAD_CONN.with(|slot| {
            if let Ok(mut slot) = slot.try_borrow_mut()
                && let Some(own) = slot.as_mut()
            {
                own.conn = None;
                own.generation = u64::MAX;
            }
        });
    }
}

/// A connection owned by one thread, so a request served there never wakes
/// another thread to talk to Redis (its I/O task runs on the same
/// single-threaded runtime).
struct OwnConn {
    /// Which store it belongs to (`RedisStore::id`).
    store: u64,
    generation: u64,
    conn: Option<Conn>,
    opening: bool,
    retry_at: Option<Instant>,
    /// The open failure was logged (once per generation).
    warned: bool,
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_CONN: RefCell<Option<OwnConn>> = const { RefCell::new(None) };
}

/// Marks the calling thread, which must run a single-threaded tokio
/// runtime for its whole life, as one that keeps its own Redis connection
/// (the HTTP threads, see `http::cores`).
pub fn own_connections() {
    THREAD_CONN.with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(OwnConn {
                store: 0,
                generation: u64::MAX,
                conn: None,
                opening: false,
                retry_at: None,
                warned: false,
            });
        }
    });
}

fn is_connection_problem(e: &redis::RedisError) -> bool {
    // READONLY: the server we talk to was demoted to a replica (a Sentinel
    // failover while our connection stayed open); reconnecting asks the
    // sentinels for the new master.
    e.code() == Some("READONLY")
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
}

/// What to check when a connection to Redis cannot be opened, by what the
/// error says: a refused connection is not a maxclients or ACL problem.
fn connect_hint(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("refused") {
        "nothing accepts connections at that address: is redis-server running, and are host and port right?"
    } else if e.contains("max") && e.contains("clients") {
        "redis refused a new client: raise maxclients in redis.conf or lower http_threads"
    } else if e.contains("noauth") || e.contains("wrongpass") || e.contains("noperm") || e.contains("auth") {
        "redis refused the credentials: check the password or ACL user in the redis URL"
    } else if e.contains("timed out") || e.contains("no answer") || e.contains("timeout") {
        "redis did not answer in time: check the network and redis's load, or raise redis.connect_timeout"
    } else {
        "check that redis is reachable from this host"
    }
}

#[cfg(test)]
mod connect_hint_tests {
    use super::connect_hint;

    #[test]
    fn a_refused_connection_is_not_blamed_on_maxclients_or_acls() {
        let h = connect_hint("Connection refused (os error 111)");
        assert!(h.contains("is redis-server running"), "{h}");
        assert!(!h.contains("maxclients") && !h.contains("ACL"), "{h}");
        assert!(connect_hint("ERR max number of clients reached").contains("maxclients"));
        assert!(connect_hint("WRONGPASS invalid username-password pair").contains("ACL"));
    }
}
