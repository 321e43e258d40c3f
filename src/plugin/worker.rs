//! A Lua state on its own OS thread.
//!
//! Each worker thread runs a single-threaded tokio runtime, so one state
//! interleaves many fetches that wait on HTTP (a waiting plugin blocks no
//! thread), while Lua itself stays on the thread that owns it. Keeping Lua
//! off the main runtime also contains the one thing hooks cannot stop: a C
//! function that runs for minutes wedges only this worker, which the pool
//! marks as wedged; the plugin is then quarantined until it is reloaded
//! (`Plugin::fetch`). The known routes (pattern matching, long table and
//! string loops) are bounded by the sandbox, so they time out in place and
//! the state serves on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::host::HostCtx;
use super::manifest::Manifest;
use super::output::RawOutput;
use super::state::{FetchArgs, LoadProblem, PluginState};
use crate::error::FetchError;

struct Job {
    args: FetchArgs,
    deadline: Instant,
    /// The plugin's configured timeout, for messages.
    limit: Duration,
    reply: oneshot::Sender<Result<RawOutput, FetchError>>,
    /// When the job was handed to the thread: a fetch that times out says
    /// whether it waited for the thread or ran long.
    queued: Instant,
}

pub struct Worker {
    tx: mpsc::UnboundedSender<Job>,
    inflight: Arc<AtomicUsize>,
    wedged: AtomicBool,
}

impl Worker {
    /// Starts the thread and loads the plugin in it; returns once the load
    /// has succeeded or failed.
    pub async fn start(
        source: Arc<str>,
        file: String,
        ctx: HostCtx,
        memory_limit: usize,
        index: usize,
    ) -> Result<(Arc<Worker>, Manifest), LoadProblem> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let name = format!("lua-{}-{index}", ctx.plugin);
        let file_for_err = file.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(LoadProblem {
                        file,
                        line: 1,
                        message: format!("cannot start a runtime for the plugin: {e}"),
                    }));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let state = match PluginState::load(&source, &file, &ctx, memory_limit) {
                    Ok((state, manifest)) => {
                        let _ = ready_tx.send(Ok(manifest));
                        std::rc::Rc::new(state)
                    }
                    Err(p) => {
                        let _ = ready_tx.send(Err(p));
                        return;
                    }
                };
                let mut tasks = tokio::task::JoinSet::new();
                while let Some(job) = rx.recv().await {
                    let st = std::rc::Rc::clone(&state);
                    tasks.spawn_local(async move {
                        let began = Instant::now();
                        let res = st.fetch(&job.args, job.deadline, job.limit).await;
                        log_timing(&job, began, &res);
                        let _ = job.reply.send(res);
                    });
                    while tasks.try_join_next().is_some() {}
                }
                // The pool dropped us (reload or shutdown): let in-flight
                // fetches finish on this version before the state goes away.
                while tasks.join_next().await.is_some() {}
            });
        });
        if let Err(e) = spawned {
            return Err(LoadProblem {
                file: file_for_err,
                line: 1,
                message: format!("cannot start a thread for the plugin: {e}"),
            });
        }
        let manifest = match ready_rx.await {
            Ok(r) => r?,
            Err(_) => {
                return Err(LoadProblem {
                    file: file_for_err,
                    line: 1,
                    message: "the plugin thread stopped while loading".into(),
                });
            }
        };
        Ok((
            Arc::new(Worker {
                tx,
                inflight: Arc::new(AtomicUsize::new(0)),
                wedged: AtomicBool::new(false),
            }),
            manifest,
        ))
    }

    /// A worker whose thread never answers, as if stuck inside a C call.
    #[cfg(test)]
    pub(super) fn stalled() -> Arc<Worker> {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        // Never read and never dropped: jobs are accepted and never answered.
        std::mem::forget(rx);
        Arc::new(Worker {
            tx,
            inflight: Arc::new(AtomicUsize::new(0)),
            wedged: AtomicBool::new(false),
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn is_wedged(&self) -> bool {
        self.wedged.load(Ordering::Relaxed)
    }

    pub fn mark_wedged(&self) {
        self.wedged.store(true, Ordering::Relaxed);
    }

    /// Hands a fetch to the thread. The returned receiver yields the result,
    /// or is closed if the thread is gone.
    pub fn submit(
        &self,
        args: FetchArgs,
        deadline: Instant,
        limit: Duration,
    ) -> (oneshot::Receiver<Result<RawOutput, FetchError>>, InflightGuard) {
        let (reply, rx) = oneshot::channel();
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let guard = InflightGuard(Arc::clone(&self.inflight));
        // A send error means the thread is gone; the caller sees a closed receiver.
        let _ = self.tx.send(Job {
            args,
            deadline,
            limit,
            reply,
            queued: Instant::now(),
        });
        (rx, guard)
    }
}

/// How long a job waited for its Lua thread and ran there. A timed-out
/// fetch, or one that waited long for the thread, is logged at warn with
/// both, so a stalled thread (the fetch never started) is told apart from
/// plugin code that ran long; every job is logged at debug.
fn log_timing(job: &Job, began: Instant, res: &Result<RawOutput, FetchError>) {
    let queued_ms = began.duration_since(job.queued).as_millis() as u64;
    let ran_ms = began.elapsed().as_millis() as u64;
    let timed_out = matches!(res, Err(FetchError::PluginTimeout(_)));
    if timed_out || queued_ms >= SLOW_START_MS {
        tracing::warn!(
            ticker = %job.args.ticker, queued_ms, ran_ms, timed_out,
            "a plugin fetch waited for its Lua thread or ran long (queued_ms: handed over until the thread started it; ran_ms: Lua and host calls)"
        );
    } else {
        tracing::debug!(ticker = %job.args.ticker, queued_ms, ran_ms, "lua fetch");
    }
}

/// A fetch that waits this long for its Lua thread to start it is logged.
const SLOW_START_MS: u64 = 1000;

/// Decrements the worker's in-flight count when the caller stops waiting.
pub struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
