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
//! * a successful run shorter than its job's minimum duration is flagged as suspicious;
//! * a *repeating* job (every 30 minutes from 06:00 to 18:00) is one job per occurrence,
//!   `job@HH:MM` after its expected start, each run assigned to the occurrence whose expected
//!   start is nearest its first report. Each occurrence has its own `late` and `breached` (at
//!   its end and its end plus the tolerance); the day is `late` when any occurrence finished
//!   after its own end, and its expected end is the last occurrence's.

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
    /// A job that runs several times a business date (every 30 minutes from 06:00 to 18:00):
    /// each occurrence is expected in the window shifted by a multiple of `every`.
    pub repeat: Option<Repeat>,
}

/// How a job repeats within a business date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub every: Duration,
    /// The last occurrence's expected start is at or before this.
    pub until: Offset,
}

impl JobExpectation {
    /// Its occurrences on a business date, each a job of its own: itself when it does not
    /// repeat, else `job@HH:MM` (the occurrence's expected start) for every start from
    /// `expected_start` to `until`, `every` apart.
    pub fn occurrences(&self) -> Vec<JobExpectation> {
        let Some(repeat) = self.repeat.filter(|r| r.every > Duration::zero()) else {
            return vec![self.clone()];
        };
        let step = repeat.every.num_minutes().max(1);
        let first = i64::from(self.expected_start.minutes());
        let span = i64::from(self.expected_end.minutes()) - first;
        (first..=i64::from(repeat.until.minutes()))
            .step_by(step as usize)
            .filter_map(|start| {
                let s = Offset::from_minutes(start).ok()?;
                let e = Offset::from_minutes(start + span).ok()?;
                Some(JobExpectation {
                    job: format!("{}@{s}", self.job),
                    expected_start: s,
                    expected_end: e,
                    min_duration: self.min_duration,
                    repeat: None,
                })
            })
            .collect()
    }

    /// The expected end of its last occurrence (its own expected end when it does not repeat).
    pub fn last_end(&self) -> Offset {
        let Some(repeat) = self.repeat.filter(|r| r.every > Duration::zero()) else {
            return self.expected_end;
        };
        let step = repeat.every.num_minutes().max(1);
        let first = i64::from(self.expected_start.minutes());
        let last = (i64::from(repeat.until.minutes()) - first).max(0) / step * step;
        Offset::from_minutes(i64::from(self.expected_end.minutes()) + last)
            .unwrap_or(self.expected_end)
    }
}

/// The reports with each run of a repeating job renamed to its occurrence (`job@HH:MM`): the
/// occurrence whose expected start is nearest the run's first report.
pub fn assign_occurrences(
    spec: &SloSpec,
    calendar: &Calendar,
    date: NaiveDate,
    reports: &[Report],
) -> Vec<Report> {
    let mut out: Vec<Report> = reports.to_vec();
    for job in spec.jobs.iter().filter(|j| j.repeat.is_some()) {
        let occurrences = job.occurrences();
        let mut first: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
        for r in reports.iter().filter(|r| r.job == job.job) {
            let at = first.entry(r.run_id.as_str()).or_insert(r.at);
            *at = (*at).min(r.at);
        }
        let label: BTreeMap<&str, String> = first
            .into_iter()
            .filter_map(|(run, at)| {
                let nearest = occurrences.iter().min_by_key(|o| {
                    (calendar.at(date, o.expected_start) - at)
                        .num_seconds()
                        .abs()
                })?;
                Some((run, nearest.job.clone()))
            })
            .collect();
        for r in out.iter_mut().filter(|r| r.job == job.job) {
            if let Some(l) = label.get(r.run_id.as_str()) {
                r.job = l.clone();
            }
        }
    }
    out
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
    /// Alerts due at `now` for occurrences of repeating jobs (`late`, `breached`).
    pub occurrence_alerts: Vec<OccurrenceAlert>,
    pub too_fast: Vec<TooFast>,
    /// When the row may change without a report (the tracker's next timer), if ever.
    pub wake_at: Option<DateTime<Utc>>,
}

/// An alert for one occurrence of a repeating job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OccurrenceAlert {
    /// `job@HH:MM`: the job and the occurrence's expected start.
    pub occurrence: String,
    pub alert: Alert,
    pub expected_end: DateTime<Utc>,
    /// The occurrence's end, if it finished (late, or failed).
    pub actual_end: Option<DateTime<Utc>>,
}

impl Performance {
    /// Every alert due: the SLO's own (no occurrence), then its occurrences'.
    pub fn due(&self) -> impl Iterator<Item = (Option<&str>, Alert)> {
        self.alerts.iter().map(|a| (None, *a)).chain(
            self.occurrence_alerts
                .iter()
                .map(|o| (Some(o.occurrence.as_str()), o.alert)),
        )
    }
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
    // A repeating job is one job per occurrence, each run assigned to its occurrence.
    let expanded;
    let assigned;
    let (spec, reports, occurrence) = if spec.jobs.iter().any(|j| j.repeat.is_some()) {
        let mut occurrence = Vec::new();
        let mut jobs = Vec::new();
        for j in &spec.jobs {
            for o in j.occurrences() {
                occurrence.push(j.repeat.is_some());
                jobs.push(o);
            }
        }
        expanded = SloSpec {
            jobs,
            start_grace: spec.start_grace,
            tolerance: spec.tolerance,
        };
        assigned = assign_occurrences(spec, calendar, date, reports);
        (&expanded, assigned.as_slice(), occurrence)
    } else {
        (spec, reports, vec![false; spec.jobs.len()])
    };
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
    // Each occurrence of a repeating job has its own expected end: late and breached apply
    // to it alone (a job due every 30 minutes is late at 10:10, not at 18:10), and its timers
    // run on after the SLO settled (a failure at 07:00 leaves 07:30 to be watched).
    let mut occurrence_alerts = Vec::new();
    let mut occurrence_wakes = Vec::new();
    let mut occurrence_late = false;
    for ((job, state), _) in spec
        .jobs
        .iter()
        .zip(&states)
        .zip(&occurrence)
        .filter(|(_, is)| **is)
    {
        let end = calendar.at(date, job.expected_end);
        let due = end + spec.tolerance;
        let finished = state.finished;
        let unfinished_at = |t: DateTime<Utc>| finished.is_none_or(|f| f.0 > t);
        let failed = finished.is_some_and(|f| f.1);
        let alert = |alert| OccurrenceAlert {
            occurrence: job.job.clone(),
            alert,
            expected_end: end,
            actual_end: finished.map(|f| f.0),
        };
        if now >= end && unfinished_at(end) && !(failed && finished.is_some_and(|f| f.0 <= end)) {
            occurrence_alerts.push(alert(Alert::Late));
        }
        if failed || (now >= due && unfinished_at(due)) {
            occurrence_alerts.push(alert(Alert::Breached));
        }
        occurrence_late |= finished.is_some_and(|f| f.0 > end);
        if finished.is_none() {
            occurrence_wakes.extend([end, due]);
        }
    }
    let status = if status == Status::OnTime && occurrence_late {
        Status::Late
    } else {
        status
    };
    let settled = failed || actual_end.is_some();
    let slo_wakes = if settled {
        Vec::new()
    } else {
        [
            (actual_start.is_none()).then_some(start_by),
            Some(expected_end),
            Some(deadline),
        ]
        .into_iter()
        .flatten()
        .collect()
    };
    let wake_at = slo_wakes
        .into_iter()
        .chain(occurrence_wakes)
        .filter(|t| *t > now)
        .min();
    Performance {
        business_date: date,
        expected_start,
        expected_end,
        actual_start,
        actual_end,
        status,
        late_by,
        alerts,
        occurrence_alerts,
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
                    repeat: None,
                },
                JobExpectation {
                    job: "dss-load".into(),
                    expected_start: o("27:00"),
                    expected_end: o("29:00"),
                    min_duration: None,
                    repeat: None,
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

    #[test]
    fn a_half_hourly_job_is_late_per_occurrence() {
        // Every 30 minutes from 06:00 to 07:00, each due 10 minutes after its start.
        let spec = SloSpec {
            jobs: vec![JobExpectation {
                job: "tx-summary".into(),
                expected_start: o("06:00"),
                expected_end: o("06:10"),
                min_duration: None,
                repeat: Some(Repeat {
                    every: Duration::minutes(30),
                    until: o("07:00"),
                }),
            }],
            start_grace: Duration::minutes(5),
            tolerance: Duration::minutes(10),
        };
        let names: Vec<String> = spec.jobs[0]
            .occurrences()
            .into_iter()
            .map(|j| j.job)
            .collect();
        assert_eq!(
            names,
            ["tx-summary@06:00", "tx-summary@06:30", "tx-summary@07:00"]
        );
        let cal = Calendar::new(CalendarKind::EveryDay, "UTC", []).unwrap();
        let date = DATE.parse().unwrap();
        let reports = [
            rep("tx-summary", "a", ReportKind::Start, "2026-12-03T06:01:00Z"),
            rep(
                "tx-summary",
                "a",
                ReportKind::Succeed,
                "2026-12-03T06:08:00Z",
            ),
            // Started a little early for 06:30, finished late for it.
            rep("tx-summary", "b", ReportKind::Start, "2026-12-03T06:28:00Z"),
            rep(
                "tx-summary",
                "b",
                ReportKind::Succeed,
                "2026-12-03T06:45:00Z",
            ),
        ];
        let p = evaluate(&spec, &cal, date, &reports, t("2026-12-03T07:12:00Z"));
        assert_eq!(
            p.due().collect::<Vec<_>>(),
            vec![
                // The SLO's own: its day (to 07:10) is not done either.
                (None, Alert::Late),
                (Some("tx-summary@06:30"), Alert::Late),
                (Some("tx-summary@07:00"), Alert::Late),
            ]
        );
        assert_eq!(
            p.occurrence_alerts[0].actual_end,
            Some(t("2026-12-03T06:45:00Z"))
        );
        assert_eq!(spec.jobs[0].last_end(), o("07:10"));
        assert_eq!(p.status, Status::Late);
        // The 07:00 run's deadline (07:20) is the next timer.
        assert_eq!(p.wake_at, Some(t("2026-12-03T07:20:00Z")));
        // Once the 07:00 run is in on time, the day is done — and late, for 06:30.
        let mut all = reports.to_vec();
        all.push(rep(
            "tx-summary",
            "c",
            ReportKind::Start,
            "2026-12-03T07:00:00Z",
        ));
        all.push(rep(
            "tx-summary",
            "c",
            ReportKind::Succeed,
            "2026-12-03T07:05:00Z",
        ));
        let p = evaluate(&spec, &cal, date, &all, t("2026-12-03T07:06:00Z"));
        assert_eq!(p.actual_end, Some(t("2026-12-03T07:05:00Z")));
        assert_eq!(p.status, Status::Late);
        assert_eq!(
            p.due().collect::<Vec<_>>(),
            vec![(Some("tx-summary@06:30"), Alert::Late)]
        );
        assert_eq!(p.wake_at, None);
    }

    #[test]
    fn a_failed_occurrence_leaves_the_later_ones_watched() {
        let spec = SloSpec {
            jobs: vec![JobExpectation {
                job: "tx-summary".into(),
                expected_start: o("06:10"),
                expected_end: o("06:20"),
                min_duration: None,
                repeat: Some(Repeat {
                    every: Duration::minutes(30),
                    until: o("07:10"),
                }),
            }],
            start_grace: Duration::minutes(5),
            tolerance: Duration::minutes(5),
        };
        let cal = Calendar::new(CalendarKind::EveryDay, "UTC", []).unwrap();
        let date = DATE.parse().unwrap();
        let reports = [
            rep("tx-summary", "a", ReportKind::Start, "2026-12-03T06:10:00Z"),
            rep("tx-summary", "a", ReportKind::Fail, "2026-12-03T06:12:00Z"),
        ];
        let p = evaluate(&spec, &cal, date, &reports, t("2026-12-03T06:13:00Z"));
        assert_eq!(p.status, Status::Failed);
        assert_eq!(
            p.due().collect::<Vec<_>>(),
            vec![
                (None, Alert::Breached),
                (Some("tx-summary@06:10"), Alert::Breached)
            ]
        );
        // The 06:40 occurrence is still due: its end is the next timer, and it goes late.
        assert_eq!(p.wake_at, Some(t("2026-12-03T06:50:00Z")));
        let p = evaluate(&spec, &cal, date, &reports, t("2026-12-03T06:50:00Z"));
        assert!(
            p.due()
                .any(|d| d == (Some("tx-summary@06:40"), Alert::Late))
        );
        // The last occurrence's deadline bounds the date.
        assert_eq!(spec.jobs[0].last_end(), o("07:20"));
        assert_eq!(
            crate::slo::tracking::deadline(&spec, &cal, date),
            t("2026-12-03T07:25:00Z")
        );
    }
}
