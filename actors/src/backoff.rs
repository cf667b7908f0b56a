//! Retry timing: jittered exponential backoff and a restart-intensity window.
//!
//! Used by the supervisor for actor restarts and by instance actors for reconnects.
//! Jitter is "equal jitter" (half fixed, half random) so retries of many instances that
//! failed together spread out instead of stampeding, while no delay drops below half of
//! its nominal value.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Exponential backoff with a cap and equal jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// No delay exceeds this.
    pub max: Duration,
    /// Growth per attempt.
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            factor: 2.0,
        }
    }
}

impl Backoff {
    /// The nominal (unjittered) delay before retry number `attempt` (0-based).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exp = self.factor.powi(attempt.min(64) as i32);
        let secs = (self.base.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// The jittered delay before retry number `attempt`: uniformly in [nominal/2, nominal].
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let half = nominal / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A number in [0, 1) from the process's randomly keyed hasher (enough for jitter; not
/// for anything secret).
pub fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Counts restarts inside a sliding window: more than `max_restarts` within `window`
/// means the child should be parked rather than restarted again.
#[derive(Debug, Clone)]
pub struct RestartIntensity {
    /// Restarts allowed inside the window.
    pub max_restarts: usize,
    /// The window's length.
    pub window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    /// A fresh window.
    pub fn new(max_restarts: usize, window: Duration) -> Self {
        Self {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now`. Returns the retry number to use for backoff (how many
    /// failures are inside the window, minus one), or `None` once the limit is exceeded.
    pub fn record(&mut self, now: Instant) -> Option<u32> {
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        if self.recent.len() > self.max_restarts {
            None
        } else {
            Some(self.recent.len() as u32 - 1)
        }
    }

    /// Forgets every recorded failure (after an operator resumes a parked child).
    pub fn reset(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered_within_bounds() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
        };
        assert_eq!(b.nominal(0), Duration::from_millis(100));
        assert_eq!(b.nominal(3), Duration::from_millis(800));
        assert_eq!(b.nominal(10), Duration::from_secs(1));
        let mut distinct = std::collections::HashSet::new();
        for attempt in 0..8 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                let n = b.nominal(attempt);
                assert!(d >= n / 2 && d <= n, "{d:?} outside [{:?}, {n:?}]", n / 2);
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 100, "jitter spreads delays");
    }

    #[test]
    fn intensity_parks_after_limit_and_forgets_old_failures() {
        let mut r = RestartIntensity::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(r.record(t0), Some(0));
        assert_eq!(r.record(t0 + Duration::from_secs(1)), Some(1));
        assert_eq!(r.record(t0 + Duration::from_secs(2)), Some(2));
        assert_eq!(r.record(t0 + Duration::from_secs(3)), None);
        let mut r = RestartIntensity::new(2, Duration::from_secs(10));
        assert_eq!(r.record(t0), Some(0));
        assert_eq!(r.record(t0 + Duration::from_secs(5)), Some(1));
        // The first failure has left the window.
        assert_eq!(r.record(t0 + Duration::from_secs(11)), Some(1));
    }
}
