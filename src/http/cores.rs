//! HTTP served thread-per-core: one acceptor hands each new connection to one
//! of N threads, and each thread runs its own single-threaded runtime serving
//! the connections it was given (hyper's HTTP/1 with our connection limits,
//! `http::conn`; the routes are axum's).
//!
//! Why not axum on the daemon's multi-thread runtime: on the 2-core benchmark
//! machine, a request there is often woken on one worker and stolen or
//! finished on another, and every such hand-off parks and unparks threads
//! (an inter-processor interrupt under virtualisation). Measured with the
//! same binary, two single-threaded runtimes served 92-113k req/s where one
//! two-worker runtime served 71-88k (L1 hits and /healthz, wrk -t2 -c64).
//! Keep-alive connections stay on their thread, and each thread keeps its own
//! Redis connection (`cache::own_connections`), so a request, its Redis
//! round trips and its answer run on one thread. Lua runs on its worker
//! threads as before; the shared Redis connection, its supervisor, the L1
//! listener, the file watcher and the producer stay on the main runtime.
//!
//! Connections are dealt by count, not by load: a client that keeps few
//! connections (a proxy with a small upstream pool) uses that many threads,
//! and a slow request (a long CSV answer) delays the other requests of its
//! thread only.
//!
//! One listening socket, not `SO_REUSEPORT` per thread: with reuseport a
//! second daemon started by mistake on the same port would bind silently and
//! take half the traffic, where an operator expects "address in use".

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::App;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::conn::{self, Limits, OpenGuard};

type Handoff = (std::net::TcpStream, SocketAddr, OpenGuard);

/// The running HTTP threads.
pub(crate) struct Cores {
    done: FuturesUnordered<oneshot::Receiver<io::Result<()>>>,
    /// Dropped (or sent) when the daemon exits; until then each thread keeps
    /// driving tasks spawned on its runtime (a fetch that outlives its
    /// request, a Redis reconnect).
    exit: watch::Sender<bool>,
}

/// How many serving threads to start when the config leaves it open: one
/// per core, within the bound an explicit `http_threads` must respect.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(256)
}

/// Starts `threads` serving threads and the acceptor (on the caller's
/// runtime). Serving stops when `stop` turns true: the acceptor closes the
/// socket and each thread drains its connections.
pub(crate) fn start(
    listener: TcpListener,
    app: App,
    threads: usize,
    limits: Limits,
    stop: watch::Receiver<bool>,
) -> io::Result<Cores> {
    let (exit, exit_rx) = watch::channel(false);
    let done = FuturesUnordered::new();
    let mut senders = Vec::with_capacity(threads.max(1));
    for i in 0..threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (app, limits, stop, mut exit_rx) = (app.clone(), limits.clone(), stop.clone(), exit_rx.clone());
        std::thread::Builder::new().name(format!("http-{i}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = done_tx.send(Err(e));
                    return;
                }
            };
            crate::cache::own_connections();
            rt.block_on(async move {
                serve_core(rx, app, limits, stop).await;
                let _ = done_tx.send(Ok(()));
                let _ = exit_rx.wait_for(|e| *e).await;
            });
        })?;
        done.push(done_rx);
        senders.push(tx);
    }
    tokio::spawn(accept_loop(listener, senders, limits, stop));
    Ok(Cores { done, exit })
}

impl Cores {
    /// Resolves when a serving thread has stopped: after a shutdown signal,
    /// call it until it returns `None` (all drained); before one, a result
    /// means a thread failed.
    pub(crate) async fn next_stopped(&mut self) -> Option<io::Result<()>> {
        self.done
            .next()
            .await
            .map(|r| r.unwrap_or_else(|_| Err(io::Error::other("an HTTP thread stopped unexpectedly (panicked)"))))
    }

    /// Lets the threads (and what was spawned on them) end.
    pub(crate) fn release(self) {
        let _ = self.exit.send(true);
    }
}

/// One serving thread: serves each connection handed to it on its own task
/// until `stop` turns true, then waits for them all to drain (each finishes
/// the request in flight and closes).
async fn serve_core(
    mut rx: mpsc::UnboundedReceiver<Handoff>,
    app: App,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut open = true;
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            handoff = rx.recv(), if open => match handoff {
                // Registers the socket with this thread's reactor.
                Some((stream, peer, guard)) => match TcpStream::from_std(stream) {
                    Ok(s) => {
                        conns.spawn(conn::serve(s, app.clone(), limits.clone(), conn_stop.clone(), guard));
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "dropped a new connection: cannot register it with the HTTP thread")
                    }
                },
                // The acceptor stopped (shutdown): no more connections come.
                None => open = false,
            },
            // Reaps finished connections so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    while conns.join_next().await.is_some() {}
}

/// What a connection over the cap reads before it is closed.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 94\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections; retry shortly\"}}";

/// Accepts connections and deals them out round-robin. Keep-alive clients
/// hold their connection, so dealing by count spreads steady load evenly.
/// Above the connection cap a new connection gets a 503 (when its socket
/// buffer takes it at once) and is closed, so the fds the cap keeps free
/// stay free for the daemon's own work.
async fn accept_loop(
    listener: TcpListener,
    cores: Vec<mpsc::UnboundedSender<Handoff>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE and the like: waiting lets connections close.
                tracing::error!(error = %e, "cannot accept connections (raise the open-files limit, `ulimit -n`, if this says too many open files); retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(guard) = limits.admit() else {
            let mut stream = stream;
            let _ = stream.try_write(OVER_CAP);
            let _ = stream.shutdown().await;
            continue;
        };
        match stream.into_std() {
            Ok(s) => {
                let _ = cores[next % cores.len()].send((s, peer, guard));
                next = next.wrapping_add(1);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "dropped a new connection: cannot hand it to an HTTP thread"),
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_cap_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAP).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("a content-length");
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(v["error"]["code"], "too_many_connections");
    }
}
