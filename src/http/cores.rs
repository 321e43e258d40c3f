//! HTTP served thread-per-core: one acceptor hands each new connection to one
//! of N threads, and each thread runs its own single-threaded runtime with
//! axum on the connections it was given.
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

use axum::Router;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

type Handoff = (std::net::TcpStream, SocketAddr);

/// What one serving thread reads its connections from.
struct CoreListener {
    rx: mpsc::UnboundedReceiver<Handoff>,
    local: SocketAddr,
}

impl axum::serve::Listener for CoreListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.rx.recv().await {
                // Registers the socket with this thread's reactor.
                Some((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(s) => return (s, peer),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "dropped a new connection: cannot register it with the HTTP thread")
                    }
                },
                // The acceptor stopped (shutdown): no more connections come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

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
    app: Router,
    threads: usize,
    stop: watch::Receiver<bool>,
) -> io::Result<Cores> {
    let local = listener.local_addr()?;
    let (exit, exit_rx) = watch::channel(false);
    let done = FuturesUnordered::new();
    let mut senders = Vec::with_capacity(threads.max(1));
    for i in 0..threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (app, mut stop, mut exit_rx) = (app.clone(), stop.clone(), exit_rx.clone());
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
                let res = axum::serve(CoreListener { rx, local }, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                let _ = done_tx.send(res);
                let _ = exit_rx.wait_for(|e| *e).await;
            });
        })?;
        done.push(done_rx);
        senders.push(tx);
    }
    tokio::spawn(accept_loop(listener, senders, stop));
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

/// Accepts connections and deals them out round-robin. Keep-alive clients
/// hold their connection, so dealing by count spreads steady load evenly.
async fn accept_loop(
    listener: TcpListener,
    cores: Vec<mpsc::UnboundedSender<Handoff>>,
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
        match stream.into_std() {
            Ok(s) => {
                let _ = cores[next % cores.len()].send((s, peer));
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
