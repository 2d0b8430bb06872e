//! An SLO's report over many business dates (issue 16): per job, duration percentiles and a
//! robust trend with the business date on which, at that trend, the job outgrows its window;
//! for the SLO, the shares of dates finished late or early by more than a margin, and a
//! suggested expected end.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;

use super::calendar::{Calendar, Offset};
use super::performance::{Report, ReportKind, SloSpec, evaluate};
use super::trend::{percentile, projected_miss, shares, theil_sen};

/// One job over the dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTrend {
    pub job: String,
    /// Dates with a successful run (the samples).
    pub samples: usize,
    /// Duration percentiles, seconds (earliest start to latest success of the date).
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub p99: Option<i64>,
    /// Seconds of duration gained per business date (Theil–Sen; positive: slowing).
    pub slope: Option<Decimal>,
    /// The business date on which the trend reaches the job's window (expected end minus
    /// expected start), within `horizon` business dates.
    pub projected_miss: Option<NaiveDate>,
}

/// The SLO over the dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SloReport {
    pub dates: usize,
    /// Dates on which every job finished.
    pub finished: usize,
    /// Percentages of finished dates late, or early, by more than the margin.
    pub late_share: Option<Decimal>,
    pub early_share: Option<Decimal>,
    /// The 90th percentile of the actual ends, rounded up to 5 minutes, as an expected end.
    pub suggested_expected_end: Option<Offset>,
    pub jobs: Vec<JobTrend>,
}

/// An instant a run reached, if it did.
type At = Option<DateTime<Utc>>;

/// Reports `spec` over the business `dates` (oldest first) from their reports.
pub fn report(
    spec: &SloSpec,
    calendar: &Calendar,
    dates: &[NaiveDate],
    reports: &BTreeMap<NaiveDate, Vec<Report>>,
    now: DateTime<Utc>,
    margin: Duration,
    horizon: i64,
) -> SloReport {
    let none: Vec<Report> = Vec::new();
    let mut lateness = Vec::new();
    let mut ends = Vec::new();
    for &date in dates {
        let p = evaluate(
            spec,
            calendar,
            date,
            reports.get(&date).unwrap_or(&none),
            now,
        );
        if let Some(end) = p.actual_end {
            lateness.push((end - p.expected_end).num_seconds());
            ends.push(calendar.minutes_after(date, end));
        }
    }
    let (late_share, early_share) = shares(&lateness, margin.num_seconds()).unzip();
    let suggested_expected_end = percentile(&ends, 90)
        .map(|m| (m.max(0) + 4) / 5 * 5)
        .and_then(|m| Offset::from_minutes(m).ok());

    let jobs = spec
        .jobs
        .iter()
        .map(|j| {
            let mut points = Vec::new();
            for (x, date) in dates.iter().enumerate() {
                let of_job = reports
                    .get(date)
                    .into_iter()
                    .flatten()
                    .filter(|r| r.job == j.job);
                // A job's duration on a date: first start to last success; for a repeating
                // job, its longest run (start to success of one run id).
                // run id → (first start, last success)
                let mut runs: BTreeMap<&str, (At, At)> = BTreeMap::new();
                for r in of_job {
                    let key = if j.repeat.is_some() {
                        r.run_id.as_str()
                    } else {
                        ""
                    };
                    let (start, end) = runs.entry(key).or_default();
                    match r.kind {
                        ReportKind::Start => *start = Some(start.map_or(r.at, |s| s.min(r.at))),
                        ReportKind::Succeed => *end = Some(end.map_or(r.at, |e| e.max(r.at))),
                        ReportKind::Fail => {}
                    }
                }
                let longest = runs
                    .values()
                    .filter_map(|(s, e)| Some((*e)? - (*s)?))
                    .filter(|d| *d >= Duration::zero())
                    .max();
                if let Some(d) = longest {
                    points.push((x as i64, d.num_seconds()));
                }
            }
            let durations: Vec<i64> = points.iter().map(|p| p.1).collect();
            let trend = theil_sen(&points);
            let window =
                i64::from(j.expected_end.minutes()) - i64::from(j.expected_start.minutes());
            let last = dates.len() as i64 - 1;
            let projected = trend
                .as_ref()
                .and_then(|t| projected_miss(t, last, Decimal::from(window * 60), horizon))
                .and_then(|x| {
                    let mut d = *dates.last()?;
                    for _ in 0..(x - last) {
                        d = calendar.next_business_day(d)?;
                    }
                    Some(d)
                });
            JobTrend {
                job: j.job.clone(),
                samples: points.len(),
                p50: percentile(&durations, 50),
                p90: percentile(&durations, 90),
                p99: percentile(&durations, 99),
                slope: trend.map(|t| t.slope.round_dp(3)),
                projected_miss: projected,
            }
        })
        .collect();
    SloReport {
        dates: dates.len(),
        finished: lateness.len(),
        late_share,
        early_share,
        suggested_expected_end,
        jobs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::calendar::CalendarKind;
    use crate::slo::performance::JobExpectation;

    #[test]
    fn a_job_slowing_a_minute_a_day_is_projected_to_outgrow_its_window() {
        // A half-hourly style single job: window 01:00 → 02:00 (60 min), every day.
        let spec = SloSpec {
            jobs: vec![JobExpectation {
                job: "etl".into(),
                expected_start: Offset::parse("01:00").unwrap(),
                expected_end: Offset::parse("02:00").unwrap(),
                min_duration: None,
                repeat: None,
            }],
            start_grace: Duration::minutes(10),
            tolerance: Duration::zero(),
        };
        let cal = Calendar::new(CalendarKind::EveryDay, "UTC", []).unwrap();
        let first: NaiveDate = "2026-11-01".parse().unwrap();
        let dates: Vec<NaiveDate> = first.iter_days().take(30).collect();
        let mut reports = BTreeMap::new();
        for (i, d) in dates.iter().enumerate() {
            let start = cal.at(*d, Offset::parse("01:00").unwrap());
            // 30 min + 1 min per date: ends 01:30 … 01:59; date 9 is a 3-hour outlier.
            let minutes = if i == 9 { 180 } else { 30 + i as i64 };
            reports.insert(
                *d,
                vec![
                    Report {
                        job: "etl".into(),
                        run_id: "r".into(),
                        kind: ReportKind::Start,
                        at: start,
                    },
                    Report {
                        job: "etl".into(),
                        run_id: "r".into(),
                        kind: ReportKind::Succeed,
                        at: start + Duration::minutes(minutes),
                    },
                ],
            );
        }
        let now: DateTime<Utc> = "2026-12-10T00:00:00Z".parse().unwrap();
        let r = report(
            &spec,
            &cal,
            &dates,
            &reports,
            now,
            Duration::minutes(5),
            365,
        );
        assert_eq!(r.dates, 30);
        assert_eq!(r.finished, 30);
        let job = &r.jobs[0];
        assert_eq!(job.samples, 30);
        assert_eq!(
            job.slope,
            Some(Decimal::from(60)),
            "60 s per date, outlier ignored"
        );
        // 30 min + 1 min × x reaches 60 min at x = 30: the first date after the 30 measured.
        assert_eq!(job.projected_miss, Some("2026-12-01".parse().unwrap()));
        assert_eq!(job.p50, Some((30 + 15) * 60));
        // Only the outlier ends after 02:00 + 5 min.
        assert_eq!(r.late_share, Some(Decimal::new(333, 2)));
        // Ends 01:30 + i min: before 01:55 for i < 25, the outlier aside: 24 of 30.
        assert_eq!(r.early_share, Some(Decimal::from(80)));
        // p90 of the ends (01:56 → 02:00 after rounding up to 5 minutes).
        assert_eq!(r.suggested_expected_end, Offset::parse("02:00").ok());
    }

    #[test]
    fn a_repeating_job_is_measured_by_its_longest_run() {
        let o = |s: &str| Offset::parse(s).unwrap();
        let spec = SloSpec {
            jobs: vec![JobExpectation {
                job: "tx-summary".into(),
                expected_start: o("06:00"),
                expected_end: o("06:10"),
                min_duration: None,
                repeat: Some(crate::slo::performance::Repeat {
                    every: Duration::minutes(30),
                    until: o("07:00"),
                }),
            }],
            start_grace: Duration::minutes(5),
            tolerance: Duration::zero(),
        };
        let cal = Calendar::new(CalendarKind::EveryDay, "UTC", []).unwrap();
        let date: NaiveDate = "2026-11-01".parse().unwrap();
        let run = |id: &str, start: &str, minutes: i64| {
            let at = cal.at(date, o(start));
            [
                Report {
                    job: "tx-summary".into(),
                    run_id: id.into(),
                    kind: ReportKind::Start,
                    at,
                },
                Report {
                    job: "tx-summary".into(),
                    run_id: id.into(),
                    kind: ReportKind::Succeed,
                    at: at + Duration::minutes(minutes),
                },
            ]
        };
        let reports = BTreeMap::from([(
            date,
            [
                run("a", "06:00", 5),
                run("b", "06:30", 9),
                run("c", "07:00", 4),
            ]
            .concat(),
        )]);
        let now: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().unwrap();
        let r = report(&spec, &cal, &[date], &reports, now, Duration::zero(), 365);
        assert_eq!(r.jobs[0].samples, 1);
        assert_eq!(r.jobs[0].p50, Some(9 * 60));
        // The day ended at 07:04, the last occurrence's expected end being 07:10.
        assert_eq!(r.finished, 1);
    }
}
