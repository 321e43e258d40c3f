//! Concurrent misses on one key share one fetch (within this process).
//!
//! The fetch runs in its own task, so a client that disconnects does not
//! cancel it for the others waiting, and the entry leaves the map as soon as
//! the result exists (it has been written to the cache by then).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

struct Flight<V: Clone> {
    fut: Shared<BoxFuture<'static, V>>,
    /// Whether [`SingleFlight::join`] may hand this call to callers that
    /// have not looked anything up yet.
    joinable: bool,
}

pub struct SingleFlight<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
    /// Entries in `inflight`, so `join` skips the lock when nothing runs.
    running: Arc<AtomicUsize>,
}

impl<K, V> Default for SingleFlight<K, V>
where
    V: Clone,
{
    fn default() -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Whether this caller started the fetch or joined one already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `make()` unless a call for `key` is already running, in which case
    /// it waits for that one. `on_panic` supplies the value if the task dies.
    /// A `joinable` call is also handed to [`SingleFlight::join`].
    pub async fn run<F>(&self, key: K, joinable: bool, make: impl FnOnce() -> F, on_panic: fn(String) -> V) -> (V, Role)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (fut, role) = {
            let mut map = match self.inflight.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(f) = map.get(&key) {
                (f.fut.clone(), Role::Follower)
            } else {
                let (map_ref, running) = (Arc::clone(&self.inflight), Arc::clone(&self.running));
                let k = key.clone();
                let work = make();
                let handle = tokio::spawn(async move {
                    let v = work.await;
                    remove(&map_ref, &running, &k);
                    v
                });
                let (map_ref, running) = (Arc::clone(&self.inflight), Arc::clone(&self.running));
                let k = key.clone();
                let shared = async move {
                    match handle.await {
                        Ok(v) => v,
                        Err(e) => {
                            remove(&map_ref, &running, &k);
                            on_panic(e.to_string())
                        }
                    }
                }
                .boxed()
                .shared();
                map.insert(
                    key,
                    Flight {
                        fut: shared.clone(),
                        joinable,
                    },
                );
                self.running.fetch_add(1, Ordering::AcqRel);
                (shared, Role::Leader)
            }
        };
        (fut.await, role)
    }

    /// Waits for the running joinable call for `key`, if there is one;
    /// `None` (at once, starting nothing) otherwise.
    pub async fn join(&self, key: &K) -> Option<V> {
        if self.running.load(Ordering::Acquire) == 0 {
            return None;
        }
        let fut = {
            let map = match self.inflight.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            map.get(key).filter(|f| f.joinable).map(|f| f.fut.clone())
        }?;
        Some(fut.await)
    }

    pub fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove<K: Eq + Hash, V: Clone>(map: &Mutex<HashMap<K, Flight<V>>>, running: &AtomicUsize, key: &K) {
    if let Ok(mut m) = map.lock()
        && m.remove(key).is_some()
    {
        running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_call() {
        let sf: Arc<SingleFlight<&'static str, u32>> = Arc::new(SingleFlight::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let sf = Arc::clone(&sf);
            let calls = Arc::clone(&calls);
            tasks.push(tokio::spawn(async move {
                sf.run(
                    "k",
                    true,
                    move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        7
                    },
                    |_| 0,
                )
                .await
            }));
        }
        let mut leaders = 0;
        for t in tasks {
            let (v, role) = t.await.unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(sf.is_empty());
    }

    #[tokio::test]
    async fn join_waits_only_for_joinable_calls() {
        let sf: Arc<SingleFlight<&'static str, u32>> = Arc::new(SingleFlight::default());
        assert_eq!(sf.join(&"k").await, None, "nothing running");
        for (joinable, expect) in [(false, None), (true, Some(9))] {
            let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
            let runner = {
                let sf = Arc::clone(&sf);
                tokio::spawn(async move {
                    sf.run(
                        "k",
                        joinable,
                        move || async move {
                            let _ = gate_rx.await;
                            9
                        },
                        |_| 0,
                    )
                    .await
                })
            };
            while sf.is_empty() {
                tokio::task::yield_now().await;
            }
            // One poll tells: a joinable call is still running (pending, and
            // the joiner now holds it), a refresh-style call is not handed
            // out at all (ready, `None`).
            let mut joined = Box::pin(sf.join(&"k"));
            let first = futures::poll!(joined.as_mut());
            assert_eq!(first.is_pending(), joinable);
            let _ = gate_tx.send(());
            let got = match first {
                std::task::Poll::Ready(v) => v,
                std::task::Poll::Pending => joined.await,
            };
            assert_eq!(got, expect);
            assert_eq!(runner.await.unwrap(), (9, Role::Leader));
            assert!(sf.is_empty());
        }
    }
}
