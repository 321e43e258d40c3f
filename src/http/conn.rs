//! One client connection: hyper's HTTP/1 server plus the limits axum::serve
//! does not have (README, "Connections"): a header-read timeout, an idle
//! keep-alive timeout, a write-stall timeout, and the open-connection count
//! behind the connection cap.
//!
//! Why not hyper's own `header_read_timeout`: in hyper 1.x its timer also
//! starts when a keep-alive connection goes idle (the next request's headers
//! are "being read" from that moment), so an idle connection would be closed
//! after the header timeout and a longer `idle_timeout` could not exist. So
//! both run here, from one per-connection timer (the watchdog in [`serve`]):
//! a new connection has `header_read_timeout` from accept to complete its
//! first request's headers; between requests it may sit `idle_timeout`; once
//! the first byte of the next request arrives, its headers must be complete
//! within `header_read_timeout`. While a request is in flight neither applies
//! (the plugin's timeout bounds the handler, the write-stall timeout the
//! answer).
//!
//! Cost on the hit path: two relaxed atomic stores and one clock read per
//! request, one `Arc` clone per request (the answer's body tracks the end of
//! the request); no allocation and no lock. The rest is per connection.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::App;
use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::config::HttpConfig;

/// The connection limits in force (read at start; changing them needs a
/// restart), and the counters behind the cap and its metrics.
#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Duration,
    /// `max_connections`, lowered to fit the open-files limit.
    pub(crate) cap: usize,
    pub(crate) open: Arc<AtomicUsize>,
    pub(crate) open_gauge: prometheus::IntGauge,
    pub(crate) rejected: prometheus::IntCounter,
}

/// File descriptors kept free for the daemon's own work when the cap is
/// fitted to the open-files limit: Redis connections and reconnects (one per
/// HTTP thread plus the shared one and the L1 listener), the plugin
/// watcher's directory reads, plugins' outbound HTTP, log files, and the one
/// fd an over-cap connection holds between accept and close.
pub(crate) const FD_RESERVE: usize = 64;

impl Limits {
    /// The limits of `cfg`, with the cap lowered when the open-files limit
    /// (`ulimit -n`) leaves fewer than `max_connections` fds beside those
    /// open now and [`FD_RESERVE`]; logged once when it does.
    pub(crate) fn new(cfg: &HttpConfig, metrics: &crate::metrics::Metrics) -> Self {
        let cap = match fd_room() {
            Some((room, limit, open)) if room < cfg.max_connections => {
                let cap = room.max(1);
                tracing::warn!(
                    max_connections = cfg.max_connections,
                    cap,
                    open_files_limit = limit,
                    open_now = open,
                    reserve = FD_RESERVE,
                    "the open-files limit is too low for max_connections: at most {cap} client connections (raise `ulimit -n` / LimitNOFILE to allow more)"
                );
                cap
            }
            _ => cfg.max_connections,
        };
        Self {
            header_read_timeout: cfg.header_read_timeout,
            idle_timeout: cfg.idle_timeout,
            write_timeout: cfg.write_timeout,
            cap,
            open: Arc::new(AtomicUsize::new(0)),
            open_gauge: metrics.http_connections_open.clone(),
            rejected: metrics.http_connections_rejected.clone(),
        }
    }

    /// Counts a new connection, or `None` when the cap is reached (counted
    /// as rejected). Only the acceptor calls this, so check-then-add is
    /// exact.
    pub(crate) fn admit(&self) -> Option<OpenGuard> {
        if self.open.load(Ordering::Relaxed) >= self.cap {
            self.rejected.inc();
            return None;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        self.open_gauge.inc();
        Some(OpenGuard {
            open: Arc::clone(&self.open),
            gauge: self.open_gauge.clone(),
        })
    }
}

/// Fds the process may still open beyond [`FD_RESERVE`], the soft
/// open-files limit, and the fds open now; `None` when unknown (no limit,
/// or not Linux).
fn fd_room() -> Option<(usize, usize, usize)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let limit = usize::try_from(lim.rlim_cur).ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some((limit.saturating_sub(open + FD_RESERVE), limit, open))
}

/// One open connection in the count; dropped when the connection ends
/// (however it ends, a panic included).
pub(crate) struct OpenGuard {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// What the watchdog needs to know of a connection, written by the IO
/// wrapper, the service and the answer's body (all on the connection's own
/// task, hence relaxed atomics). Times are nanoseconds since `epoch`.
struct ConnState {
    epoch: Instant,
    /// A request's headers arrived and its answer is not fully handed over.
    busy: AtomicBool,
    /// A request has been served (the idle timeout applies between requests).
    served: AtomicBool,
    /// When the last answer was handed over.
    idle_since: AtomicU64,
    /// First byte read since then, plus one; zero when none.
    first_byte: AtomicU64,
    /// A write is waiting for the client to read.
    write_pending: AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            busy: AtomicBool::new(false),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
            write_pending: AtomicBool::new(false),
        }
    }

    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn request_started(&self) {
        self.busy.store(true, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.idle_since.store(self.since_epoch(), Ordering::Relaxed);
        self.first_byte.store(0, Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
    }

    fn bytes_read(&self) {
        if !self.busy.load(Ordering::Relaxed) && self.first_byte.load(Ordering::Relaxed) == 0 {
            self.first_byte.store(self.since_epoch() + 1, Ordering::Relaxed);
        }
    }

    /// When to look again, or `None` when the connection is past its
    /// header-read or idle deadline and must be closed.
    ///
    /// The answer is never later than `now + min(header, idle)`: no state
    /// change can then bring a deadline before the next look (a request
    /// ending or a first byte arriving only sets deadlines at least that far
    /// ahead), so the request path never has to reset the timer (a timer
    /// reset takes the time driver's lock), and an idle connection costs one
    /// wake-up per `min(header, idle)`.
    fn next_check(&self, lim: &Limits) -> Option<Instant> {
        let now = Instant::now();
        let look = now + lim.header_read_timeout.min(lim.idle_timeout);
        if self.busy.load(Ordering::Relaxed) || self.write_pending.load(Ordering::Relaxed) {
            return Some(look);
        }
        let at = |nanos: u64| self.epoch + Duration::from_nanos(nanos);
        let deadline = match self.first_byte.load(Ordering::Relaxed) {
            0 if self.served.load(Ordering::Relaxed) => at(self.idle_since.load(Ordering::Relaxed)) + lim.idle_timeout,
            0 => self.epoch + lim.header_read_timeout,
            first => at(first - 1) + lim.header_read_timeout,
        };
        (now < deadline).then_some(deadline.min(look))
    }
}

/// The socket as hyper sees it: notes the first byte of each request for the
/// header deadline, and fails a write that makes no progress for
/// `write_timeout`, so a client that stops reading a large answer cannot
/// pin its buffers (and an fd) for ever.
struct GuardedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    write_timeout: Duration,
    /// Armed on the first `Pending` write, disarmed by any progress; boxed
    /// once per connection, on the first stall.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl GuardedIo {
    fn progress(&mut self) {
        if self.stalled {
            self.stalled = false;
            self.state.write_pending.store(false, Ordering::Relaxed);
        }
    }

    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let stall = if self.stalled {
            self.stall.as_mut()
        } else {
            self.stalled = true;
            self.state.write_pending.store(true, Ordering::Relaxed);
            let deadline = Instant::now() + self.write_timeout;
            match &mut self.stall {
                Some(s) => s.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.stall.as_mut()
        };
        match stall.map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for write_timeout",
            ))),
            _ => Poll::Pending,
        }
    }
}

use std::future::Future as _;

impl AsyncRead for GuardedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.state.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An answer's body: its drop (hyper drops it once written, or when the
/// connection ends) marks the request done and starts the idle timeout.
pub(crate) struct TrackedBody {
    inner: Body,
    state: Arc<ConnState>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.state.request_ended();
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one connection until the client closes it, a limit closes it, or
/// `stop` turns true (then the request in flight finishes and the
/// connection closes).
pub(crate) async fn serve(stream: TcpStream, app: App, lim: Limits, mut stop: watch::Receiver<bool>, _open: OpenGuard) {
    let state = Arc::new(ConnState::new());
    let io = GuardedIo {
        inner: stream,
        state: Arc::clone(&state),
        write_timeout: lim.write_timeout,
        stall: None,
        stalled: false,
    };
    let svc_state = Arc::clone(&state);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        svc_state.request_started();
        let state = Arc::clone(&svc_state);
        let answer = app.call(req.map(Body::new));
        async move {
            let res = answer.await;
            Ok::<_, Infallible>(res.map(|inner| TrackedBody { inner, state }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's header timer is off: the watchdog below runs it (module doc).
    builder.header_read_timeout(None).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // First look: see `ConnState::next_check` for why no later than this.
    let watchdog = tokio::time::sleep_until(state.epoch + lim.header_read_timeout.min(lim.idle_timeout));
    tokio::pin!(watchdog);
    let mut draining = *stop.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut watchdog => match state.next_check(&lim) {
                Some(at) => watchdog.as_mut().reset(at),
                // Dropping the connection closes the socket.
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let m = crate::metrics::Metrics::new();
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            cap: 2,
            open: Arc::new(AtomicUsize::new(0)),
            open_gauge: m.http_connections_open.clone(),
            rejected: m.http_connections_rejected.clone(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_phase() {
        let lim = limits();
        let s = ConnState::new();
        // New connection: header timeout from accept.
        assert_eq!(s.next_check(&lim), Some(s.epoch + lim.header_read_timeout));
        s.bytes_read();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(s.next_check(&lim), None, "headers incomplete after the header timeout");
        s.request_started();
        assert!(s.next_check(&lim).is_some(), "a request in flight is not timed out");
        s.request_ended();
        let idle_from = Instant::now();
        // Looks again within min(header, idle); at the end, the idle deadline.
        assert_eq!(s.next_check(&lim), Some(idle_from + lim.header_read_timeout));
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(s.next_check(&lim), Some(idle_from + lim.idle_timeout));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(s.next_check(&lim), None, "idle for idle_timeout");
        s.request_started();
        s.request_ended();
        tokio::time::advance(Duration::from_secs(30)).await;
        // The next request's first byte starts the header timeout.
        s.bytes_read();
        let first = Instant::now();
        assert_eq!(s.next_check(&lim), Some(first + lim.header_read_timeout));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(s.next_check(&lim), None);
    }

    #[test]
    fn the_cap_admits_up_to_its_size_and_counts_the_rest() {
        let lim = limits();
        let a = lim.admit().expect("first");
        let _b = lim.admit().expect("second");
        assert!(lim.admit().is_none());
        assert_eq!(lim.rejected.get(), 1);
        assert_eq!(lim.open_gauge.get(), 2);
        drop(a);
        assert_eq!(lim.open_gauge.get(), 1);
        assert!(lim.admit().is_some());
    }
}
