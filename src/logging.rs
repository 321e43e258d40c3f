//! Log output: human-readable text by default, JSON lines with
//! `TICKERD_LOG_FORMAT=json`; the filter comes from `TICKERD_LOG`.
//!
//! Lines are handed to a background thread that writes them in batches, so a
//! request never waits on the write(2) of its access-log line. Under extreme load
//! the buffer (128k lines) may drop lines rather than slow requests down.
//!
//! Access-log lines take one more step: they gather in one shared batch that
//! a flusher thread hands to that writer every [`ACCESS_FLUSH`] (at most one
//! wake-up per interval, none while idle). Sent one by one, each line woke
//! the writer thread: on the 2-core benchmark machine the access log cost a
//! fifth of the hit path's throughput.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the log writers alive; dropped at exit, it writes what is still
/// buffered (access-log batch first, then the writer thread's queue).
pub(crate) struct LogGuard {
    _access: Option<AccessFlusher>,
    _writer: WorkerGuard,
}

/// Installs the subscriber. Keep the returned guard alive until exit: it
/// flushes buffered lines when dropped.
pub(crate) fn init(filter: &str, format: LogFormat) -> Result<Option<LogGuard>, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        format!("TICKERD_LOG: {filter:?} is not a log filter ({e}); use e.g. info, debug, or tickerd=debug,info")
    })?;
    // The writer thread drains every queued line into this buffer and then
    // flushes once, so a busy daemon makes one write(2) per batch of lines
    // instead of one per request; a quiet one still writes each line at once.
    let sink = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(sink);
    let batch = Arc::new(AccessBatch::default());
    let access = ACCESS
        .set(AccessSink {
            batch: Arc::clone(&batch),
            format,
        })
        .is_ok()
        .then(|| AccessFlusher::start(batch, writer.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A second init (tests, repeated CLI use) keeps the first subscriber.
    Ok(res.is_ok().then_some(LogGuard {
        _access: access,
        _writer: guard,
    }))
}

/// How long an access-log line may wait in its batch.
const ACCESS_FLUSH: Duration = Duration::from_millis(50);
/// A batch this large drops further lines (counted, and said in the log)
/// until the flusher has taken it: a stalled stderr never grows the daemon.
const ACCESS_BATCH_MAX: usize = 8 << 20;

#[derive(Default)]
struct AccessBatch {
    state: Mutex<BatchState>,
    ready: Condvar,
}

#[derive(Default)]
struct BatchState {
    lines: Vec<u8>,
    dropped: u64,
    stop: bool,
}

impl AccessBatch {
    fn push(&self, line: &[u8]) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.lines.len() + line.len() > ACCESS_BATCH_MAX {
            s.dropped += 1;
            return;
        }
        let first = s.lines.is_empty();
        s.lines.extend_from_slice(line);
        drop(s);
        if first {
            self.ready.notify_one();
        }
    }

    /// Waits for a line, lets the interval pass, and takes the batch;
    /// `None` once stopped with nothing left.
    fn take(&self) -> Option<(Vec<u8>, u64)> {
        let mut s = self.state.lock().ok()?;
        while s.lines.is_empty() && s.dropped == 0 && !s.stop {
            s = self.ready.wait(s).ok()?;
        }
        if !s.stop {
            s = self.ready.wait_timeout_while(s, ACCESS_FLUSH, |s| !s.stop).ok()?.0;
        }
        if s.stop && s.lines.is_empty() && s.dropped == 0 {
            return None;
        }
        let lines = std::mem::replace(&mut s.lines, Vec::with_capacity(64 * 1024));
        Some((lines, std::mem::take(&mut s.dropped)))
    }
}

/// The thread that hands access-log batches to the log writer; stopping it
/// (on drop) writes the last batch.
struct AccessFlusher {
    batch: Arc<AccessBatch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AccessFlusher {
    fn start(batch: Arc<AccessBatch>, mut writer: NonBlocking) -> Self {
        let b = Arc::clone(&batch);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Some((lines, dropped)) = b.take() {
                    let _ = writer.write_all(&lines);
                    if dropped > 0 {
                        let _ = writeln!(
                            writer,
                            "{}  WARN tickerd::access: {dropped} access-log lines dropped: the log output (stderr) did not keep up",
                            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                        );
                    }
                }
            })
            .ok();
        Self { batch, thread }
    }
}

impl Drop for AccessFlusher {
    fn drop(&mut self) {
        if let Ok(mut s) = self.batch.state.lock() {
            s.stop = true;
        }
        self.batch.ready.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The access log's own sink: the same background writer and format as the
/// rest of the log, but lines are composed directly instead of through the
/// generic field formatter, which cost a third of the hit path's throughput,
/// and batched (see the module comment).
struct AccessSink {
    batch: Arc<AccessBatch>,
    format: LogFormat,
}

static ACCESS: OnceLock<AccessSink> = OnceLock::new();

/// One finished request, as the access log records it.
pub(crate) struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub plugin: &'a str,
    pub ticker: &'a str,
    pub cache: &'a str,
    pub status: u16,
    pub duration_ms: f64,
}

/// Writes one access-log line if `tickerd::access` is enabled at info.
pub(crate) fn access(line: &AccessLine<'_>) {
    if !tracing::enabled!(target: "tickerd::access", tracing::Level::INFO) {
        return;
    }
    let Some(AccessSink { batch, format }) = ACCESS.get() else {
        tracing::info!(target: "tickerd::access", path = line.path, status = line.status, "request");
        return;
    };
    let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let text = match format {
        LogFormat::Json => {
            let esc = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
            format!(
                "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":{},\"method\":{},\"path\":{},\"plugin\":{},\"ticker\":{},\"cache\":{},\"status\":{},\"duration_ms\":{:.3},\"target\":\"tickerd::access\"}}\n",
                esc(line.request_id),
                esc(line.method),
                esc(line.path),
                esc(line.plugin),
                esc(line.ticker),
                esc(line.cache),
                line.status,
                line.duration_ms
            )
        }
        LogFormat::Text => format!(
            "{ts}  INFO tickerd::access: request request_id={} method={} path={} plugin={} ticker={} cache={} status={} duration_ms={:.3}\n",
            line.request_id,
            line.method,
            line.path,
            line.plugin,
            line.ticker,
            line.cache,
            line.status,
            line.duration_ms
        ),
    };
    batch.push(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gathers_lines_and_counts_what_it_had_to_drop() {
        let b = AccessBatch::default();
        b.push(b"one\n");
        b.push(b"two\n");
        let (lines, dropped) = b.take().expect("a batch");
        assert_eq!(lines, b"one\ntwo\n");
        assert_eq!(dropped, 0);

        let big = vec![b'x'; ACCESS_BATCH_MAX - 10];
        b.push(&big);
        b.push(b"this line does not fit\n");
        b.push(b"short\n");
        let (lines, dropped) = b.take().expect("a batch");
        assert_eq!(lines.len(), ACCESS_BATCH_MAX - 10 + 6, "the line that fits is kept");
        assert_eq!(dropped, 1);
    }

    #[test]
    fn stopping_hands_over_the_last_lines_then_ends() {
        let b = Arc::new(AccessBatch::default());
        b.push(b"last\n");
        b.state.lock().unwrap().stop = true;
        assert_eq!(b.take().map(|(l, _)| l), Some(b"last\n".to_vec()));
        assert!(b.take().is_none(), "a stopped, empty batch ends the flusher");
    }
}
