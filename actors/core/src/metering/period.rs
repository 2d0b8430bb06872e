//! A quota's monthly period: it starts on the billing day (1–28) at midnight in the quota's
//! time zone and ends where the next one starts, so a period is a calendar month of local time
//! whatever the UTC offsets in between (daylight saving included).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::domain::Invalid;

/// When a customer's monthly periods start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingCycle {
    day: u32,
    tz: Tz,
}

impl BillingCycle {
    /// `day`: 1–28 (every month has it); `tz`: an IANA name such as `Europe/Paris`.
    pub fn new(day: i32, tz: &str) -> Result<Self, Invalid> {
        if !(1..=28).contains(&day) {
            return Err(Invalid("billing_day must be between 1 and 28".into()));
        }
        let tz: Tz = tz
            .parse()
            .map_err(|_| Invalid(format!("time_zone {tz:?} is not an IANA time zone")))?;
        Ok(Self {
            day: day as u32,
            tz,
        })
    }

    pub fn utc() -> Self {
        Self {
            day: 1,
            tz: chrono_tz::UTC,
        }
    }

    pub fn day(&self) -> u32 {
        self.day
    }

    pub fn time_zone(&self) -> &'static str {
        self.tz.name()
    }

    /// The start of the period of the local month `(year, month)`: its billing day at local
    /// midnight (or the first instant after a midnight that daylight saving skipped).
    fn start_of(&self, year: i32, month: u32) -> DateTime<Utc> {
        let date = NaiveDate::from_ymd_opt(year, month, self.day).unwrap_or(NaiveDate::MIN);
        let mut local = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        // A local midnight may not exist (a DST gap): the period starts when the day does.
        for _ in 0..48 {
            if let Some(t) = self.tz.from_local_datetime(&local).earliest() {
                return t.with_timezone(&Utc);
            }
            local += Duration::minutes(30);
        }
        date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
    }

    /// The period `[start, end)` that contains `t`.
    pub fn period_containing(&self, t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let local = t.with_timezone(&self.tz);
        let (mut year, mut month) = (local.year(), local.month());
        if t < self.start_of(year, month) {
            (year, month) = previous(year, month);
        }
        let (next_year, next_month) = following(year, month);
        (
            self.start_of(year, month),
            self.start_of(next_year, next_month),
        )
    }
}

fn previous(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

fn following(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_period_starts_on_the_billing_day_at_local_midnight() {
        let paris = BillingCycle::new(15, "Europe/Paris").unwrap();
        // 15 March, midnight in Paris (UTC+1) is 14 March 23:00 UTC.
        assert_eq!(
            paris.period_containing(t("2026-03-14T23:30:00Z")),
            (t("2026-03-14T23:00:00Z"), t("2026-04-14T22:00:00Z")),
            "the period ends at midnight of 15 April, summer time (UTC+2)"
        );
        // Half an hour earlier it is still 14 March in Paris: the previous period.
        assert_eq!(
            paris.period_containing(t("2026-03-14T22:30:00Z")),
            (t("2026-02-14T23:00:00Z"), t("2026-03-14T23:00:00Z"))
        );
        // January wraps to December of the year before.
        let utc = BillingCycle::new(1, "UTC").unwrap();
        assert_eq!(
            utc.period_containing(t("2027-01-01T00:00:00Z")),
            (t("2027-01-01T00:00:00Z"), t("2027-02-01T00:00:00Z"))
        );
        let la = BillingCycle::new(28, "America/Los_Angeles").unwrap();
        assert_eq!(
            la.period_containing(t("2027-01-10T12:00:00Z")),
            (t("2026-12-28T08:00:00Z"), t("2027-01-28T08:00:00Z"))
        );
    }

    #[test]
    fn a_midnight_skipped_by_daylight_saving_starts_the_period_when_the_day_does() {
        // Santiago skipped 6 September 2026, 00:00–01:00 local (UTC-4 → UTC-3).
        let santiago = BillingCycle::new(6, "America/Santiago").unwrap();
        let (start, _) = santiago.period_containing(t("2026-09-10T00:00:00Z"));
        assert_eq!(start, t("2026-09-06T04:00:00Z"));
    }

    #[test]
    fn bad_days_and_zones_are_refused() {
        assert!(BillingCycle::new(0, "UTC").is_err());
        assert!(BillingCycle::new(29, "UTC").is_err());
        assert!(BillingCycle::new(1, "Mars/Olympus").is_err());
        assert_eq!(
            BillingCycle::new(3, "Asia/Tokyo").unwrap().time_zone(),
            "Asia/Tokyo"
        );
    }

    proptest! {
        /// Every instant is in exactly one period, and consecutive periods tile time.
        #[test]
        fn periods_contain_their_instant_and_tile(
            secs in 946_684_800i64..4_102_444_800,
            day in 1i32..=28,
            zone in prop::sample::select(vec!["UTC", "Europe/Paris", "America/Santiago",
                "Australia/Lord_Howe", "Asia/Kathmandu", "America/New_York"]),
        ) {
            let cycle = BillingCycle::new(day, zone).unwrap();
            let at = DateTime::from_timestamp(secs, 0).unwrap();
            let (start, end) = cycle.period_containing(at);
            prop_assert!(start <= at && at < end, "{at} not in [{start}, {end})");
            prop_assert_eq!(cycle.period_containing(end).0, end);
            prop_assert_eq!(cycle.period_containing(start - Duration::seconds(1)).1, start);
            prop_assert!(end - start >= Duration::days(27) && end - start <= Duration::days(32));
        }
    }
}
