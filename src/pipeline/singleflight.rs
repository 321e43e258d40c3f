//! Concurrent misses on one key share one fetch (within this process).
//!
//! The fetch runs in its own task, so a client that disconnects does not
//! cancel it for the others waiting, and the entry leaves the map as soon as
//! the result exists (it has been written to the cache by then).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

pub struct SingleFlight<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V> Default for SingleFlight<K, V>
where
    V: Clone,
{
    fn default() -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
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
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F, on_panic: fn(String) -> V) -> (V, Role)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (fut, role) = {
            let mut map = match self.inflight.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(f) = map.get(&key) {
                (f.clone(), Role::Follower)
            } else {
                let map_ref = Arc::clone(&self.inflight);
                let k = key.clone();
                let work = make();
                let handle = tokio::spawn(async move {
                    let v = work.await;
                    if let Ok(mut m) = map_ref.lock() {
                        m.remove(&k);
                    }
                    v
                });
                let map_ref = Arc::clone(&self.inflight);
                let k = key.clone();
                let shared = async move {
                    match handle.await {
                        Ok(v) => v,
                        Err(e) => {
                            if let Ok(mut m) = map_ref.lock() {
                                m.remove(&k);
                            }
                            on_panic(e.to_string())
                        }
                    }
                }
                .boxed()
                .shared();
                map.insert(key, shared.clone());
                (shared, Role::Leader)
            }
        };
        (fut.await, role)
    }

    pub fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
}
