//! Upstream budgets (README "Rate limits"): every plugin call waits for a turn of the
//! plugin's `rate_limit`, counted across every daemon sharing the Redis, and
//! an upstream refusal cools the plugin down fleet-wide.
//!
//! Layering: below the pipeline (which calls [`Budget::fetch`] at its one
//! plugin call site), above `plugin` and `cache` (whose Redis connection it
//! uses). A budget call that fails on Redis falls back to this daemon's own
//! window ([`window::LocalWindow`]); it never fails the request.

mod fleet;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::cache::RedisStore;
use crate::error::FetchError;
use crate::metrics::Metrics;
use crate::plugin::{Plugin, RawOutput, Settings};
use fleet::Fleet;
use window::{Decision, LocalWindow, local_now_ms, windows};

/// Cool-down when the upstream gave no (readable) `Retry-After`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// Longest cool-down honoured: a `Retry-After` of a day is more likely a
/// misconfigured proxy than a plan, and an hour is long enough to notice.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);
/// How long a plugin without a `rate_limit` trusts its last look at the
/// fleet's cool-down before asking Redis again (so such plugins, the
/// offline `synthetic` among them, pay no Redis round trip per call).
const UNLIMITED_RECHECK_MS: u64 = 250;

/// The budget of every plugin of one daemon.
pub struct Budget {
    fleet: Fleet,
    metrics: Arc<Metrics>,
    /// Tells this daemon's admissions apart from other daemons' in Redis.
    member_base: String,
    seq: AtomicU64,
    plugins: Mutex<HashMap<String, Arc<PluginBudget>>>,
    fallback_warned: AtomicBool,
}

/// One plugin's state in this daemon.
#[derive(Default)]
struct PluginBudget {
    /// The window used while Redis cannot be asked; its cool-down is also
    /// this daemon's knowledge of the fleet's.
    local: Mutex<LocalWindow>,
    /// Calls sleeping until their turn.
    waiting: AtomicUsize,
    /// When (local ms) a plugin without a rate_limit last asked the fleet.
    checked_at: AtomicU64,
    /// A task waits to log the end of the cool-down.
    end_watch: AtomicBool,
}

impl Budget {
    pub fn new(redis: Arc<RedisStore>, key_prefix: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            fleet: Fleet::new(redis, key_prefix),
            metrics,
            member_base: format!("{:016x}", rand::rng().random::<u64>()),
            seq: AtomicU64::new(0),
            plugins: Mutex::new(HashMap::new()),
            fallback_warned: AtomicBool::new(false),
        }
    }

    fn state(&self, plugin: &str) -> Arc<PluginBudget> {
        let Ok(mut map) = self.plugins.lock() else {
            return Arc::new(PluginBudget::default());
        };
        Arc::clone(map.entry(plugin.to_owned()).or_default())
    }

    /// Loads the Redis Function library (at start; also done lazily).
    pub async fn load(&self) {
        if let Err(e) = self.fleet.load().await {
            tracing::debug!(error = %e, "budget functions not loaded yet; they load on first use");
        }
    }

    /// Calls this daemon has waiting for a turn of `plugin`'s budget now.
    pub fn waiting(&self, plugin: &str) -> usize {
        self.state(plugin).waiting.load(Ordering::Relaxed)
    }

    /// Turns an upstream refusal in a plugin's result into a fleet-wide
    /// cool-down and a 429 (`RateLimited`); anything else passes through.
    pub async fn settle(&self, plugin: &Plugin, out: Result<RawOutput, FetchError>) -> Result<RawOutput, FetchError> {
        match out {
            Err(FetchError::UpstreamRefused { message, retry_after }) => {
                Err(self.refused(plugin.name.as_str(), retry_after, &message).await)
            }
            other => other,
        }
    }

    /// Waits for a turn of `plugin`'s budget, at most `max_wait`.
    pub async fn admit(&self, plugin: &str, s: &Settings) -> Result<(), FetchError> {
        let st = self.state(plugin);
        let wins = windows(&s.rate_limit);
        let decision = if wins.is_empty()
            && local_now_ms().saturating_sub(st.checked_at.load(Ordering::Relaxed)) < UNLIMITED_RECHECK_MS
        {
            self.local_cooldown(&st)
        } else {
            let member = format!("{}-{}", self.member_base, self.seq.fetch_add(1, Ordering::Relaxed));
            match self.fleet.admit(plugin, member, &wins, s.max_wait).await {
                Ok(d) => {
                    if wins.is_empty() {
                        st.checked_at.store(local_now_ms(), Ordering::Relaxed);
                    }
                    d
                }
                Err(e) => {
                    self.warn_fallback(plugin, &e);
                    let now = local_now_ms();
                    match st.local.lock() {
                        Ok(mut w) => w.admit(now, &wins, s.max_wait),
                        Err(_) => Decision::Go(Duration::ZERO),
                    }
                }
            }
        };
        match decision {
            Decision::Go(wait) => {
                if !wait.is_zero() {
                    st.waiting.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    st.waiting.fetch_sub(1, Ordering::Relaxed);
                    // A cool-down may have begun while this call slept.
                    let left = match self.fleet.cooldown_left(plugin).await {
                        Ok(left) => left,
                        Err(_) => st
                            .local
                            .lock()
                            .map(|w| w.cooldown_left(local_now_ms()))
                            .unwrap_or_default(),
                    };
                    if !left.is_zero() {
                        return Err(self.cooling(plugin, &st, left));
                    }
                }
                if !wins.is_empty() {
                    self.metrics.upstream_wait(plugin).observe(wait.as_secs_f64());
                }
                Ok(())
            }
            Decision::Budget(next) => {
                self.metrics.rate_limited(plugin, "budget");
                Err(FetchError::RateLimited {
                    message: format!(
                        "plugin {plugin}: no turn of its rate limit ({}) within max_wait {}; the next one is in {}",
                        s.rate_limit,
                        humantime::format_duration(round_ms(s.max_wait)),
                        humantime::format_duration(round_ms(next)),
                    ),
                    retry_after_s: whole_secs(next),
                })
            }
            Decision::Cooldown(left) => Err(self.cooling(plugin, &st, left)),
        }
    }

    fn local_cooldown(&self, st: &PluginBudget) -> Decision {
        let left = st
            .local
            .lock()
            .map(|w| w.cooldown_left(local_now_ms()))
            .unwrap_or_default();
        if left.is_zero() {
            Decision::Go(Duration::ZERO)
        } else {
            Decision::Cooldown(left)
        }
    }

    /// The answer to a call refused because the plugin cools down.
    fn cooling(&self, plugin: &str, st: &Arc<PluginBudget>, left: Duration) -> FetchError {
        self.metrics.rate_limited(plugin, "cooldown");
        self.learn_cooldown(plugin, st, left, false);
        FetchError::RateLimited {
            message: format!(
                "plugin {plugin} is cooling down after the upstream refused a call; calls resume in {}",
                humantime::format_duration(Duration::from_secs(whole_secs(left)))
            ),
            retry_after_s: whole_secs(left),
        }
    }

    /// The upstream refused a call: cool the plugin down fleet-wide.
    async fn refused(&self, plugin: &str, retry_after: Option<Duration>, message: &str) -> FetchError {
        self.metrics.rate_limited(plugin, "upstream");
        let asked = retry_after
            .unwrap_or(DEFAULT_COOLDOWN)
            .clamp(Duration::from_secs(1), MAX_COOLDOWN);
        let st = self.state(plugin);
        let (started, left) = match self.fleet.cool_down(plugin, asked).await {
            Ok(r) => r,
            Err(e) => {
                self.warn_fallback(plugin, &e);
                let now = local_now_ms();
                match st.local.lock() {
                    Ok(mut w) => {
                        let started = w.cool_down(now, asked.as_millis() as u64);
                        (started, w.cooldown_left(now))
                    }
                    Err(_) => (false, asked),
                }
            }
        };
        if started {
            tracing::warn!(
                plugin, cooldown_s = whole_secs(left), until = %until(left), error = %message,
                "upstream refused a call (rate limit): plugin cools down fleet-wide; requests get cached data or 429 with Retry-After until then. If this repeats, lower its rate_limit"
            );
        }
        self.learn_cooldown(plugin, &st, left, started);
        FetchError::RateLimited {
            message: format!(
                "{message}; plugin {plugin} cools down for {}",
                humantime::format_duration(Duration::from_secs(whole_secs(left)))
            ),
            retry_after_s: whole_secs(left),
        }
    }

    /// Remembers a cool-down of the fleet (gauge, local knowledge) and logs
    /// its end once it is over.
    fn learn_cooldown(&self, plugin: &str, st: &Arc<PluginBudget>, left: Duration, started_here: bool) {
        let now = local_now_ms();
        let fresh = st
            .local
            .lock()
            .map(|mut w| w.cool_down(now, left.as_millis() as u64))
            .unwrap_or(false);
        self.metrics.set_cooldown_until(plugin, Some(Instant::now() + left));
        if fresh && !started_here {
            tracing::info!(
                plugin, cooldown_s = whole_secs(left), until = %until(left),
                "plugin is cooling down (started by another daemon after an upstream refusal); requests get cached data or 429 until then"
            );
        }
        if st.end_watch.swap(true, Ordering::AcqRel) {
            return;
        }
        let (st, metrics, name) = (Arc::clone(st), Arc::clone(&self.metrics), plugin.to_owned());
        tokio::spawn(async move {
            let began = Instant::now();
            loop {
                let left = st
                    .local
                    .lock()
                    .map(|w| w.cooldown_left(local_now_ms()))
                    .unwrap_or_default();
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left).await;
            }
            st.end_watch.store(false, Ordering::Release);
            metrics.set_cooldown_until(&name, None);
            tracing::info!(
                plugin = %name, lasted_s = began.elapsed().as_secs(),
                "cool-down over: calls of this plugin start again (within its rate_limit)"
            );
        });
    }

    /// When the fleet's cool-down of `plugin` ends, if one runs.
    pub async fn cooldown_until(&self, plugin: &str) -> Option<DateTime<Utc>> {
        let left = match self.fleet.cooldown_left(plugin).await {
            Ok(left) => left,
            Err(_) => self
                .state(plugin)
                .local
                .lock()
                .map(|w| w.cooldown_left(local_now_ms()))
                .unwrap_or_default(),
        };
        (!left.is_zero()).then(|| Utc::now() + left)
    }

    fn warn_fallback(&self, plugin: &str, e: &fleet::FleetError) {
        if !self.fallback_warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                plugin, error = %e,
                "upstream budgets cannot be shared through redis; each daemon keeps its plugins' rate_limit alone until redis answers (logged once)"
            );
        } else {
            tracing::debug!(plugin, error = %e, "budget admission on this daemon's own window");
        }
    }
}

/// How many calls of a bulk fetch to run at once: at most `max_concurrency`,
/// and no more than the budget can start within `max_wait` (with a fifth to
/// spare for other callers), so a bulk fetch queues on its own side instead
/// of having its calls refused for want of a turn.
pub fn bulk_concurrency(s: &Settings) -> usize {
    let mut n = s.max_concurrency.max(1);
    let wait_ms = s.max_wait.as_millis();
    for r in s.rate_limit.rates() {
        let win = u128::from(window::guarded_window_ms(*r));
        let fit = u128::from(r.max) * wait_ms * 4 / (5 * win);
        n = n.min(usize::try_from(fit).unwrap_or(usize::MAX).max(1));
    }
    n
}

/// Whole seconds, rounded up, at least 1: what `Retry-After` carries.
fn whole_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn until(left: Duration) -> String {
    (Utc::now() + left).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_concurrency_fits_the_budget_within_max_wait() {
        use crate::model::RateLimit;
        let mut s = crate::plugin::Settings::effective(
            &crate::plugin::Manifest::default(),
            &crate::config::PluginOverrides::default(),
            Duration::from_secs(60),
        );
        s.max_concurrency = 64;
        s.max_wait = Duration::from_secs(10);
        assert_eq!(bulk_concurrency(&s), 64, "no limit: max_concurrency");
        s.rate_limit = RateLimit::parse("5/s").unwrap();
        assert_eq!(bulk_concurrency(&s), 32, "5 per 1.25 s for 10 s, a fifth spare");
        s.rate_limit = RateLimit::parse("20/s").unwrap();
        assert_eq!(bulk_concurrency(&s), 64);
        s.rate_limit = RateLimit::parse_list(&["5/min", "25/day"]).unwrap();
        assert_eq!(bulk_concurrency(&s), 1, "never zero");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(whole_secs(Duration::ZERO), 1);
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1000)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1001)), 2);
        assert_eq!(whole_secs(Duration::from_secs(60)), 60);
    }
}
