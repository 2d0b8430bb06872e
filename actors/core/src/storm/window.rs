//! Sliding-window availability of one domain through one CDN.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

/// Availability over a window: known (successes / attempts) or unknown (too few samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Fewer than the policy's minimum samples: no judgement either way (never 0%).
    Unknown {
        attempts: u32,
    },
    Known {
        successes: u32,
        attempts: u32,
    },
}

impl Availability {
    /// Exact comparison `successes / attempts < threshold` without dividing.
    pub fn is_below(&self, threshold: Decimal) -> bool {
        match *self {
            Availability::Unknown { .. } => false,
            Availability::Known {
                successes,
                attempts,
            } => Decimal::from(successes) < threshold * Decimal::from(attempts),
        }
    }

    /// Known and at or above `threshold`.
    pub fn is_healthy(&self, threshold: Decimal) -> bool {
        matches!(self, Availability::Known { .. }) && !self.is_below(threshold)
    }

    /// The ratio, rounded to four decimals, for display and audit (`None` when unknown).
    pub fn ratio(&self) -> Option<Decimal> {
        match *self {
            Availability::Unknown { .. } => None,
            Availability::Known {
                successes,
                attempts,
            } => Some((Decimal::from(successes) / Decimal::from(attempts)).round_dp(4)),
        }
    }

    pub fn attempts(&self) -> u32 {
        match *self {
            Availability::Unknown { attempts } | Availability::Known { attempts, .. } => attempts,
        }
    }
}

/// The latest unbroken run of probe outcomes through one CDN: how many probes in a row
/// succeeded, or failed. Flap damping counts on it (a storm opens only after
/// `consecutive_failures` failures in a row), independently of the window, which may be shorter
/// than the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Streak {
    ok: bool,
    len: u32,
}

impl Streak {
    /// A run of `len` failures.
    pub const fn failing(len: u32) -> Self {
        Self { ok: false, len }
    }

    /// A run of `len` successes.
    pub const fn succeeding(len: u32) -> Self {
        Self { ok: true, len }
    }

    /// Extends the run with one outcome, or starts a new one.
    pub fn record(&mut self, ok: bool) {
        if self.len > 0 && self.ok == ok {
            self.len = self.len.saturating_add(1);
        } else {
            *self = Self { ok, len: 1 };
        }
    }

    /// Failures in a row at the end (0 when the last probe succeeded).
    pub fn failures(&self) -> u32 {
        if self.ok { 0 } else { self.len }
    }

    /// Successes in a row at the end (0 when the last probe failed).
    pub fn successes(&self) -> u32 {
        if self.ok { self.len } else { 0 }
    }
}

/// Probe outcomes of the last `window` seconds, oldest first.
///
/// Memory is bounded by the probes a window can hold (window / interval), a few dozen bytes per
/// idle domain and CDN.
#[derive(Debug, Clone, Default)]
pub struct AvailabilityWindow {
    samples: VecDeque<(DateTime<Utc>, bool)>,
}

impl AvailabilityWindow {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one probe outcome observed at `at`.
    pub fn record(&mut self, at: DateTime<Utc>, ok: bool) {
        // Results may arrive slightly out of order (two probes in flight); keep the deque sorted
        // so eviction from the front stays correct.
        let pos = self
            .samples
            .iter()
            .rposition(|(t, _)| *t <= at)
            .map_or(0, |i| i + 1);
        self.samples.insert(pos, (at, ok));
    }

    /// Availability over `(now - window, now]`, unknown below `min_samples` attempts. Evicts
    /// samples that have left the window.
    pub fn availability(
        &mut self,
        now: DateTime<Utc>,
        window_seconds: i32,
        min_samples: i32,
    ) -> Availability {
        let start = now - Duration::seconds(i64::from(window_seconds));
        while self.samples.front().is_some_and(|(t, _)| *t <= start) {
            self.samples.pop_front();
        }
        let attempts = self.samples.iter().filter(|(t, _)| *t <= now).count() as u32;
        let successes = self
            .samples
            .iter()
            .filter(|(t, ok)| *t <= now && *ok)
            .count() as u32;
        if attempts < min_samples.max(1) as u32 {
            Availability::Unknown { attempts }
        } else {
            Availability::Known {
                successes,
                attempts,
            }
        }
    }

    /// The earliest failed probe still in the window (evicted with the window's last
    /// `availability` call).
    pub fn first_failure(&self) -> Option<DateTime<Utc>> {
        self.samples.iter().find(|(_, ok)| !ok).map(|(t, _)| *t)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Forgets every sample (e.g. when the probe target changes).
    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn unknown_below_min_samples_never_zero() {
        let mut w = AvailabilityWindow::new();
        w.record(t(0), false);
        w.record(t(1), false);
        assert_eq!(
            w.availability(t(2), 60, 3),
            Availability::Unknown { attempts: 2 }
        );
        assert!(!w.availability(t(2), 60, 3).is_below(Decimal::ONE));
        w.record(t(2), false);
        let a = w.availability(t(2), 60, 3);
        assert_eq!(
            a,
            Availability::Known {
                successes: 0,
                attempts: 3
            }
        );
        assert!(a.is_below(Decimal::new(9, 1)));
    }

    #[test]
    fn samples_leave_the_window() {
        let mut w = AvailabilityWindow::new();
        for s in 0..10 {
            w.record(t(s * 10), s >= 5);
        }
        // Window (40, 100]: samples at 50..=90 → all ok.
        assert_eq!(
            w.availability(t(100), 60, 1),
            Availability::Known {
                successes: 5,
                attempts: 5
            }
        );
        assert_eq!(w.len(), 5);
    }

    #[test]
    fn threshold_comparison_is_exact() {
        let a = Availability::Known {
            successes: 9,
            attempts: 10,
        };
        assert!(!a.is_below(Decimal::new(90, 2)));
        assert!(a.is_below(Decimal::new(901, 3)));
        let third = Availability::Known {
            successes: 1,
            attempts: 3,
        };
        assert!(!third.is_below("0.3333333333333333333333333333".parse().unwrap()));
        assert_eq!(third.ratio(), Some(Decimal::new(3333, 4)));
    }

    #[test]
    fn streaks_count_the_last_run() {
        let mut s = Streak::default();
        assert_eq!((s.failures(), s.successes()), (0, 0));
        s.record(false);
        s.record(false);
        assert_eq!((s.failures(), s.successes()), (2, 0));
        s.record(true);
        assert_eq!((s.failures(), s.successes()), (0, 1));
        assert_eq!(Streak::failing(3).failures(), 3);
        assert_eq!(Streak::succeeding(3).successes(), 3);
    }

    #[test]
    fn out_of_order_results_are_kept_sorted() {
        let mut w = AvailabilityWindow::new();
        w.record(t(10), true);
        w.record(t(5), false);
        w.record(t(20), true);
        assert_eq!(
            w.availability(t(66), 60, 1),
            Availability::Known {
                successes: 2,
                attempts: 2
            }
        );
    }
}
