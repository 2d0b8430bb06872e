//! One SLO on one business date: what was expected, what happened, its status, which alerts
//! are due, and when to look again — from the job reports alone, at an injected `now`.
//!
//! Rules:
//! * expected start = the earliest of the jobs' expected starts; expected end = the latest of
//!   their expected ends (instants from the calendar, [`Calendar::at`]);
//! * a job's runs are tracked separately by run id (overlapping runs are normal). A job is
//!   *finished* once it has a run and every run that started has ended; its end is the latest
//!   run end; it *failed* when its last run to end failed (a failed run followed by a
//!   successful rerun is a success);
//! * actual start = the earliest run start; actual end = the latest job end, or none while any
//!   job is unfinished (or has not run);
//! * status: `failed` when a job failed; `on_time` / `late` once every job finished (by the
//!   expected end, or after it); before that `missed` past the expected end plus the tolerance,
//!   `late` past the expected end, `in_progress` once a job started, else `pending`;
//! * alerts (each once per SLO and business date; the adapter keeps the marker): `not_started`
//!   when nothing started by the expected start plus the start grace, `late` when the expected
//!   end passed unfinished, `breached` when the tolerance passed unfinished or a job failed;
//! * a successful run shorter than its job's minimum duration is flagged as suspicious.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::calendar::{Calendar, Offset};

/// A job an SLO depends on, and when it is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExpectation {
    pub job: String,
    pub expected_start: Offset,
    pub expected_end: Offset,
    /// A successful run shorter than this is suspicious (it "succeeded" without working).
    pub min_duration: Option<Duration>,
}

/// An SLO's expectations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SloSpec {
    pub jobs: Vec<JobExpectation>,
    /// How long after the expected start nothing may have started before `not_started`.
    pub start_grace: Duration,
    /// How late after the expected end the SLO may finish before it is breached.
    pub tolerance: Duration,
}

/// What a scheduler reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Start,
    Succeed,
    Fail,
}

/// One job-status report of the business date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub job: String,
    pub run_id: String,
    pub kind: ReportKind,
    pub at: DateTime<Utc>,
}

/// The status of an SLO on a business date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    InProgress,
    OnTime,
    Late,
    Failed,
    Missed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::OnTime => "on_time",
            Self::Late => "late",
            Self::Failed => "failed",
            Self::Missed => "missed",
        }
    }
}

/// An alert an SLO owes for a business date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alert {
    NotStarted,
    Late,
    Breached,
}

/// A successful run suspiciously short for its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooFast {
    pub job: String,
    pub run_id: String,
    pub duration: Duration,
    pub min_duration: Duration,
}

/// The SLO's row for the business date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Performance {
    pub business_date: NaiveDate,
    pub expected_start: DateTime<Utc>,
    pub expected_end: DateTime<Utc>,
    pub actual_start: Option<DateTime<Utc>>,
    pub actual_end: Option<DateTime<Utc>>,
    pub status: Status,
    /// How late: the actual end past the expected end, or (unfinished) `now` past it.
    pub late_by: Option<Duration>,
    /// Alerts due at `now` (the adapter sends each once).
    pub alerts: Vec<Alert>,
    pub too_fast: Vec<TooFast>,
    /// When the row may change without a report (the tracker's next timer), if ever.
    pub wake_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Run {
    start: Option<DateTime<Utc>>,
    end: Option<(DateTime<Utc>, bool)>,
}

/// A job's outcome so far.
struct JobState {
    start: Option<DateTime<Utc>>,
    /// (end, failed) once finished.
    finished: Option<(DateTime<Utc>, bool)>,
}

fn job_state(runs: &BTreeMap<&str, Run>) -> JobState {
    let start = runs
        .values()
        .filter_map(|r| r.start.or(r.end.map(|e| e.0)))
        .min();
    let all_ended = !runs.is_empty() && runs.values().all(|r| r.end.is_some());
    let finished = if all_ended {
        runs.values()
            .filter_map(|r| r.end)
            .max_by_key(|(at, _)| *at)
    } else {
        None
    };
    JobState { start, finished }
}

/// Evaluates `spec` on `date` at `now` from the date's `reports` (any order).
pub fn evaluate(
    spec: &SloSpec,
    calendar: &Calendar,
    date: NaiveDate,
    reports: &[Report],
    now: DateTime<Utc>,
) -> Performance {
    let expected_start = spec
        .jobs
        .iter()
        .map(|j| calendar.at(date, j.expected_start))
        .min()
        .unwrap_or_else(|| calendar.at(date, Offset::MIDNIGHT));
    let expected_end = spec
        .jobs
        .iter()
        .map(|j| calendar.at(date, j.expected_end))
        .max()
        .unwrap_or(expected_start);

    // Runs per job, by run id.
    let mut runs: BTreeMap<&str, BTreeMap<&str, Run>> = BTreeMap::new();
    for r in reports {
        if !spec.jobs.iter().any(|j| j.job == r.job) {
            continue;
        }
        let run = runs
            .entry(r.job.as_str())
            .or_default()
            .entry(r.run_id.as_str())
            .or_default();
        match r.kind {
            ReportKind::Start => run.start = Some(run.start.map_or(r.at, |s| s.min(r.at))),
            ReportKind::Succeed => run.end = Some((r.at, false)),
            ReportKind::Fail => run.end = Some((r.at, true)),
        }
    }
    let mut too_fast = Vec::new();
    for j in &spec.jobs {
        let (Some(min), Some(job_runs)) = (j.min_duration, runs.get(j.job.as_str())) else {
            continue;
        };
        for (run_id, run) in job_runs {
            if let (Some(start), Some((end, false))) = (run.start, run.end)
                && end - start < min
            {
                too_fast.push(TooFast {
                    job: j.job.clone(),
                    run_id: (*run_id).to_owned(),
                    duration: end - start,
                    min_duration: min,
                });
            }
        }
    }
    let empty = BTreeMap::new();
    let states: Vec<JobState> = spec
        .jobs
        .iter()
        .map(|j| job_state(runs.get(j.job.as_str()).unwrap_or(&empty)))
        .collect();
    let actual_start = states.iter().filter_map(|s| s.start).min();
    let failed = states.iter().any(|s| s.finished.is_some_and(|f| f.1));
    let all_finished = !states.is_empty() && states.iter().all(|s| s.finished.is_some());
    let actual_end = if all_finished {
        states.iter().filter_map(|s| s.finished.map(|f| f.0)).max()
    } else {
        None
    };
    let deadline = expected_end + spec.tolerance;
    let status = if failed {
        Status::Failed
    } else if let Some(end) = actual_end {
        if end <= expected_end {
            Status::OnTime
        } else {
            Status::Late
        }
    } else if now >= deadline {
        Status::Missed
    } else if now >= expected_end {
        Status::Late
    } else if actual_start.is_some() {
        Status::InProgress
    } else {
        Status::Pending
    };
    let late_by = match actual_end {
        Some(end) if end > expected_end => Some(end - expected_end),
        Some(_) => None,
        None if now >= expected_end && !failed => Some(now - expected_end),
        None => None,
    };

    // Alerts: each judged against what was known at its moment.
    let unfinished_at = |t: DateTime<Utc>| actual_end.is_none_or(|end| end > t);
    let start_by = expected_start + spec.start_grace;
    let mut alerts = Vec::new();
    if now >= start_by && actual_start.is_none_or(|s| s > start_by) {
        alerts.push(Alert::NotStarted);
    }
    if now >= expected_end && unfinished_at(expected_end) && !(failed && actual_end.is_none()) {
        alerts.push(Alert::Late);
    }
    if failed || (now >= deadline && unfinished_at(deadline)) {
        alerts.push(Alert::Breached);
    }
    let settled = failed || actual_end.is_some();
    let wake_at = if settled {
        None
    } else {
        [
            (actual_start.is_none()).then_some(start_by),
            Some(expected_end),
            Some(deadline),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
    };
    Performance {
        business_date: date,
        expected_start,
        expected_end,
        actual_start,
        actual_end,
        status,
        late_by,
        alerts,
        too_fast,
        wake_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::calendar::CalendarKind;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn o(s: &str) -> Offset {
        Offset::parse(s).unwrap()
    }

    /// The Foxfire chain: the overdraft calculation by 03:00 the next day, the DSS load by
    /// 05:00 (both on a UTC calendar here).
    fn chain() -> (SloSpec, Calendar) {
        let spec = SloSpec {
            jobs: vec![
                JobExpectation {
                    job: "overdraft".into(),
                    expected_start: o("23:00"),
                    expected_end: o("27:00"),
                    min_duration: Some(Duration::minutes(10)),
                },
                JobExpectation {
                    job: "dss-load".into(),
                    expected_start: o("27:00"),
                    expected_end: o("29:00"),
                    min_duration: None,
                },
            ],
            start_grace: Duration::minutes(30),
            tolerance: Duration::hours(1),
        };
        (
            spec,
            Calendar::new(CalendarKind::Standard, "UTC", []).unwrap(),
        )
    }

    fn rep(job: &str, run: &str, kind: ReportKind, at: &str) -> Report {
        Report {
            job: job.into(),
            run_id: run.into(),
            kind,
            at: t(at),
        }
    }

    const DATE: &str = "2026-12-03";

    #[test]
    fn before_anything_runs_it_is_pending_and_wakes_at_the_start_grace() {
        let (spec, cal) = chain();
        let p = evaluate(
            &spec,
            &cal,
            DATE.parse().unwrap(),
            &[],
            t("2026-12-03T22:00:00Z"),
        );
        assert_eq!(p.status, Status::Pending);
        assert_eq!(p.expected_start, t("2026-12-03T23:00:00Z"));
        assert_eq!(p.expected_end, t("2026-12-04T05:00:00Z"));
        assert_eq!(p.wake_at, Some(t("2026-12-03T23:30:00Z")));
        assert!(p.alerts.is_empty());
        // Nothing by 23:30: not started, and the next timer is the expected end.
        let p = evaluate(
            &spec,
            &cal,
            DATE.parse().unwrap(),
            &[],
            t("2026-12-03T23:30:00Z"),
        );
        assert_eq!(p.alerts, vec![Alert::NotStarted]);
        assert_eq!(p.wake_at, Some(t("2026-12-04T05:00:00Z")));
    }

    #[test]
    fn a_chain_finished_by_the_expected_end_is_on_time() {
        let (spec, cal) = chain();
        let reports = [
            rep("overdraft", "r1", ReportKind::Start, "2026-12-03T23:05:00Z"),
            rep(
                "overdraft",
                "r1",
                ReportKind::Succeed,
                "2026-12-04T01:40:00Z",
            ),
            rep("dss-load", "r1", ReportKind::Start, "2026-12-04T03:00:00Z"),
        ];
        let date = DATE.parse().unwrap();
        let running = evaluate(&spec, &cal, date, &reports, t("2026-12-04T04:00:00Z"));
        assert_eq!(running.status, Status::InProgress);
        assert_eq!(running.actual_start, Some(t("2026-12-03T23:05:00Z")));
        assert_eq!(running.actual_end, None);
        let mut done = reports.to_vec();
        done.push(rep(
            "dss-load",
            "r1",
            ReportKind::Succeed,
            "2026-12-04T04:50:00Z",
        ));
        let p = evaluate(&spec, &cal, date, &done, t("2026-12-04T06:30:00Z"));
        assert_eq!(p.status, Status::OnTime);
        assert_eq!(p.actual_end, Some(t("2026-12-04T04:50:00Z")));
        assert!(p.alerts.is_empty(), "{:?}", p.alerts);
        assert_eq!(p.wake_at, None);
    }

    #[test]
    fn unfinished_at_the_expected_end_is_late_then_missed_past_the_tolerance() {
        let (spec, cal) = chain();
        let date = DATE.parse().unwrap();
        let reports = [rep(
            "overdraft",
            "r1",
            ReportKind::Start,
            "2026-12-03T23:05:00Z",
        )];
        let p = evaluate(&spec, &cal, date, &reports, t("2026-12-04T05:20:00Z"));
        assert_eq!(p.status, Status::Late);
        assert_eq!(p.late_by, Some(Duration::minutes(20)));
        assert_eq!(p.alerts, vec![Alert::Late]);
        assert_eq!(p.wake_at, Some(t("2026-12-04T06:00:00Z")));
        let p = evaluate(&spec, &cal, date, &reports, t("2026-12-04T06:00:00Z"));
        assert_eq!(p.status, Status::Missed);
        assert_eq!(p.alerts, vec![Alert::Late, Alert::Breached]);
        assert_eq!(p.wake_at, None);
        // Finishing later makes it late, by how much, and the alerts stand.
        let mut done = reports.to_vec();
        done.push(rep(
            "overdraft",
            "r1",
            ReportKind::Succeed,
            "2026-12-04T02:00:00Z",
        ));
        done.push(rep(
            "dss-load",
            "x",
            ReportKind::Start,
            "2026-12-04T03:00:00Z",
        ));
        done.push(rep(
            "dss-load",
            "x",
            ReportKind::Succeed,
            "2026-12-04T06:15:00Z",
        ));
        let p = evaluate(&spec, &cal, date, &done, t("2026-12-04T07:00:00Z"));
        assert_eq!(p.status, Status::Late);
        assert_eq!(p.late_by, Some(Duration::minutes(75)));
        assert_eq!(p.alerts, vec![Alert::Late, Alert::Breached]);
    }

    #[test]
    fn a_failure_breaches_and_a_successful_rerun_recovers() {
        let (spec, cal) = chain();
        let date = DATE.parse().unwrap();
        let failed = [
            rep("overdraft", "r1", ReportKind::Start, "2026-12-03T23:05:00Z"),
            rep("overdraft", "r1", ReportKind::Fail, "2026-12-03T23:50:00Z"),
        ];
        let p = evaluate(&spec, &cal, date, &failed, t("2026-12-04T00:00:00Z"));
        assert_eq!(p.status, Status::Failed);
        assert_eq!(p.alerts, vec![Alert::Breached]);
        let mut rerun = failed.to_vec();
        rerun.push(rep(
            "overdraft",
            "r2",
            ReportKind::Start,
            "2026-12-04T00:10:00Z",
        ));
        let p = evaluate(&spec, &cal, date, &rerun, t("2026-12-04T00:20:00Z"));
        assert_eq!(p.status, Status::InProgress, "the rerun is still running");
        rerun.push(rep(
            "overdraft",
            "r2",
            ReportKind::Succeed,
            "2026-12-04T01:10:00Z",
        ));
        let p = evaluate(&spec, &cal, date, &rerun, t("2026-12-04T01:20:00Z"));
        assert_eq!(
            p.status,
            Status::InProgress,
            "the chain's second job has not run"
        );
    }

    #[test]
    fn overlapping_runs_are_tracked_apart_and_too_fast_successes_are_flagged() {
        let (spec, cal) = chain();
        let date = DATE.parse().unwrap();
        let reports = [
            rep("overdraft", "a", ReportKind::Start, "2026-12-03T23:00:00Z"),
            rep("overdraft", "b", ReportKind::Start, "2026-12-03T23:10:00Z"),
            rep(
                "overdraft",
                "b",
                ReportKind::Succeed,
                "2026-12-03T23:12:00Z",
            ),
        ];
        let p = evaluate(&spec, &cal, date, &reports, t("2026-12-03T23:30:00Z"));
        // Run `a` is still going: the job is not finished.
        assert_eq!(p.status, Status::InProgress);
        assert_eq!(p.too_fast.len(), 1);
        assert_eq!(p.too_fast[0].run_id, "b");
        assert_eq!(p.too_fast[0].duration, Duration::minutes(2));
        // Reports for jobs the SLO does not name are ignored.
        let mut other = reports.to_vec();
        other.push(rep(
            "unrelated",
            "z",
            ReportKind::Fail,
            "2026-12-03T23:20:00Z",
        ));
        assert_eq!(
            evaluate(&spec, &cal, date, &other, t("2026-12-03T23:30:00Z")).status,
            Status::InProgress
        );
    }
}
