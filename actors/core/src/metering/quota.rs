//! Quotas: which thresholds an increment of usage crosses (each is announced once per period;
//! the adapter keeps the marker in the transaction that crosses it), and what happens to an
//! event over the quota.

use rust_decimal::Decimal;

/// Percentages of the quota that are announced when crossed.
pub const THRESHOLDS: [u32; 2] = [80, 100];

/// What an event that would exceed the quota does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverQuota {
    /// Accepted; the crossing is announced.
    #[default]
    Notify,
    /// Refused (429, with the quota).
    Reject,
}

impl OverQuota {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "notify" => Some(Self::Notify),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::Reject => "reject",
        }
    }
}

/// The thresholds (percent) the period's total passes going from `before` to `after`: reached
/// now (`after ≥ quota × t %`) and not before. A quota of zero or less announces nothing.
pub fn crossed(before: Decimal, after: Decimal, quota: Decimal) -> Vec<u32> {
    if quota <= Decimal::ZERO {
        return Vec::new();
    }
    THRESHOLDS
        .into_iter()
        .filter(|&t| {
            let line = quota * Decimal::from(t) / Decimal::ONE_HUNDRED;
            before < line && after >= line
        })
        .collect()
}

/// The thresholds (percent) a period's `total` has reached. The adapter announces each the
/// first time a batch leaves the total at or past it (its marker makes it once per period), so
/// a quota lowered below the usage already counted is announced at the next event.
pub fn reached(total: Decimal, quota: Decimal) -> Vec<u32> {
    crossed(Decimal::MIN, total, quota)
}

/// Whether an event of `quantity` is admitted with the period at `used` of `quota`.
pub fn admits(used: Decimal, quantity: Decimal, quota: Option<Decimal>, mode: OverQuota) -> bool {
    match (quota, mode) {
        (Some(q), OverQuota::Reject) => used + quantity <= q,
        _ => true,
    }
}

/// Percentage used, rounded to two decimals (`None` without a positive quota).
pub fn percent_used(used: Decimal, quota: Option<Decimal>) -> Option<Decimal> {
    quota.filter(|q| *q > Decimal::ZERO).map(|q| {
        let mut p = (used * Decimal::ONE_HUNDRED / q).round_dp(2);
        p.rescale(2);
        p
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(n: i64) -> Decimal {
        Decimal::from(n)
    }

    #[test]
    fn thresholds_are_crossed_once_on_the_way_up() {
        assert_eq!(crossed(d(0), d(79), d(100)), Vec::<u32>::new());
        assert_eq!(crossed(d(79), d(80), d(100)), vec![80]);
        assert_eq!(crossed(d(80), d(99), d(100)), Vec::<u32>::new());
        assert_eq!(crossed(d(50), d(150), d(100)), vec![80, 100]);
        assert_eq!(crossed(d(100), d(200), d(100)), Vec::<u32>::new());
        assert_eq!(crossed(d(0), d(10), d(0)), Vec::<u32>::new());
        // Exact: 80 % of 1/3 is not rounded.
        let q = Decimal::ONE / d(3);
        let line = q * d(80) / d(100);
        assert_eq!(crossed(Decimal::ZERO, line, q), vec![80]);
    }

    #[test]
    fn reached_lists_every_threshold_at_or_below_the_total() {
        assert_eq!(reached(d(79), d(100)), Vec::<u32>::new());
        assert_eq!(reached(d(80), d(100)), vec![80]);
        assert_eq!(reached(d(250), d(100)), vec![80, 100]);
        assert_eq!(reached(d(5), d(0)), Vec::<u32>::new());
    }

    #[test]
    fn reject_refuses_what_would_exceed_the_quota_and_notify_never_does() {
        assert!(admits(d(90), d(10), Some(d(100)), OverQuota::Reject));
        assert!(!admits(d(90), d(11), Some(d(100)), OverQuota::Reject));
        assert!(admits(d(90), d(11), Some(d(100)), OverQuota::Notify));
        assert!(admits(d(90), d(11), None, OverQuota::Reject));
        assert_eq!(percent_used(d(1), Some(d(3))), Some(Decimal::new(3333, 2)));
        assert_eq!(percent_used(d(1), None), None);
        assert_eq!(
            percent_used(d(3), Some(d(2))).unwrap().to_string(),
            "150.00"
        );
        assert_eq!(OverQuota::parse("reject"), Some(OverQuota::Reject));
        assert_eq!(OverQuota::default().as_str(), "notify");
    }

    proptest! {
        /// However the usage arrives, each threshold is crossed exactly once when the total
        /// ends at or above it, and never when it does not.
        #[test]
        fn each_threshold_is_crossed_exactly_once(
            steps in prop::collection::vec(0i64..50, 0..60),
            quota in 1i64..1000,
        ) {
            let mut total = Decimal::ZERO;
            let mut seen = Vec::new();
            for s in steps {
                let after = total + d(s);
                seen.extend(crossed(total, after, d(quota)));
                total = after;
            }
            for t in THRESHOLDS {
                let reached = total * d(100) >= d(quota) * Decimal::from(t);
                prop_assert_eq!(seen.iter().filter(|&&x| x == t).count(), usize::from(reached));
            }
        }
    }
}
