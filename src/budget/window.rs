//! The sliding-window arithmetic of an upstream budget, shared by the Redis
//! Function (`budget.lua` does the same in Lua, on the Redis server's clock)
//! and the per-daemon fallback used while Redis cannot be asked.
//!
//! A plugin's admissions are one ascending list of start times (ms). A call
//! is given the earliest start `t >= now`, not before the last start already
//! given out, such that for every rate (N per window W) at most N-1 earlier
//! starts lie in `(t - W, t]`. Because starts are handed out in order, this
//! one check at the new start is enough for every window to hold N at most.
//! A start in the future is a reservation: the caller sleeps until it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::{Rate, RateLimit};

/// How much longer than its period each window is counted: the time between
/// an admission and the request reaching the upstream varies (scheduling,
/// connection set-up; on a loaded 2-core machine a burst's last call was
/// measured arriving ~200 ms after its first), and without a margin two
/// starts a window apart could arrive less than a window apart. 10% of the
/// period, at least 250 ms, at most 1 s.
pub(crate) fn guarded_window_ms(rate: Rate) -> u64 {
    let w = rate.window_ms();
    w + (w / 10).clamp(250, 1000)
}

/// `(max, window_ms)` for every rate of a limit, windows guarded.
pub(crate) fn windows(limit: &RateLimit) -> Vec<(u64, u64)> {
    limit
        .rates()
        .iter()
        .map(|r| (u64::from(r.max), guarded_window_ms(*r)))
        .collect()
}

/// The earliest start allowed for the next call (see the module doc).
/// `starts` is ascending and already trimmed of starts older than the
/// longest window.
pub(crate) fn earliest_start(starts: &VecDeque<u64>, now: u64, windows: &[(u64, u64)]) -> u64 {
    let n = starts.len() as u64;
    let mut at = now.max(starts.back().copied().unwrap_or(0));
    for &(max, win) in windows {
        if n >= max {
            // With this start gone from the window, at most max-1 remain.
            let i = (n - max) as usize;
            at = at.max(starts[i] + win);
        }
    }
    at
}

/// What an admission attempt decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start after this long (zero: now).
    Go(Duration),
    /// No turn within `max_wait`; the next one is this far away.
    Budget(Duration),
    /// The plugin cools down for this much longer.
    Cooldown(Duration),
}

/// One daemon's own view of one plugin's budget, for when Redis is down.
#[derive(Debug, Default)]
pub(crate) struct LocalWindow {
    starts: VecDeque<u64>,
    cooldown_until: u64,
}

impl LocalWindow {
    /// The same decision the Redis Function makes, on this process's clock.
    pub(crate) fn admit(&mut self, now: u64, windows: &[(u64, u64)], max_wait: Duration) -> Decision {
        if self.cooldown_until > now {
            return Decision::Cooldown(Duration::from_millis(self.cooldown_until - now));
        }
        let longest = windows.iter().map(|w| w.1).max().unwrap_or(0);
        while self.starts.front().is_some_and(|&s| s + longest <= now) {
            self.starts.pop_front();
        }
        if windows.is_empty() {
            return Decision::Go(Duration::ZERO);
        }
        let at = earliest_start(&self.starts, now, windows);
        let wait = Duration::from_millis(at - now);
        if wait > max_wait {
            return Decision::Budget(wait);
        }
        self.starts.push_back(at);
        Decision::Go(wait)
    }

    /// Starts (or lengthens) a cool-down; returns whether it is a new one.
    pub(crate) fn cool_down(&mut self, now: u64, for_ms: u64) -> bool {
        let fresh = self.cooldown_until <= now;
        self.cooldown_until = self.cooldown_until.max(now + for_ms);
        fresh
    }

    pub(crate) fn cooldown_left(&self, now: u64) -> Duration {
        Duration::from_millis(self.cooldown_until.saturating_sub(now))
    }
}

/// Milliseconds on this process's monotonic clock (for [`LocalWindow`]).
pub(crate) fn local_now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Start well above zero so `now - window` never underflows in use.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 86_400_000 * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rates: &[&str]) -> Vec<(u64, u64)> {
        windows(&RateLimit::parse_list(rates).unwrap())
    }

    /// Every window of `win` ms over the given starts holds at most `max`.
    fn holds(starts: &[u64], max: usize, win: u64) -> bool {
        starts
            .iter()
            .all(|&t| starts.iter().filter(|&&s| s >= t && s < t + win).count() <= max)
    }

    #[test]
    fn guards_each_window() {
        assert_eq!(limit(&["10/s"]), [(10, 1250)]);
        assert_eq!(limit(&["5/min"]), [(5, 61_000)]);
        assert_eq!(limit(&["25/day"]), [(25, 86_401_000)]);
    }

    #[test]
    fn a_burst_is_spread_and_never_exceeds_the_limit() {
        let w = limit(&["10/s"]);
        let mut lw = LocalWindow::default();
        let now = 1_000_000;
        let mut starts = Vec::new();
        for _ in 0..35 {
            match lw.admit(now, &w, Duration::from_secs(60)) {
                Decision::Go(d) => starts.push(now + d.as_millis() as u64),
                other => panic!("expected a turn, got {other:?}"),
            }
        }
        // The first ten go at once, each next ten one guarded window later.
        assert_eq!(&starts[..10], &[now; 10]);
        assert_eq!(starts[10], now + 1250);
        assert_eq!(starts[30], now + 3750);
        assert!(holds(&starts, 10, 1250));
        assert!(!holds(&starts, 9, 1250), "and the budget is used, not wasted");
    }

    #[test]
    fn no_turn_within_max_wait_is_refused_and_reserves_nothing() {
        let w = limit(&["2/s"]);
        let mut lw = LocalWindow::default();
        let now = 5_000_000;
        assert_eq!(lw.admit(now, &w, Duration::ZERO), Decision::Go(Duration::ZERO));
        assert_eq!(lw.admit(now, &w, Duration::ZERO), Decision::Go(Duration::ZERO));
        assert_eq!(
            lw.admit(now + 100, &w, Duration::from_millis(500)),
            Decision::Budget(Duration::from_millis(1150))
        );
        // The refusal took no slot: after the window the next call goes at once.
        assert_eq!(lw.admit(now + 1250, &w, Duration::ZERO), Decision::Go(Duration::ZERO));
    }

    #[test]
    fn every_rate_of_a_list_holds() {
        let w = limit(&["3/s", "5/min"]);
        let mut lw = LocalWindow::default();
        let mut now = 10_000_000;
        let mut starts = Vec::new();
        for _ in 0..12 {
            if let Decision::Go(d) = lw.admit(now, &w, Duration::from_secs(3600)) {
                now += d.as_millis() as u64;
                starts.push(now);
            }
        }
        assert!(holds(&starts, 3, 1250));
        assert!(holds(&starts, 5, 61_000));
        assert_eq!(starts[5] - starts[0], 61_000, "the sixth waits for the minute");
    }

    #[test]
    fn old_starts_are_forgotten() {
        let w = limit(&["1/s"]);
        let mut lw = LocalWindow::default();
        for i in 0..100 {
            assert!(matches!(
                lw.admit(1_000_000 + i * 2000, &w, Duration::ZERO),
                Decision::Go(_)
            ));
        }
        assert_eq!(lw.starts.len(), 1);
    }

    #[test]
    fn cool_down_stops_every_call_until_it_ends() {
        let mut lw = LocalWindow::default();
        let now = 1_000_000;
        assert!(lw.cool_down(now, 30_000));
        assert!(!lw.cool_down(now + 10, 5_000), "a shorter one does not shorten it");
        assert_eq!(
            lw.admit(now + 1000, &[], Duration::from_secs(60)),
            Decision::Cooldown(Duration::from_millis(29_000))
        );
        assert_eq!(lw.cooldown_left(now + 1000), Duration::from_millis(29_000));
        assert_eq!(
            lw.admit(now + 30_000, &[], Duration::ZERO),
            Decision::Go(Duration::ZERO)
        );
        assert!(lw.cool_down(now + 40_000, 1000), "a later one is new again");
    }

    #[test]
    fn no_limit_means_no_wait() {
        let mut lw = LocalWindow::default();
        for _ in 0..1000 {
            assert_eq!(lw.admit(1_000_000, &[], Duration::ZERO), Decision::Go(Duration::ZERO));
        }
        assert!(lw.starts.is_empty());
    }
}
