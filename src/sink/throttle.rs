//! Rate-limited logging: a broker that is down for an hour must not write a
//! line per record. The first event logs at once; later ones at most once
//! per interval, saying how many were left out in between.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct LogThrottle {
    every: Duration,
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be written now (`n` events were left out
    /// since the last line); `None` when this one is to be left out.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_logs_then_one_per_interval_with_the_count_left_out() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_secs(30)), Some(1));
    }
}
