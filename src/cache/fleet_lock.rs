//! Single-flight across daemons sharing one Redis.
//!
//! The process that misses first takes a short lock (`SET lock token NX PX`)
//! whose TTL follows the plugin timeout, so a daemon that dies holding it
//! delays the others by at most that TTL. The others poll for the value, or
//! for an error marker the holder leaves when its fetch fails (so the error
//! reaches every waiter instead of each retrying the source), or for the
//! lock to disappear, in which case they take it and fetch themselves.
//! Release is compare-and-delete by token, in a script, so a holder whose
//! lock expired never deletes a successor's lock.

use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::Rng;

use super::{Cache, CacheKey, Envelope, Found, Layer, StoreError};
use crate::error::FetchError;
use crate::model::DateRange;

const RELEASE: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// How long waiters poll between looks at the key.
const POLL: Duration = Duration::from_millis(15);

#[derive(Clone)]
pub struct LockGuard {
    lock_key: String,
    token: String,
}

/// What a waiter found while another daemon held the lock.
pub enum Waited {
    /// The holder's value landed.
    Value(Found),
    /// The holder's fetch failed with this error.
    Failed(FetchError),
    /// The lock is free (released or expired): fetch yourself.
    Free,
}

impl Cache {
    /// Tries to take the fleet lock for `key`. `Ok(None)`: someone else holds
    /// it. `Err`: Redis cannot be asked, go ahead without a lock.
    pub async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<LockGuard>, StoreError> {
        let lock_key = self.keys().lock(key);
        let token = format!("{:032x}", rand::rng().random::<u128>());
        let (lk, tk, ek) = (lock_key.clone(), token.clone(), self.keys().error(key));
        // One round trip: take the lock and clear an earlier holder's failure
        // marker so it cannot reach the waiters of this fetch. (If the lock is
        // not ours the marker is either not written yet or about to be
        // superseded by the next holder.)
        let (got,): (Option<String>,) = self
            .redis()
            .call("SET NX", move |mut c| {
                async move {
                    redis::pipe()
                        .cmd("SET")
                        .arg(&lk)
                        .arg(&tk)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .cmd("DEL")
                        .arg(&ek)
                        .ignore()
                        .query_async(&mut c)
                        .await
                }
                .boxed()
            })
            .await?;
        if got.is_none() {
            return Ok(None);
        }
        Ok(Some(LockGuard { lock_key, token }))
    }

    /// Appends the compare-and-delete release to a pipeline, so the cache
    /// write and the unlock share one round trip.
    pub fn release_in(pipe: &mut redis::Pipeline, guard: &LockGuard) {
        pipe.cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&guard.lock_key)
            .arg(&guard.token)
            .ignore();
    }

    pub async fn unlock(&self, guard: LockGuard) {
        let res = self
            .redis()
            .call("EVAL", move |mut c| {
                async move {
                    redis::Script::new(RELEASE)
                        .key(&guard.lock_key)
                        .arg(&guard.token)
                        .invoke_async::<i64>(&mut c)
                        .await
                }
                .boxed()
            })
            .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "could not release the fleet lock; it expires by itself");
        }
    }

    /// Leaves the failure where waiting daemons will see it, briefly.
    pub async fn publish_failure(&self, key: &CacheKey, err: &FetchError, life: Duration) {
        let Ok(bytes) = serde_json::to_vec(err) else { return };
        let k = self.keys().error(key);
        let _ = self
            .redis()
            .call("SET", move |mut c| {
                async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(bytes)
                        .arg("PX")
                        .arg(life.as_millis().max(1) as u64)
                        .query_async::<()>(&mut c)
                        .await
                }
                .boxed()
            })
            .await;
    }

    /// Waits (at most `limit`) while another daemon fetches `key`. Only
    /// values stored at or after `since_ms` count, so a `refresh` does not
    /// take the entry it is replacing.
    pub async fn wait_for_holder(&self, key: &CacheKey, range: &DateRange, since_ms: u64, limit: Duration) -> Waited {
        let deadline = Instant::now() + limit;
        let lock_key = self.keys().lock(key);
        let err_key = self.keys().error(key);
        loop {
            let (k, lk, ek) = (key.as_str().to_owned(), lock_key.clone(), err_key.clone());
            let res = self
                .redis()
                .call("GET", move |mut c| {
                    async move {
                        redis::pipe()
                            .cmd("GET")
                            .arg(&k)
                            .cmd("GET")
                            .arg(&ek)
                            .cmd("EXISTS")
                            .arg(&lk)
                            .query_async::<(Option<Vec<u8>>, Option<Vec<u8>>, bool)>(&mut c)
                            .await
                    }
                    .boxed()
                })
                .await;
            let Ok((value, error, locked)) = res else {
                return Waited::Free;
            };
            if let Some(bytes) = value
                && let Ok(env) = Envelope::decode(&bytes, range)
                && env.stored_at_ms >= since_ms
            {
                return Waited::Value(Found {
                    env: std::sync::Arc::new(env),
                    layer: Layer::Redis,
                });
            }
            if let Some(bytes) = error
                && let Ok(err) = serde_json::from_slice::<FetchError>(&bytes)
            {
                return Waited::Failed(err);
            }
            if !locked || Instant::now() >= deadline {
                return Waited::Free;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
