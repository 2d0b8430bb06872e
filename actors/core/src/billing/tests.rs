//! Hand-computed cases of the billing formula (DESIGN.md §5), plus a property test against an
//! independent exact-rational reference.

use super::*;
use proptest::prelude::*;

fn t(s: &str) -> DateTime<Utc> {
    format!("2026-11-23T{s}Z").parse().unwrap()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

const GB: i64 = BYTES_PER_GB;

/// 10:00–11:00, the window of most cases.
fn hour(primary: i64, backup: i64) -> Usage {
    Usage {
        window_start: t("10:00:00"),
        window_end: t("11:00:00"),
        primary_bytes: primary,
        backup_bytes: backup,
    }
}

fn storm(from: &str, to: Option<&str>) -> StormSpan {
    StormSpan {
        started_at: t(from),
        ended_at: to.map(t),
    }
}

fn priced(usage: Usage, storms: &[StormSpan], max_cov: &str) -> Line {
    price(&usage, storms, d(max_cov), &Rates::default()).unwrap()
}

#[test]
fn no_storm_no_discount() {
    let l = priced(hour(GB, 2 * GB), &[], "1.5");
    assert_eq!(l.primary.cents, d("12"));
    assert_eq!(l.backup.cents, d("24"));
    assert_eq!(l.subtotal_cents, d("36"));
    assert_eq!(l.coverage, d("0"));
    assert_eq!(l.discount_cents, d("0"));
    assert_eq!(l.total_cents, d("36"));
    assert!(l.storms.is_empty());
}

#[test]
fn half_the_window_in_a_storm() {
    // coverage = 1800 × 1.5 / 3600 = 0.75; discount = 120 × 0.5 × 0.75 = 45.
    let l = priced(
        hour(10 * GB, 10 * GB),
        &[storm("10:15:00", Some("10:45:00"))],
        "1.5",
    );
    assert_eq!(l.storm_overlap_seconds, d("1800"));
    assert_eq!(l.coverage, d("0.75"));
    assert_eq!(l.subtotal_cents, d("240"));
    assert_eq!(l.discount_exact, d("45"));
    assert_eq!(l.discount_cents, d("45"));
    assert_eq!(l.total_cents, d("195"));
    assert_eq!(l.storms, vec![0]);
}

#[test]
fn overlapping_storms_count_once() {
    // Union of 10:00–10:30 and 10:15–10:45 is 45 minutes: coverage 0.75 at factor 1.
    let storms = [
        storm("10:00:00", Some("10:30:00")),
        storm("10:15:00", Some("10:45:00")),
    ];
    let l = priced(hour(0, 10 * GB), &storms, "1");
    assert_eq!(l.storm_overlap_seconds, d("2700"));
    assert_eq!(l.coverage, d("0.75"));
    assert_eq!(l.discount_cents, d("45"));
    assert_eq!(l.storms, vec![0, 1]);
}

#[test]
fn adjacent_storms_add_up() {
    // 10:00–10:20 + 10:20–10:40 = 2400 s; × 1.5 / 3600 = 1.0; discount 120 × 0.5 = 60.
    let storms = [
        storm("10:20:00", Some("10:40:00")),
        storm("10:00:00", Some("10:20:00")),
    ];
    let l = priced(hour(0, 10 * GB), &storms, "1.5");
    assert_eq!(l.storm_overlap_seconds, d("2400"));
    assert_eq!(l.coverage, d("1"));
    assert_eq!(l.discount_cents, d("60"));
}

#[test]
fn an_open_storm_runs_to_the_window_end() {
    let l = priced(hour(0, 10 * GB), &[storm("10:40:00", None)], "1.5");
    assert_eq!(l.storm_overlap_seconds, d("1200"));
    assert_eq!(l.coverage, d("0.5"));
    assert_eq!(l.discount_cents, d("30"));
}

#[test]
fn storms_are_clipped_to_the_window() {
    // 09:00–10:10 contributes 10 minutes, 10:50–12:00 another 10; 08:00–09:00 nothing.
    let storms = [
        storm("09:00:00", Some("10:10:00")),
        storm("10:50:00", Some("12:00:00")),
        storm("08:00:00", Some("09:00:00")),
        storm("11:00:00", None),
    ];
    let l = priced(hour(0, 10 * GB), &storms, "1");
    assert_eq!(l.storm_overlap_seconds, d("1200"));
    assert_eq!(l.storms, vec![0, 1]);
    // 120 × 0.5 × 1/3 = 20.
    assert_eq!(l.discount_cents, d("20"));
}

#[test]
fn coverage_is_capped_at_the_factor_and_the_discount_at_the_subtotal() {
    let all = [storm("09:00:00", None)];
    let l = priced(hour(0, 10 * GB), &all, "1.5");
    assert_eq!(l.coverage, d("1.5"));
    assert_eq!(l.discount_cents, d("90"));
    assert_eq!(l.total_cents, d("30"));

    let generous = Rates {
        discount_rate: d("1"),
        ..Rates::default()
    };
    let l = price(&hour(0, 10 * GB), &all, d("1.5"), &generous).unwrap();
    assert_eq!(l.discount_exact, d("180"));
    assert_eq!(l.discount_cents, d("120"), "capped at the subtotal");
    assert_eq!(l.total_cents, d("0"));
}

#[test]
fn several_policies_use_the_largest_factor() {
    assert_eq!(max_coverage_factor([d("1.2"), d("2"), d("1.5")]), d("2"));
    assert_eq!(max_coverage_factor([]), d("1"), "no policy: factor 1");
}

#[test]
fn zero_bytes_cost_nothing() {
    let l = priced(hour(0, 0), &[storm("09:00:00", None)], "1.5");
    assert_eq!(l.subtotal_cents, d("0"));
    assert_eq!(l.discount_cents, d("0"));
    assert_eq!(l.total_cents, d("0"));
}

#[test]
fn huge_byte_counts_do_not_overflow() {
    // 2^62 bytes × 12 / 2^30 = 12 × 2^32 = 51,539,607,552 cents, through each CDN.
    let big = 1i64 << 62;
    let l = priced(hour(big, big), &[storm("09:00:00", None)], "1.5");
    assert_eq!(l.primary.cents, d("51539607552"));
    assert_eq!(l.subtotal_cents, d("103079215104"));
    // 51,539,607,552 × 0.5 × 1.5
    assert_eq!(l.discount_cents, d("38654705664"));
    assert_eq!(l.total_cents, d("64424509440"));
    // The largest bigint: (2^63 − 1) × 12 / 2^30 = 103,079,215,104 − 12/2^30.
    let max = priced(hour(i64::MAX, 0), &[], "1");
    assert_eq!(max.primary.cents, d("103079215104"));
    assert!(max.primary.exact < d("103079215104"));
}

#[test]
fn exactly_half_a_cent_rounds_away_from_zero() {
    // 2^27 bytes × 12 / 2^30 = 1.5 cents → 2; one byte less → 1.
    let l = priced(hour(1 << 27, (1 << 27) - 1), &[], "1");
    assert_eq!(l.primary.exact, d("1.5"));
    assert_eq!(l.primary.cents, d("2"));
    assert_eq!(l.backup.cents, d("1"));

    // The design's trap: 3 ¢ × 0.5 × (1200 / 3600) is exactly half a cent. Dividing first
    // (coverage 0.3333…) would give 0.4999… and round to 0.
    let l = priced(
        hour(0, 1 << 28),
        &[storm("10:00:00", Some("10:20:00"))],
        "1",
    );
    assert_eq!(l.backup.cents, d("3"));
    assert_eq!(l.discount_exact, d("0.5"));
    assert_eq!(l.discount_cents, d("1"));
    assert_eq!(l.total_cents, d("2"));
}

#[test]
fn sub_second_storm_edges_count_exactly() {
    let l = priced(
        hour(0, 10 * GB),
        &[storm("10:00:00.25", Some("10:00:01"))],
        "1",
    );
    assert_eq!(l.storm_overlap_seconds, d("0.75"));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let mut u = hour(1, 1);
    u.window_end = u.window_start;
    assert_eq!(
        price(&u, &[], d("1"), &Rates::default()),
        Err(BillingError::EmptyWindow)
    );
    assert_eq!(
        price(&hour(-1, 0), &[], d("1"), &Rates::default()),
        Err(BillingError::NegativeBytes)
    );
    assert_eq!(
        price(&hour(1, 1), &[], d("0"), &Rates::default()),
        Err(BillingError::CoverageFactor(d("0")))
    );
    let bad = Rates {
        discount_rate: d("1.5"),
        ..Rates::default()
    };
    assert!(matches!(
        price(&hour(1, 1), &[], d("1"), &bad),
        Err(BillingError::Rates(_))
    ));
}

#[test]
fn quotients_round_half_away_from_zero() {
    let r = |n: &str, m: &str| round_quotient(d(n), d(m)).unwrap();
    assert_eq!(r("5", "10"), d("1"));
    assert_eq!(r("4.999", "10"), d("0"));
    assert_eq!(r("15", "10"), d("2"));
    assert_eq!(r("-5", "10"), d("-1"));
    assert_eq!(r("1", "3"), d("0"));
    assert_eq!(r("2", "3"), d("1"));
    assert_eq!(r("0.15", "0.1"), d("2"));
}

/// `round(num / den)`, half away from zero, for non-negative integers.
fn reference_round(num: u128, den: u128) -> u128 {
    (2 * num + den) / (2 * den)
}

proptest! {
    /// The line agrees with an independent computation in exact integer rationals (seconds
    /// granularity, rates 12 ¢/GB and 0.5, factors from partial cover to 10), and its
    /// invariants hold.
    #[test]
    fn agrees_with_exact_rationals(
        primary in 0i64..=i64::MAX,
        backup in 0i64..=i64::MAX,
        window_secs in 1i64..=86_400,
        storms in proptest::collection::vec((-7200i64..90_000, 0i64..10_000, any::<bool>()), 0..5),
        (factor, f_num, f_den) in prop::sample::select(vec![
            ("1.5", 3u128, 2u128), ("0.5", 1, 2), ("0.1", 1, 10), ("1", 1, 1), ("10", 10, 1),
        ]),
    ) {
        let start = t("00:00:00");
        let usage = Usage {
            window_start: start,
            window_end: start + chrono::TimeDelta::seconds(window_secs),
            primary_bytes: primary,
            backup_bytes: backup,
        };
        let spans: Vec<StormSpan> = storms
            .iter()
            .map(|&(from, len, open)| StormSpan {
                started_at: start + chrono::TimeDelta::seconds(from),
                ended_at: (!open).then(|| start + chrono::TimeDelta::seconds(from + len)),
            })
            .collect();
        let line = price(&usage, &spans, d(factor), &Rates::default()).unwrap();

        // Reference: covered seconds by brute force over each second of the window.
        let covered = (0..window_secs)
            .filter(|s| storms.iter().any(|&(from, len, open)| {
                *s >= from && (open || *s < from + len)
            }))
            .count() as u128;
        let charge = |b: i64| reference_round(b as u128 * 12, 1 << 30);
        let (p, b) = (charge(primary), charge(backup));
        // discount = b × 1/2 × covered × f / window = b·covered·f_num / (2·f_den·window)
        let discount =
            reference_round(b * covered * f_num, 2 * f_den * window_secs as u128).min(p + b);
        prop_assert_eq!(line.primary.cents, Decimal::from(p as i64));
        prop_assert_eq!(line.backup.cents, Decimal::from(b as i64));
        prop_assert_eq!(line.storm_overlap_seconds, Decimal::from(covered as i64));
        prop_assert_eq!(line.discount_cents, Decimal::from(discount as i64));
        prop_assert_eq!(line.total_cents, Decimal::from((p + b - discount) as i64));
        prop_assert!(line.coverage <= d(factor));
        prop_assert!(line.total_cents >= Decimal::ZERO);
    }
}
