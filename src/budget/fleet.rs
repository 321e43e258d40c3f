//! The budget's Redis side: the `tickerd_budget` Function library
//! (`budget.lua`), loaded with `FUNCTION LOAD REPLACE` before first use and
//! again when Redis answers "Function not found" (a restarted server without
//! persistence), and called with `FCALL`: one round trip per admission.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;

use super::window::Decision;
use crate::cache::{RedisStore, StoreError};

const LIBRARY: &str = include_str!("budget.lua");

pub(crate) struct Fleet {
    redis: Arc<RedisStore>,
    prefix: String,
    loaded: AtomicBool,
    /// The server has no Functions (Redis < 7): the budget is per daemon.
    unsupported: AtomicBool,
}

/// Why the fleet could not be asked; the caller falls back to its own window.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum FleetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis answered {0}")]
    Answer(String),
    #[error("this redis has no Functions (FCALL needs Redis 7 or later); budgets are kept per daemon")]
    Unsupported,
}

impl Fleet {
    pub(crate) fn new(redis: Arc<RedisStore>, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            loaded: AtomicBool::new(false),
            unsupported: AtomicBool::new(false),
        }
    }

    /// Loads (or replaces) the library. Called lazily; cheap to repeat.
    pub(crate) async fn load(&self) -> Result<(), FleetError> {
        let res = self
            .redis
            .call("FUNCTION LOAD", |mut c| {
                async move {
                    redis::cmd("FUNCTION")
                        .arg("LOAD")
                        .arg("REPLACE")
                        .arg(LIBRARY)
                        .query_async::<String>(&mut c)
                        .await
                }
                .boxed()
            })
            .await;
        match res {
            Ok(_) => {
                self.loaded.store(true, Ordering::Release);
                Ok(())
            }
            Err(StoreError::Redis { message, .. }) if is_unknown_command(&message) => {
                self.unsupported.store(true, Ordering::Release);
                Err(FleetError::Unsupported)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn fcall(&self, func: &'static str, plugin: &str, args: Vec<String>) -> Result<redis::Value, FleetError> {
        if self.unsupported.load(Ordering::Acquire) {
            return Err(FleetError::Unsupported);
        }
        if !self.loaded.load(Ordering::Acquire) {
            self.load().await?;
        }
        let keys = keys(&self.prefix, plugin);
        for attempt in 0..2 {
            let (k, a) = (keys.clone(), args.clone());
            let res = self
                .redis
                .call("FCALL", move |mut c| {
                    async move {
                        redis::cmd("FCALL")
                            .arg(func)
                            .arg(k.len())
                            .arg(&k)
                            .arg(&a)
                            .query_async::<redis::Value>(&mut c)
                            .await
                    }
                    .boxed()
                })
                .await;
            match res {
                Err(StoreError::Redis { message, .. }) if attempt == 0 && message.contains("Function not found") => {
                    self.loaded.store(false, Ordering::Release);
                    self.load().await?;
                }
                other => return other.map_err(Into::into),
            }
        }
        Err(FleetError::Answer("Function not found after loading it".into()))
    }

    /// One admission (see `budget.lua`).
    pub(crate) async fn admit(
        &self,
        plugin: &str,
        member: String,
        windows: &[(u64, u64)],
        max_wait: Duration,
    ) -> Result<Decision, FleetError> {
        let longest = windows.iter().map(|w| w.1).max().unwrap_or(0);
        let mut args = vec![member, (max_wait.as_millis() as u64).to_string(), longest.to_string()];
        for (max, win) in windows {
            args.push(max.to_string());
            args.push(win.to_string());
        }
        let v = self.fcall("tickerd_admit", plugin, args).await?;
        let (code, ms) = pair(&v)?;
        let d = Duration::from_millis(ms);
        match code {
            0 => Ok(Decision::Go(d)),
            1 => Ok(Decision::Budget(d)),
            2 => Ok(Decision::Cooldown(d)),
            _ => Err(FleetError::Answer(format!("an unknown admission code {code}"))),
        }
    }

    /// Starts a cool-down of `d` unless a longer one runs. Returns whether
    /// this call started it and how long it lasts from now.
    pub(crate) async fn cool_down(&self, plugin: &str, d: Duration) -> Result<(bool, Duration), FleetError> {
        let ms = (d.as_millis() as u64).max(1);
        let v = self.fcall("tickerd_cool_down", plugin, vec![ms.to_string()]).await?;
        let (started, left) = pair(&v)?;
        Ok((started == 1, Duration::from_millis(left)))
    }

    pub(crate) async fn cooldown_left(&self, plugin: &str) -> Result<Duration, FleetError> {
        match self.fcall("tickerd_cooldown_left", plugin, Vec::new()).await? {
            redis::Value::Int(ms) if ms >= 0 => Ok(Duration::from_millis(ms as u64)),
            other => Err(FleetError::Answer(format!("{other:?} for the cool-down left"))),
        }
    }
}

/// `[cooldown key, starts key]` of one plugin, in one cluster slot.
fn keys(prefix: &str, plugin: &str) -> Vec<String> {
    vec![
        format!("{prefix}:budget:{{{plugin}}}:cooldown"),
        format!("{prefix}:budget:{{{plugin}}}:starts"),
    ]
}

/// `{int, int}` with both >= 0, as every budget function answers.
fn pair(v: &redis::Value) -> Result<(i64, u64), FleetError> {
    match v {
        redis::Value::Array(items) => match items.as_slice() {
            [redis::Value::Int(a), redis::Value::Int(b)] if *b >= 0 => Ok((*a, *b as u64)),
            _ => Err(FleetError::Answer(format!("{v:?} instead of two counts"))),
        },
        other => Err(FleetError::Answer(format!("{other:?} instead of two counts"))),
    }
}

fn is_unknown_command(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("unknown command") || m.contains("unknown subcommand")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_well_formed_answers() {
        use redis::Value::{Array, Int, Nil};
        assert_eq!(pair(&Array(vec![Int(0), Int(250)])).unwrap(), (0, 250));
        assert!(pair(&Array(vec![Int(0), Int(-1)])).is_err());
        assert!(pair(&Array(vec![Int(0)])).is_err());
        assert!(pair(&Nil).is_err());
        assert!(is_unknown_command(
            "ERR unknown command 'FCALL', with args beginning with:"
        ));
    }

    #[test]
    fn one_plugins_keys_share_a_hash_tag() {
        assert_eq!(
            keys("tickerd", "yahoo"),
            ["tickerd:budget:{yahoo}:cooldown", "tickerd:budget:{yahoo}:starts"]
        );
    }
}
