//! Reports over many business dates (issue 16): a job slowing down, an SLO routinely early or
//! late, duration percentiles. Exact arithmetic (`rust_decimal`), no floats.
//!
//! * [`theil_sen`] — a robust trend of durations: the median of the slopes between every pair
//!   of dates, so one slow night does not tilt it (unlike least squares);
//! * [`projected_miss`] — the first date on which that trend reaches a budget;
//! * [`shares`] — the shares of dates late, or early, by more than a margin;
//! * [`percentile`] — nearest-rank percentiles.

use rust_decimal::Decimal;

/// A trend line: `y = intercept + slope × x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trend {
    /// Change of y per unit of x (seconds of duration per business date).
    pub slope: Decimal,
    pub intercept: Decimal,
}

impl Trend {
    pub fn at(&self, x: i64) -> Decimal {
        self.intercept + self.slope * Decimal::from(x)
    }
}

fn median(mut v: Vec<Decimal>) -> Option<Decimal> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / Decimal::TWO
    })
}

/// The Theil–Sen trend of `points` (x: the date's index, y: a duration in seconds); `None`
/// with fewer than two distinct x.
pub fn theil_sen(points: &[(i64, i64)]) -> Option<Trend> {
    let mut slopes = Vec::new();
    for (i, &(xi, yi)) in points.iter().enumerate() {
        for &(xj, yj) in &points[i + 1..] {
            if xi != xj {
                slopes.push(Decimal::from(yj - yi) / Decimal::from(xj - xi));
            }
        }
    }
    let slope = median(slopes)?;
    let intercept = median(
        points
            .iter()
            .map(|&(x, y)| Decimal::from(y) - slope * Decimal::from(x))
            .collect(),
    )?;
    Some(Trend { slope, intercept })
}

/// The first x after `last` at which `trend` reaches `budget` (at most `horizon` steps ahead);
/// `None` when it does not (a flat or improving trend, or too far away).
pub fn projected_miss(trend: &Trend, last: i64, budget: Decimal, horizon: i64) -> Option<i64> {
    if trend.slope <= Decimal::ZERO {
        return None;
    }
    // Smallest x with intercept + slope·x ≥ budget.
    let x = ((budget - trend.intercept) / trend.slope).ceil();
    let x = i64::try_from(x).ok()?.max(last + 1);
    (x - last <= horizon).then_some(x)
}

/// Of `lateness` (seconds past the expected end; negative: early), the percentages (two
/// decimals) of dates late by more than `margin`, and early by more than it.
pub fn shares(lateness: &[i64], margin: i64) -> Option<(Decimal, Decimal)> {
    if lateness.is_empty() {
        return None;
    }
    let n = Decimal::from(lateness.len());
    let pct = |count: usize| {
        let mut p = (Decimal::from(count) * Decimal::ONE_HUNDRED / n).round_dp(2);
        p.rescale(2);
        p
    };
    Some((
        pct(lateness.iter().filter(|&&l| l > margin).count()),
        pct(lateness.iter().filter(|&&l| l < -margin).count()),
    ))
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `values`.
pub fn percentile(values: &[i64], p: u32) -> Option<i64> {
    if values.is_empty() || p == 0 || p > 100 {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = (v.len() * p as usize).div_ceil(100).max(1);
    Some(v[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(n: i64) -> Decimal {
        Decimal::from(n)
    }

    #[test]
    fn a_steady_slowdown_is_found_despite_an_outlier() {
        // 40 min + 1 min per date, with one 3-hour night.
        let mut points: Vec<(i64, i64)> = (0..20).map(|x| (x, 2400 + 60 * x)).collect();
        points[7].1 = 10_800;
        let trend = theil_sen(&points).unwrap();
        assert_eq!(trend.slope, d(60));
        assert_eq!(trend.intercept, d(2400));
        // A 60-minute budget is reached on date 20 (2400 + 60·20 = 3600).
        assert_eq!(projected_miss(&trend, 19, d(3600), 365), Some(20));
        assert_eq!(
            projected_miss(&trend, 19, d(36_000), 365),
            None,
            "beyond the horizon"
        );
        let flat = theil_sen(&[(0, 100), (1, 100), (2, 100)]).unwrap();
        assert_eq!(projected_miss(&flat, 2, d(50), 365), None);
        assert_eq!(theil_sen(&[(3, 1), (3, 9)]), None);
    }

    #[test]
    fn shares_and_percentiles() {
        let lateness = [-900, -60, 0, 120, 700, 1200];
        // Late by more than 5 min: 700 and 1200; early by more than 5 min: -900.
        assert_eq!(
            shares(&lateness, 300),
            Some((Decimal::new(3333, 2), Decimal::new(1667, 2)))
        );
        assert_eq!(shares(&[], 300), None);
        let durations = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(percentile(&durations, 50), Some(50));
        assert_eq!(percentile(&durations, 90), Some(90));
        assert_eq!(percentile(&durations, 99), Some(100));
        assert_eq!(percentile(&durations, 0), None);
    }

    proptest! {
        /// On points exactly on a line, Theil–Sen returns that line.
        #[test]
        fn exact_lines_are_recovered(a in -10_000i64..10_000, b in -500i64..500, n in 2usize..30) {
            let points: Vec<(i64, i64)> = (0..n as i64).map(|x| (x, a + b * x)).collect();
            let t = theil_sen(&points).unwrap();
            prop_assert_eq!(t.slope, d(b));
            prop_assert_eq!(t.intercept, d(a));
        }
    }
}
