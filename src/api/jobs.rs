//! `/v1/job-status`: schedulers report runs of their jobs (DESIGN §9, phase 1 of the Foxfire
//! plan). Reporting needs a `job-status` key naming the application; reading needs `read`.
//!
//! Validation follows the plan: no status time in the future (beyond [`CLOCK_SKEW`]), none
//! before the start of its business date (UTC), only the codes `start`, `succeed`, `fail`. A
//! run has at most one outcome, which may not precede its start.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::keys::valid_application;
use super::{ApiContext, ApiTags};
use crate::postgres::jobs::{self, JobStatusFilter, JobStatusRow, NewJobStatus, Recorded};

/// How far ahead of this server's clock a status time may be (schedulers' clocks drift).
pub const CLOCK_SKEW: TimeDelta = TimeDelta::seconds(60);

/// A status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobStatusCode {
    /// The run started.
    Start,
    /// The run finished successfully.
    Succeed,
    /// The run failed (a restart is a new run id).
    Fail,
}

impl JobStatusCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Succeed => "succeed",
            Self::Fail => "fail",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Start, Self::Succeed, Self::Fail]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Body of `POST /v1/job-status`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ReportJobStatus {
    /// The business application (1–100 of `A-Z a-z 0-9 . _ -`); the key must name it.
    pub application: String,
    /// The job (1–200 characters).
    pub job: String,
    pub status: JobStatusCode,
    /// When it happened (RFC 3339): not in the future, not before `business_date` began (UTC).
    pub status_time: DateTime<Utc>,
    /// The business day the run is for: Monday's overdraft job starting at 00:30 on Tuesday
    /// has business date Monday. Not before 2000-01-01.
    pub business_date: NaiveDate,
    /// The run (1–200 characters); a restarted job reports a new run id.
    pub run_id: String,
    /// Where the run executes (1–255 characters).
    pub host: String,
}

/// A stored job status report.
#[derive(Debug, Clone, Object)]
pub struct JobStatus {
    pub id: i64,
    pub application: String,
    pub job: String,
    pub status: JobStatusCode,
    pub status_time: DateTime<Utc>,
    pub business_date: NaiveDate,
    pub run_id: String,
    pub host: String,
    /// When Tranche stored it.
    pub received_at: DateTime<Utc>,
}

impl From<JobStatusRow> for JobStatus {
    fn from(r: JobStatusRow) -> Self {
        Self {
            id: r.id,
            status: JobStatusCode::parse(&r.status).unwrap_or(JobStatusCode::Start),
            application: r.application,
            job: r.job,
            status_time: r.status_time,
            business_date: r.business_date,
            run_id: r.run_id,
            host: r.host,
            received_at: r.received_at,
        }
    }
}

#[derive(ApiResponse)]
pub enum Reported {
    /// Stored.
    #[oai(status = 201)]
    Created(Json<JobStatus>),
    /// The same report was already stored (a replay); nothing changed.
    #[oai(status = 200)]
    Unchanged(Json<JobStatus>),
}

/// Checks a report against the rules in the module docs, naming the failing field.
fn validate(body: &ReportJobStatus, now: DateTime<Utc>) -> ApiResult<()> {
    let text = |field: &str, value: &str, max: usize| {
        let n = value.chars().count();
        if n == 0 || n > max || value.trim() != value || value.chars().any(char::is_control) {
            Err(ApiError::invalid(
                field,
                format!(
                    "{field} must be 1 to {max} characters without control characters or \
                     surrounding spaces"
                ),
            ))
        } else {
            Ok(())
        }
    };
    if !valid_application(&body.application) {
        return Err(ApiError::invalid(
            "application",
            "application must be 1-100 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
        ));
    }
    text("job", &body.job, 200)?;
    text("run_id", &body.run_id, 200)?;
    text("host", &body.host, 255)?;
    let earliest = super::input::earliest_fact_time();
    super::input::check_date("business_date", body.business_date, earliest)?;
    super::input::check_time("status_time", body.status_time, earliest)?;
    if body.status_time > now + CLOCK_SKEW {
        return Err(ApiError::invalid(
            "status_time",
            format!("status_time {} is in the future", body.status_time),
        ));
    }
    let day_start = body
        .business_date
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    if body.status_time < day_start {
        return Err(ApiError::invalid(
            "status_time",
            format!(
                "status_time {} is before its business_date {}",
                body.status_time, body.business_date
            ),
        ));
    }
    Ok(())
}

pub struct JobsApi;

#[OpenApi(tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Report a job run's status. Idempotent: re-sending a stored report answers 200. A run
    /// has one outcome: `succeed` after `fail` (or the reverse), or the same status with a
    /// different time or host, answers 409; an outcome before the run's start answers 422.
    #[oai(
        path = "/v1/job-status",
        method = "post",
        operation_id = "report_job_status"
    )]
    async fn report(
        &self,
        #[oai(scope = "Scope::JobStatus")] tenant: Scoped<needs::JobStatus>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<ReportJobStatus>,
    ) -> ApiResult<Reported> {
        let body = body.0;
        validate(&body, Utc::now())?;
        tenant.may_report_for(&body.application, "application")?;
        let report = NewJobStatus {
            application: &body.application,
            job: &body.job,
            business_date: body.business_date,
            run_id: &body.run_id,
            status: body.status.as_str(),
            // PostgreSQL keeps microseconds; a replay must compare equal to what it stored.
            status_time: body.status_time.trunc_subsecs(6),
            host: &body.host,
        };
        match jobs::record(&ctx.pool, tenant.customer_id, tenant.key_id, &report).await? {
            Recorded::Created(row) => Ok(Reported::Created(Json(row.into()))),
            Recorded::Unchanged(row) => Ok(Reported::Unchanged(Json(row.into()))),
            Recorded::Conflict(row) => Err(ApiError::conflict(
                format!(
                    "run {:?} of job {:?} already reported `{}` at {} from {:?}",
                    row.run_id, row.job, row.status, row.status_time, row.host
                ),
                Some("status"),
            )),
            Recorded::EndsBeforeStart(row) => Err(ApiError::invalid(
                "status_time",
                format!(
                    "run {:?} would end before it started: it reported `{}` at {}",
                    row.run_id, row.status, row.status_time
                ),
            )),
        }
    }

    /// Job status reports, latest status time first.
    #[allow(clippy::too_many_arguments)] // one argument per documented query parameter
    #[oai(
        path = "/v1/job-status",
        method = "get",
        operation_id = "list_job_status"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// Only this application's reports.
        application: Query<Option<String>>,
        /// Only this job's reports.
        job: Query<Option<String>>,
        /// Only reports for this business date (`YYYY-MM-DD`).
        business_date: Query<Option<NaiveDate>>,
        /// Only this run's reports.
        run_id: Query<Option<String>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<JobStatus>>> {
        let filter = JobStatusFilter {
            application: application.0.as_deref(),
            job: job.0.as_deref(),
            business_date: business_date.0,
            run_id: run_id.0.as_deref(),
            limit: super::page_limit(limit.0)?,
        };
        let rows = jobs::list(&ctx.pool, tenant.customer_id, &filter).await?;
        Ok(Json(rows.into_iter().map(JobStatus::from).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status_time: &str, business_date: &str) -> ReportJobStatus {
        ReportJobStatus {
            application: "overdrafts".into(),
            job: "calc".into(),
            status: JobStatusCode::Start,
            status_time: status_time.parse().unwrap(),
            business_date: business_date.parse().unwrap(),
            run_id: "r1".into(),
            host: "batch-1".into(),
        }
    }

    fn field(r: ApiResult<()>) -> Option<String> {
        match r {
            Err(ApiError::Unprocessable(body)) => body.0.field,
            other => panic!("expected 422, got {:?}", other.err()),
        }
    }

    #[test]
    fn business_dates_times_and_names_are_checked() {
        let now: DateTime<Utc> = "2026-11-24T01:00:00Z".parse().unwrap();
        // Monday's job, running early on Tuesday.
        assert!(validate(&report("2026-11-24T00:30:00Z", "2026-11-23"), now).is_ok());
        assert!(validate(&report("2026-11-24T01:00:59Z", "2026-11-24"), now).is_ok());
        assert_eq!(
            field(validate(&report("2026-11-24T01:01:01Z", "2026-11-24"), now)).as_deref(),
            Some("status_time"),
            "the future, beyond the allowed skew"
        );
        assert_eq!(
            field(validate(&report("2026-11-22T23:59:59Z", "2026-11-23"), now)).as_deref(),
            Some("status_time"),
            "before the business date"
        );
        let mut bad = report("2026-11-24T00:30:00Z", "2026-11-23");
        bad.application = "over drafts".into();
        assert_eq!(field(validate(&bad, now)).as_deref(), Some("application"));
        let mut bad = report("2026-11-24T00:30:00Z", "2026-11-23");
        bad.host = " ".into();
        assert_eq!(field(validate(&bad, now)).as_deref(), Some("host"));
        let mut bad = report("2026-11-24T00:30:00Z", "2026-11-23");
        bad.run_id = String::new();
        assert_eq!(field(validate(&bad, now)).as_deref(), Some("run_id"));
    }
}
