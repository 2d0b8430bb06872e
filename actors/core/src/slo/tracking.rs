//! What an SLO's tracker looks at, and when: the business dates that may still change, and
//! the instant of its next timer. Pure, at an injected `now`; the tracker actor loads the
//! reports, asks [`super::performance::evaluate`] for each date, and stores the rows.
//!
//! Rules:
//! * a business date is *live* from its local midnight until a day after its deadline (the
//!   latest expected end plus the tolerance; the extra day lets a tracker that was down when
//!   the deadline passed still raise what it owes) — offsets reach up to 7 days, so yesterday's date (or last week's)
//!   may still be live today; the tracker re-evaluates every live date whenever it wakes, so a
//!   report or timer it missed (a restart, a lost notification) is made up then;
//! * a date whose deadline passed before the SLO was created is never live: an SLO created
//!   this afternoon does not alert about this morning;
//! * the tracker wakes at the earliest `wake_at` of its live dates, or at the next local
//!   midnight (a new business date opens), whichever is first.

use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::calendar::{Calendar, Offset};
use super::performance::{Alert, Performance, ReportKind, SloSpec};

impl Alert {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Late => "late",
            Self::Breached => "breached",
        }
    }
}

impl ReportKind {
    /// A `job_status` status (`start`, `succeed`, `fail`).
    pub fn parse(status: &str) -> Option<Self> {
        match status {
            "start" => Some(Self::Start),
            "succeed" => Some(Self::Succeed),
            "fail" => Some(Self::Fail),
            _ => None,
        }
    }
}

/// The instant after which nothing about `date` changes without a report: the latest expected
/// end (of a repeating job, its last occurrence's) plus the tolerance.
pub fn deadline(spec: &SloSpec, calendar: &Calendar, date: NaiveDate) -> DateTime<Utc> {
    let end = spec
        .jobs
        .iter()
        .map(|j| j.last_end())
        .max()
        .unwrap_or(Offset::MIDNIGHT);
    calendar.at(date, end) + spec.tolerance
}

/// Whether `date` is a business date the SLO tracks (its deadline is after `created_at`).
pub fn tracks(
    spec: &SloSpec,
    calendar: &Calendar,
    date: NaiveDate,
    created_at: DateTime<Utc>,
) -> bool {
    calendar.is_business_day(date) && deadline(spec, calendar, date) > created_at
}

/// The business dates that may still change at `now`, in order: opened (local midnight
/// passed) and tracked, from the earliest whose window can still be open.
pub fn live_dates(
    spec: &SloSpec,
    calendar: &Calendar,
    now: DateTime<Utc>,
    created_at: DateTime<Utc>,
) -> Vec<NaiveDate> {
    let reach = spec
        .jobs
        .iter()
        .map(|j| i64::from(j.last_end().minutes()))
        .max()
        .unwrap_or(0)
        + spec.tolerance.num_minutes();
    let today = calendar.local_date(now);
    let first = today - Duration::days(reach / 1440 + 1);
    calendar
        .business_dates(first, today)
        .into_iter()
        .filter(|d| tracks(spec, calendar, *d, created_at))
        .filter(|d| *d == today || deadline(spec, calendar, *d) > now - Duration::days(1))
        .collect()
}

/// When the tracker looks again without a report: the earliest `wake_at` of `rows`, or the
/// next local midnight after `now`, whichever is first.
pub fn next_wake(calendar: &Calendar, rows: &[Performance], now: DateTime<Utc>) -> DateTime<Utc> {
    let midnight = calendar.at(
        calendar.local_date(now) + Duration::days(1),
        Offset::MIDNIGHT,
    );
    rows.iter()
        .filter_map(|r| r.wake_at)
        .chain([midnight])
        .filter(|t| *t > now)
        .min()
        .unwrap_or(midnight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::calendar::CalendarKind;
    use crate::slo::performance::{JobExpectation, evaluate};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn spec(start: &str, end: &str, tolerance: i64) -> SloSpec {
        SloSpec {
            jobs: vec![JobExpectation {
                job: "j".into(),
                expected_start: Offset::parse(start).unwrap(),
                expected_end: Offset::parse(end).unwrap(),
                min_duration: None,
                repeat: None,
            }],
            start_grace: Duration::minutes(30),
            tolerance: Duration::minutes(tolerance),
        }
    }

    #[test]
    fn yesterday_stays_live_while_its_window_past_midnight_is_open() {
        // Paris, by 05:00 the next day with an hour's tolerance.
        let cal = Calendar::new(CalendarKind::Standard, "Europe/Paris", []).unwrap();
        let s = spec("23:00", "29:00", 60);
        let created = t("2026-11-01T00:00:00Z");
        // Friday 2026-12-04, 02:00 Paris: Thursday's window is open, Friday's date opened, and
        // Wednesday's (closed at 06:00 Thursday) stays live for a day, so a tracker restarted
        // after an outage still raises what it owes.
        let dates = live_dates(&s, &cal, t("2026-12-04T01:00:00Z"), created);
        assert_eq!(
            dates,
            vec![
                "2026-12-02".parse::<NaiveDate>().unwrap(),
                "2026-12-03".parse().unwrap(),
                "2026-12-04".parse().unwrap()
            ]
        );
        // Saturday noon: Friday's window closed at 06:00 Saturday and is kept for the day;
        // Thursday's is gone; the weekend is not a business date.
        let dates = live_dates(&s, &cal, t("2026-12-05T11:00:00Z"), created);
        assert_eq!(dates, vec!["2026-12-04".parse::<NaiveDate>().unwrap()]);
    }

    #[test]
    fn dates_that_closed_before_the_slo_existed_are_not_tracked() {
        let cal = Calendar::new(CalendarKind::EveryDay, "UTC", []).unwrap();
        let s = spec("01:00", "02:00", 0);
        let created = t("2026-12-04T12:00:00Z");
        let dates = live_dates(&s, &cal, t("2026-12-04T13:00:00Z"), created);
        assert!(dates.is_empty(), "{dates:?}");
        let dates = live_dates(&s, &cal, t("2026-12-05T00:30:00Z"), created);
        assert_eq!(dates, vec!["2026-12-05".parse::<NaiveDate>().unwrap()]);
    }

    #[test]
    fn the_next_wake_is_the_earliest_timer_or_the_next_local_midnight() {
        let cal = Calendar::new(CalendarKind::EveryDay, "Asia/Kolkata", []).unwrap();
        let s = spec("10:00", "11:00", 30);
        let date: NaiveDate = "2026-12-04".parse().unwrap();
        let now = t("2026-12-04T03:00:00Z"); // 08:30 in Kolkata
        let row = evaluate(&s, &cal, date, &[], now);
        // Not started by 10:30 local = 05:00 UTC.
        assert_eq!(next_wake(&cal, &[row], now), t("2026-12-04T05:00:00Z"));
        // Nothing pending: the next local midnight (18:30 UTC).
        assert_eq!(next_wake(&cal, &[], now), t("2026-12-04T18:30:00Z"));
    }

    #[test]
    fn statuses_parse_and_alerts_print() {
        assert_eq!(ReportKind::parse("succeed"), Some(ReportKind::Succeed));
        assert_eq!(ReportKind::parse("done"), None);
        assert_eq!(Alert::Breached.as_str(), "breached");
    }
}
