//! SLOs (`/v1/slos`, issue 16): an application's jobs done by a time on each business date of
//! a calendar, and their performance per business date — evaluated from the job reports by
//! the core's rules ([`tranche_core::slo::performance`]) when asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tranche_core::slo::calendar::{Calendar, Offset};
use tranche_core::slo::performance::{self, Report, SloSpec};

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::Deleted;
use super::{ApiContext, ApiTags};
use crate::postgres::slo::{self, CreateSlo, SloFields, SloJobRow, SloRow};

/// Most jobs one SLO depends on.
const MAX_JOBS: usize = 50;
/// Most business dates one performance request covers.
const MAX_DATES: usize = 366;

/// A job an SLO depends on.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SloJob {
    /// The job's name, as schedulers report it.
    pub job: String,
    /// `HH:MM` after the business date's local midnight; may pass 24:00 (`27:00` is 03:00 the
    /// next day), up to 168:00.
    pub expected_start: String,
    /// `HH:MM`, not before `expected_start`.
    pub expected_end: String,
    /// A successful run shorter than this (seconds) is flagged as suspicious.
    #[oai(nullable)]
    #[serde(default)]
    pub min_duration_seconds: Option<i32>,
    /// A job that runs several times a business date: minutes between occurrences (1–1440).
    /// Each occurrence is expected in the window `expected_start`–`expected_end` shifted by a
    /// multiple of this, is named `job@HH:MM` after its expected start, and is late or
    /// breached on its own. Requires `until`.
    #[oai(nullable)]
    #[serde(default)]
    pub every_minutes: Option<i32>,
    /// `HH:MM`: the last occurrence starts at or before this (with `every_minutes`; at most
    /// 288 occurrences a date).
    #[oai(nullable)]
    #[serde(default)]
    pub until: Option<String>,
}

/// An SLO.
#[derive(Debug, Clone, Object)]
pub struct Slo {
    pub id: i64,
    pub name: String,
    pub application_id: i64,
    pub application: String,
    pub calendar_id: i64,
    /// Minutes after the expected start by which something must have started.
    pub start_grace_minutes: i32,
    /// Minutes after the expected end the SLO may finish before it is breached.
    pub tolerance_minutes: i32,
    pub jobs: Vec<SloJob>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn hhmm(minutes: i32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl From<SloRow> for Slo {
    fn from(r: SloRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            application_id: r.application_id,
            application: r.application,
            calendar_id: r.calendar_id,
            start_grace_minutes: r.start_grace_minutes,
            tolerance_minutes: r.tolerance_minutes,
            jobs: r
                .jobs
                .into_iter()
                .map(|j| SloJob {
                    job: j.job,
                    expected_start: hhmm(j.expected_start_minutes),
                    expected_end: hhmm(j.expected_end_minutes),
                    min_duration_seconds: j.min_duration_seconds,
                    every_minutes: j.every_minutes,
                    until: j.until_minutes.map(hhmm),
                })
                .collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `POST /v1/slos`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SloInput {
    /// 1–100 of `A-Z a-z 0-9 . _ -`, unique per customer.
    pub name: String,
    pub application_id: i64,
    pub calendar_id: i64,
    /// 0–10080 (default 30).
    #[oai(nullable)]
    #[serde(default)]
    pub start_grace_minutes: Option<i32>,
    /// 0–10080 (default 0).
    #[oai(nullable)]
    #[serde(default)]
    pub tolerance_minutes: Option<i32>,
    /// 1 to 50 jobs, each once.
    pub jobs: Vec<SloJob>,
}

/// A successful run suspiciously shorter than its job's minimum.
#[derive(Debug, Clone, Object)]
pub struct TooFastRun {
    pub job: String,
    pub run_id: String,
    pub duration_seconds: i64,
    pub min_duration_seconds: i64,
}

/// An SLO on one business date.
#[derive(Debug, Clone, Object)]
pub struct SloPerformance {
    pub business_date: NaiveDate,
    /// The earliest of the jobs' expected starts.
    pub expected_start: DateTime<Utc>,
    /// The latest of the jobs' expected ends.
    pub expected_end: DateTime<Utc>,
    #[oai(nullable)]
    pub actual_start: Option<DateTime<Utc>>,
    /// The latest job end; null while any job is unfinished.
    #[oai(nullable)]
    pub actual_end: Option<DateTime<Utc>>,
    /// `pending`, `in_progress`, `on_time`, `late`, `failed` or `missed`.
    pub status: String,
    /// Seconds past the expected end (finished late, or still running after it).
    #[oai(nullable)]
    pub late_by_seconds: Option<i64>,
    /// Alerts due: `not_started`, `late`, `breached`.
    pub alerts: Vec<String>,
    /// Alerts due for occurrences of repeating jobs: `late`, `breached`.
    pub occurrence_alerts: Vec<OccurrenceAlert>,
    pub too_fast: Vec<TooFastRun>,
}

/// An alert due for one occurrence of a repeating job.
#[derive(Debug, Clone, Object)]
pub struct OccurrenceAlert {
    /// `job@HH:MM`: the job and the occurrence's expected start.
    pub occurrence: String,
    /// `late` or `breached`.
    pub alert: String,
    pub expected_end: DateTime<Utc>,
    #[oai(nullable)]
    pub actual_end: Option<DateTime<Utc>>,
}

/// `GET /v1/slos/{id}/performance`.
#[derive(Debug, Clone, Object)]
pub struct SloPerformances {
    pub slo_id: i64,
    /// One row per business date in the range, oldest first.
    pub dates: Vec<SloPerformance>,
}

/// An alert a tracker raised (its event was sent once).
#[derive(Debug, Clone, Object)]
pub struct RaisedAlert {
    /// `not_started`, `late` or `breached`.
    pub alert: String,
    pub raised_at: DateTime<Utc>,
    /// The occurrence of a repeating job it is about (`job@HH:MM`); null: the whole SLO.
    #[oai(nullable)]
    pub occurrence: Option<String>,
}

/// One SLO's tracked row on the live board.
#[derive(Debug, Clone, Object)]
pub struct BoardEntry {
    pub slo_id: i64,
    pub slo: String,
    pub application: String,
    pub business_date: NaiveDate,
    pub expected_start: DateTime<Utc>,
    pub expected_end: DateTime<Utc>,
    #[oai(nullable)]
    pub actual_start: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub actual_end: Option<DateTime<Utc>>,
    /// `pending`, `in_progress`, `on_time`, `late`, `failed` or `missed`.
    pub status: String,
    /// Seconds past the expected end (finished late, or still running at `evaluated_at`).
    #[oai(nullable)]
    pub late_by_seconds: Option<i64>,
    pub alerts: Vec<RaisedAlert>,
    /// When the tracker last changed the row.
    pub evaluated_at: DateTime<Utc>,
}

/// `GET /v1/slo-board`.
#[derive(Debug, Clone, Object)]
pub struct SloBoard {
    pub business_date: NaiveDate,
    /// By expected end, then name.
    pub slos: Vec<BoardEntry>,
}

/// Status values of a performance row.
const STATUSES: [&str; 6] = [
    "pending",
    "in_progress",
    "on_time",
    "late",
    "failed",
    "missed",
];

#[derive(ApiResponse)]
pub enum CreatedSlo {
    #[oai(status = 201)]
    Created(Json<Slo>),
}

fn slo_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("SLO {id} not found"))
}

/// The core's view of a stored SLO.
fn spec_of(row: &SloRow) -> ApiResult<(SloSpec, Calendar)> {
    row.spec().map_err(|e| {
        tracing::error!(slo.id = row.id, error = %e, "a stored SLO does not load");
        ApiError::internal()
    })
}

/// The job reports of the SLO's jobs for business dates in `[from, to]`, by date.
async fn reports_by_date(
    ctx: &ApiContext,
    customer_id: i64,
    row: &SloRow,
    spec: &SloSpec,
    from: NaiveDate,
    to: NaiveDate,
) -> ApiResult<BTreeMap<NaiveDate, Vec<Report>>> {
    let jobs: Vec<&str> = spec.jobs.iter().map(|j| j.job.as_str()).collect();
    let rows = slo::reports(&ctx.pool, customer_id, &row.application, &jobs, from, to).await?;
    let mut by_date: BTreeMap<NaiveDate, Vec<Report>> = BTreeMap::new();
    for (date, report) in rows.into_iter().filter_map(|r| r.into_core()) {
        by_date.entry(date).or_default().push(report);
    }
    Ok(by_date)
}

/// Checks a report's `days` and `margin_minutes` (defaults 30 and 15).
fn report_window(days: Option<i64>, margin: Option<i64>) -> ApiResult<(i64, i64)> {
    let days = days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(ApiError::invalid("days", "days must be between 1 and 366"));
    }
    let margin = margin.unwrap_or(15);
    if !(0..=1440).contains(&margin) {
        return Err(ApiError::invalid(
            "margin_minutes",
            "margin_minutes must be between 0 and 1440",
        ));
    }
    Ok((days, margin))
}

/// One SLO's trends over the last `days` up to today in its calendar's time zone.
async fn trend_report(
    ctx: &ApiContext,
    customer_id: i64,
    row: &SloRow,
    days: i64,
    margin: i64,
) -> ApiResult<SloTrendReport> {
    let (spec, calendar) = spec_of(row)?;
    let now = Utc::now();
    let to = calendar.local_date(now);
    let from = to - Duration::days(days - 1);
    let dates = calendar.business_dates(from, to);
    let by_date = reports_by_date(ctx, customer_id, row, &spec, from, to).await?;
    let r = tranche_core::slo::report::report(
        &spec,
        &calendar,
        &dates,
        &by_date,
        now,
        Duration::minutes(margin),
        366,
    );
    Ok(SloTrendReport {
        slo_id: row.id,
        from,
        to,
        dates: r.dates as i64,
        finished: r.finished as i64,
        margin_minutes: margin,
        late_share_percent: r.late_share.map(|d| d.to_string()),
        early_share_percent: r.early_share.map(|d| d.to_string()),
        suggested_expected_end: r.suggested_expected_end.map(|o| o.to_string()),
        jobs: r
            .jobs
            .into_iter()
            .map(|j| JobTrendReport {
                job: j.job,
                samples: j.samples as i64,
                p50_seconds: j.p50,
                p90_seconds: j.p90,
                p99_seconds: j.p99,
                slope_seconds_per_date: j.slope.map(|d| d.normalize().to_string()),
                projected_miss: j.projected_miss,
            })
            .collect(),
    })
}

/// A job slowing towards a miss.
#[derive(Debug, Clone, Object)]
pub struct SlowingJob {
    pub slo_id: i64,
    pub slo: String,
    pub job: String,
    /// Seconds of duration gained per business date (exact decimal string).
    #[oai(nullable)]
    pub slope_seconds_per_date: Option<String>,
    /// The business date on which, at this trend, it outgrows its window.
    pub projected_miss: NaiveDate,
}

/// An SLO routinely late or early.
#[derive(Debug, Clone, Object)]
pub struct RoutineSlo {
    pub slo_id: i64,
    pub slo: String,
    #[oai(nullable)]
    pub late_share_percent: Option<String>,
    #[oai(nullable)]
    pub early_share_percent: Option<String>,
    /// An expected end it routinely meets (`HH:MM` after the business date).
    #[oai(nullable)]
    pub suggested_expected_end: Option<String>,
}

/// `GET /v1/slo-reports`.
#[derive(Debug, Clone, Object)]
pub struct AccountSloReport {
    /// Jobs whose projected miss falls within the horizon, soonest first.
    pub slowing: Vec<SlowingJob>,
    pub routinely_late: Vec<RoutineSlo>,
    pub routinely_early: Vec<RoutineSlo>,
    /// Every SLO's report, by name.
    pub slos: Vec<SloTrendReport>,
}

/// Checks an SLO's body: its graces (defaults 30 and 0 minutes) and its jobs.
fn validated(b: &SloInput) -> ApiResult<(i32, i32, Vec<SloJobRow>)> {
    super::calendars::valid_name(&b.name)?;
    let minutes = |field: &str, v: Option<i32>, default: i32| -> ApiResult<i32> {
        let v = v.unwrap_or(default);
        if (0..=10_080).contains(&v) {
            Ok(v)
        } else {
            Err(ApiError::invalid(
                field,
                format!("{field} must be between 0 and 10080"),
            ))
        }
    };
    let start_grace_minutes = minutes("start_grace_minutes", b.start_grace_minutes, 30)?;
    let tolerance_minutes = minutes("tolerance_minutes", b.tolerance_minutes, 0)?;
    if b.jobs.is_empty() || b.jobs.len() > MAX_JOBS {
        return Err(ApiError::invalid(
            "jobs",
            format!("jobs must list 1 to {MAX_JOBS} jobs"),
        ));
    }
    let mut jobs: Vec<SloJobRow> = Vec::with_capacity(b.jobs.len());
    for (i, j) in b.jobs.iter().enumerate() {
        let f = |name: &str| format!("jobs[{i}].{name}");
        if j.job.is_empty() || j.job.chars().count() > 200 {
            return Err(ApiError::invalid(
                &f("job"),
                format!("{} must be 1 to 200 characters", f("job")),
            ));
        }
        if jobs.iter().any(|x| x.job == j.job) {
            return Err(ApiError::invalid(
                &f("job"),
                format!("{} is listed twice", f("job")),
            ));
        }
        let parse = |name: &str, text: &str| {
            Offset::parse(text)
                .map(|o| o.minutes() as i32)
                .map_err(|e| ApiError::invalid(&f(name), format!("{} {}", f(name), e.0)))
        };
        let start = parse("expected_start", &j.expected_start)?;
        let end = parse("expected_end", &j.expected_end)?;
        if end < start {
            return Err(ApiError::invalid(
                &f("expected_end"),
                format!("{} must not be before expected_start", f("expected_end")),
            ));
        }
        if j.min_duration_seconds.is_some_and(|s| s <= 0) {
            return Err(ApiError::invalid(
                &f("min_duration_seconds"),
                format!("{} must be positive", f("min_duration_seconds")),
            ));
        }
        let (every_minutes, until_minutes) = repeat(j, start, end, &f, parse)?;
        jobs.push(SloJobRow {
            job: j.job.clone(),
            expected_start_minutes: start,
            expected_end_minutes: end,
            min_duration_seconds: j.min_duration_seconds,
            every_minutes,
            until_minutes,
        });
    }
    Ok((start_grace_minutes, tolerance_minutes, jobs))
}

/// Most occurrences of a repeating job per business date (every 5 minutes, all day).
const MAX_OCCURRENCES: i32 = 288;

/// Checks a job's `every_minutes` and `until` (both or neither): (every, until in minutes).
fn repeat(
    j: &SloJob,
    start: i32,
    end: i32,
    f: &dyn Fn(&str) -> String,
    parse: impl Fn(&str, &str) -> ApiResult<i32>,
) -> ApiResult<(Option<i32>, Option<i32>)> {
    let (every, until) = match (j.every_minutes, j.until.as_deref()) {
        (None, None) => return Ok((None, None)),
        (Some(every), Some(until)) => (every, parse("until", until)?),
        (Some(_), None) => {
            return Err(ApiError::invalid(
                &f("until"),
                format!("{} is required with every_minutes", f("until")),
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                &f("every_minutes"),
                format!("{} is required with until", f("every_minutes")),
            ));
        }
    };
    if !(1..=1440).contains(&every) {
        return Err(ApiError::invalid(
            &f("every_minutes"),
            format!("{} must be between 1 and 1440", f("every_minutes")),
        ));
    }
    if until < start {
        return Err(ApiError::invalid(
            &f("until"),
            format!("{} must not be before expected_start", f("until")),
        ));
    }
    let occurrences = (until - start) / every + 1;
    if occurrences > MAX_OCCURRENCES {
        return Err(ApiError::invalid(
            &f("until"),
            format!(
                "{} gives {occurrences} occurrences a date; at most {MAX_OCCURRENCES}",
                f("until")
            ),
        ));
    }
    if i64::from(end) + i64::from((occurrences - 1) * every) > i64::from(Offset::MAX_MINUTES) {
        return Err(ApiError::invalid(
            &f("until"),
            format!("{}: the last occurrence must end by 168:00", f("until")),
        ));
    }
    Ok((Some(every), Some(until)))
}

/// What creating or replacing an SLO found wrong with its references.
fn refused(outcome: &CreateSlo, b: &SloInput) -> Option<ApiError> {
    match outcome {
        CreateSlo::Created(_) => None,
        CreateSlo::NoApplication => Some(ApiError::invalid(
            "application_id",
            format!(
                "application_id {} names no application of yours",
                b.application_id
            ),
        )),
        CreateSlo::NoCalendar => Some(ApiError::invalid(
            "calendar_id",
            format!("calendar_id {} names no calendar of yours", b.calendar_id),
        )),
    }
}

/// One job over the report's dates.
#[derive(Debug, Clone, Object)]
pub struct JobTrendReport {
    pub job: String,
    /// Business dates with a successful run.
    pub samples: i64,
    /// Duration percentiles in seconds (earliest start to latest success of a date).
    #[oai(nullable)]
    pub p50_seconds: Option<i64>,
    #[oai(nullable)]
    pub p90_seconds: Option<i64>,
    #[oai(nullable)]
    pub p99_seconds: Option<i64>,
    /// Seconds of duration gained per business date (Theil–Sen, robust to outliers; exact
    /// decimal string; positive: slowing down).
    #[oai(nullable)]
    pub slope_seconds_per_date: Option<String>,
    /// The business date on which, at this trend, the job's duration reaches its window
    /// (expected end − expected start); null if not within a year.
    #[oai(nullable)]
    pub projected_miss: Option<NaiveDate>,
}

/// `GET /v1/slos/{id}/report`.
#[derive(Debug, Clone, Object)]
pub struct SloTrendReport {
    pub slo_id: i64,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Business dates in the range.
    pub dates: i64,
    /// Of them, dates on which every job finished.
    pub finished: i64,
    pub margin_minutes: i64,
    /// Percentage of finished dates that ended more than the margin after the expected end.
    #[oai(nullable)]
    pub late_share_percent: Option<String>,
    /// … and more than the margin before it.
    #[oai(nullable)]
    pub early_share_percent: Option<String>,
    /// The 90th percentile of the actual ends (rounded up to 5 minutes), as `HH:MM` after the
    /// business date: an expected end the SLO routinely meets.
    #[oai(nullable)]
    pub suggested_expected_end: Option<String>,
    pub jobs: Vec<JobTrendReport>,
}

pub struct SlosApi;

#[OpenApi(tag = "ApiTags::Slo")]
impl SlosApi {
    /// Creates an SLO: the application's jobs, each expected between two times after the
    /// business date's midnight (in the calendar's time zone), on every business date.
    #[oai(path = "/v1/slos", method = "post", operation_id = "create_slo")]
    async fn create(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<SloInput>,
    ) -> ApiResult<CreatedSlo> {
        let b = body.0;
        let (start_grace_minutes, tolerance_minutes, jobs) = validated(&b)?;
        let created = slo::create_slo(
            &ctx.pool,
            tenant.customer_id,
            &SloFields {
                name: &b.name,
                application_id: b.application_id,
                calendar_id: b.calendar_id,
                start_grace_minutes,
                tolerance_minutes,
                jobs: &jobs,
            },
        )
        .await?;
        if let Some(e) = refused(&created, &b) {
            return Err(e);
        }
        match created {
            CreateSlo::Created(row) => Ok(CreatedSlo::Created(Json((*row).into()))),
            _ => Err(ApiError::internal()),
        }
    }

    /// Replaces an SLO's name, application, calendar, graces and jobs. Its tracker reloads at
    /// once; rows and alerts already recorded stay as they were.
    #[oai(path = "/v1/slos/:id", method = "put", operation_id = "replace_slo")]
    async fn replace(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<SloInput>,
    ) -> ApiResult<Json<Slo>> {
        let b = body.0;
        let (start_grace_minutes, tolerance_minutes, jobs) = validated(&b)?;
        let replaced = slo::replace_slo(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            &SloFields {
                name: &b.name,
                application_id: b.application_id,
                calendar_id: b.calendar_id,
                start_grace_minutes,
                tolerance_minutes,
                jobs: &jobs,
            },
        )
        .await?
        .ok_or_else(|| slo_not_found(id.0))?;
        if let Some(e) = refused(&replaced, &b) {
            return Err(e);
        }
        match replaced {
            CreateSlo::Created(row) => Ok(Json((*row).into())),
            _ => Err(ApiError::internal()),
        }
    }

    /// Your SLOs, by name.
    #[oai(path = "/v1/slos", method = "get", operation_id = "list_slos")]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Vec<Slo>>> {
        let rows = slo::slos(&ctx.pool, tenant.customer_id).await?;
        Ok(Json(rows.into_iter().map(Slo::from).collect()))
    }

    /// One SLO.
    #[oai(path = "/v1/slos/:id", method = "get", operation_id = "get_slo")]
    async fn get(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<Slo>> {
        let row = slo::slo(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| slo_not_found(id.0))?;
        Ok(Json(row.into()))
    }

    /// Deletes an SLO.
    #[oai(path = "/v1/slos/:id", method = "delete", operation_id = "delete_slo")]
    async fn delete(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Deleted> {
        if slo::delete(&ctx.pool, slo::Owned::Slo, tenant.customer_id, id.0).await? {
            Ok(Deleted::NoContent)
        } else {
            Err(slo_not_found(id.0))
        }
    }

    /// Trends over the last `days` (default 30, at most 366) up to today: per job, duration
    /// percentiles and a robust trend with the date it outgrows its window; for the SLO, the
    /// shares of dates late or early by more than `margin_minutes` (default 15) and a
    /// suggested expected end.
    #[oai(
        path = "/v1/slos/:id/report",
        method = "get",
        operation_id = "get_slo_report"
    )]
    async fn report(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        /// Calendar days back from today (1–366, default 30).
        #[oai(validator(minimum(value = "1"), maximum(value = "366")))]
        days: Query<Option<i64>>,
        /// Minutes early or late that count (0–1440, default 15).
        #[oai(validator(minimum(value = "0"), maximum(value = "1440")))]
        margin_minutes: Query<Option<i64>>,
    ) -> ApiResult<Json<SloTrendReport>> {
        let (days, margin) = report_window(days.0, margin_minutes.0)?;
        let row = slo::slo(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| slo_not_found(id.0))?;
        Ok(Json(
            trend_report(&ctx, tenant.customer_id, &row, days, margin).await?,
        ))
    }

    /// Trends across every SLO of the account over the last `days`: the jobs slowing towards a
    /// miss (projected within `horizon_days`, soonest first), the SLOs routinely late or early
    /// (more than `share_percent` of their finished dates beyond `margin_minutes`), and each
    /// SLO's report.
    #[oai(
        path = "/v1/slo-reports",
        method = "get",
        operation_id = "get_slo_reports"
    )]
    async fn reports(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// Calendar days back from today (1–366, default 30).
        #[oai(validator(minimum(value = "1"), maximum(value = "366")))]
        days: Query<Option<i64>>,
        /// Minutes early or late that count (0–1440, default 15).
        #[oai(validator(minimum(value = "0"), maximum(value = "1440")))]
        margin_minutes: Query<Option<i64>>,
        /// The share of finished dates that makes an SLO routinely late or early (1–100,
        /// default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        share_percent: Query<Option<i64>>,
        /// How far ahead a projected miss counts as slowing (1–366 days, default 90).
        #[oai(validator(minimum(value = "1"), maximum(value = "366")))]
        horizon_days: Query<Option<i64>>,
    ) -> ApiResult<Json<AccountSloReport>> {
        let (days, margin) = report_window(days.0, margin_minutes.0)?;
        let share = rust_decimal::Decimal::from(share_percent.0.unwrap_or(20).clamp(1, 100));
        let horizon =
            Utc::now().date_naive() + Duration::days(horizon_days.0.unwrap_or(90).clamp(1, 366));
        let mut out = AccountSloReport {
            slowing: Vec::new(),
            routinely_late: Vec::new(),
            routinely_early: Vec::new(),
            slos: Vec::new(),
        };
        for row in slo::slos(&ctx.pool, tenant.customer_id).await? {
            let report = trend_report(&ctx, tenant.customer_id, &row, days, margin).await?;
            for j in &report.jobs {
                if let Some(miss) = j.projected_miss.filter(|d| *d <= horizon) {
                    out.slowing.push(SlowingJob {
                        slo_id: row.id,
                        slo: row.name.clone(),
                        job: j.job.clone(),
                        slope_seconds_per_date: j.slope_seconds_per_date.clone(),
                        projected_miss: miss,
                    });
                }
            }
            let beyond = |p: &Option<String>| {
                p.as_deref()
                    .and_then(|v| v.parse::<rust_decimal::Decimal>().ok())
                    .is_some_and(|v| v >= share)
            };
            let routine = || RoutineSlo {
                slo_id: row.id,
                slo: row.name.clone(),
                late_share_percent: report.late_share_percent.clone(),
                early_share_percent: report.early_share_percent.clone(),
                suggested_expected_end: report.suggested_expected_end.clone(),
            };
            if beyond(&report.late_share_percent) {
                out.routinely_late.push(routine());
            }
            if beyond(&report.early_share_percent) {
                out.routinely_early.push(routine());
            }
            out.slos.push(report);
        }
        out.slowing.sort_by_key(|a| a.projected_miss);
        Ok(Json(out))
    }

    /// The live board: every SLO's row for a business date as its tracker keeps it (woken by
    /// job reports and by timers at the expected times), with the alerts raised. Only dates a
    /// tracker has opened appear (`GET /v1/slos/{id}/performance` evaluates any date).
    #[oai(path = "/v1/slo-board", method = "get", operation_id = "get_slo_board")]
    async fn board(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// The business date (`YYYY-MM-DD`; default today in UTC).
        business_date: Query<Option<NaiveDate>>,
        /// Only rows of this status.
        status: Query<Option<String>>,
    ) -> ApiResult<Json<SloBoard>> {
        let date = business_date.0.unwrap_or_else(|| Utc::now().date_naive());
        super::calendars::check_date("business_date", date)?;
        if let Some(s) = &status.0
            && !STATUSES.contains(&s.as_str())
        {
            return Err(ApiError::invalid(
                "status",
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
        let rows = slo::board(&ctx.pool, tenant.customer_id, date, status.0.as_deref()).await?;
        Ok(Json(SloBoard {
            business_date: date,
            slos: rows
                .into_iter()
                .map(|r| BoardEntry {
                    slo_id: r.slo_id,
                    slo: r.slo,
                    application: r.application,
                    business_date: r.business_date,
                    expected_start: r.expected_start,
                    expected_end: r.expected_end,
                    actual_start: r.actual_start,
                    actual_end: r.actual_end,
                    status: r.status,
                    late_by_seconds: r.late_by_seconds,
                    alerts: r
                        .alerts
                        .into_iter()
                        .map(|(alert, raised_at, occurrence)| RaisedAlert {
                            alert,
                            raised_at,
                            occurrence: (!occurrence.is_empty()).then_some(occurrence),
                        })
                        .collect(),
                    evaluated_at: r.evaluated_at,
                })
                .collect(),
        }))
    }

    /// The SLO's performance per business date in `[from, to]` (default: the last 7 days up
    /// to today in the calendar's time zone), from the job reports as they are now.
    #[oai(
        path = "/v1/slos/:id/performance",
        method = "get",
        operation_id = "get_slo_performance"
    )]
    async fn performance(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        /// First business date (`YYYY-MM-DD`).
        from: Query<Option<NaiveDate>>,
        /// Last business date, included.
        to: Query<Option<NaiveDate>>,
    ) -> ApiResult<Json<SloPerformances>> {
        let row = slo::slo(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| slo_not_found(id.0))?;
        let (spec, calendar) = spec_of(&row)?;
        let now = Utc::now();
        let today = calendar.local_date(now);
        let to = to.0.unwrap_or(today);
        super::calendars::check_date("to", to)?;
        let from = from.0.unwrap_or(to - Duration::days(6));
        super::calendars::check_date("from", from)?;
        if to < from {
            return Err(ApiError::invalid("to", "to must not be before from"));
        }
        if (to - from).num_days() >= MAX_DATES as i64 {
            return Err(ApiError::invalid(
                "to",
                format!("the range holds at most {MAX_DATES} days"),
            ));
        }
        let dates = calendar.business_dates(from, to);
        let by_date = reports_by_date(&ctx, tenant.customer_id, &row, &spec, from, to).await?;
        let dates = dates
            .into_iter()
            .map(|date| {
                let reports = by_date.get(&date).map(Vec::as_slice).unwrap_or(&[]);
                let p = performance::evaluate(&spec, &calendar, date, reports, now);
                SloPerformance {
                    business_date: date,
                    expected_start: p.expected_start,
                    expected_end: p.expected_end,
                    actual_start: p.actual_start,
                    actual_end: p.actual_end,
                    status: p.status.as_str().to_owned(),
                    late_by_seconds: p.late_by.map(|d| d.num_seconds()),
                    alerts: p.alerts.iter().map(|a| a.as_str().to_owned()).collect(),
                    occurrence_alerts: p
                        .occurrence_alerts
                        .iter()
                        .map(|a| OccurrenceAlert {
                            occurrence: a.occurrence.clone(),
                            alert: a.alert.as_str().to_owned(),
                            expected_end: a.expected_end,
                            actual_end: a.actual_end,
                        })
                        .collect(),
                    too_fast: p
                        .too_fast
                        .into_iter()
                        .map(|t| TooFastRun {
                            job: t.job,
                            run_id: t.run_id,
                            duration_seconds: t.duration.num_seconds(),
                            min_duration_seconds: t.min_duration.num_seconds(),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Json(SloPerformances {
            slo_id: row.id,
            dates,
        }))
    }
}
