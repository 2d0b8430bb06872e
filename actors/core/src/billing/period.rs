//! Billing periods: fixed-length intervals aligned to the Unix epoch (a 24 h period is a UTC
//! day), so every node computes the same period for the same instant.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The period of length `length` (whole seconds, at least one) that contains `at`:
/// `[start, start + length)`.
pub fn period_of(at: DateTime<Utc>, length: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let len = length.as_secs().max(1) as i64;
    let start_secs = at.timestamp().div_euclid(len) * len;
    let start = DateTime::from_timestamp(start_secs, 0).unwrap_or(at);
    (start, start + TimeDelta::seconds(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn days_are_utc_days() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            period_of(t("2026-11-23T17:45:12.5Z"), day),
            (t("2026-11-23T00:00:00Z"), t("2026-11-24T00:00:00Z"))
        );
        // The first instant belongs to its period, the end to the next.
        assert_eq!(
            period_of(t("2026-11-23T00:00:00Z"), day).0,
            t("2026-11-23T00:00:00Z")
        );
        assert_eq!(
            period_of(t("2026-11-24T00:00:00Z"), day).0,
            t("2026-11-24T00:00:00Z")
        );
    }

    #[test]
    fn hours_and_times_before_the_epoch() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            period_of(t("2026-11-23T17:45:00Z"), hour),
            (t("2026-11-23T17:00:00Z"), t("2026-11-23T18:00:00Z"))
        );
        assert_eq!(
            period_of(t("1969-12-31T23:30:00Z"), hour).0,
            t("1969-12-31T23:00:00Z")
        );
    }
}
