//! Job status reports (DESIGN §9): what schedulers say about runs of their jobs.
//!
//! A report is stored once per (application, job, business date, run, status): re-sending it
//! is a no-op, and a run has at most one outcome (`succeed` or `fail`), enforced by a unique
//! index so two racing reports cannot both land.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{FromRow, PgPool};

/// A stored report.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct JobStatusRow {
    pub id: i64,
    pub application: String,
    pub job: String,
    pub business_date: NaiveDate,
    pub run_id: String,
    pub status: String,
    pub status_time: DateTime<Utc>,
    pub host: String,
    pub api_key_id: Option<i64>,
    pub received_at: DateTime<Utc>,
}

/// A validated report to store.
#[derive(Debug, Clone)]
pub struct NewJobStatus<'a> {
    pub application: &'a str,
    pub job: &'a str,
    pub business_date: NaiveDate,
    pub run_id: &'a str,
    pub status: &'a str,
    pub status_time: DateTime<Utc>,
    pub host: &'a str,
}

/// What storing a report did.
#[derive(Debug)]
pub enum Recorded {
    /// Stored now.
    Created(JobStatusRow),
    /// The same report was already stored (same status time and host): a replay.
    Unchanged(JobStatusRow),
    /// The run already has this status with other details, or another outcome: the stored
    /// report that conflicts.
    Conflict(JobStatusRow),
    /// The run would end before it started: the stored report on the other side (its `start`
    /// for an outcome, its outcome for a `start`).
    EndsBeforeStart(JobStatusRow),
}

macro_rules! columns {
    () => {
        "id, application, job, business_date, run_id, status, status_time, host, api_key_id, \
         received_at"
    };
}

/// Stores a report for the customer, reported with key `api_key_id`.
pub async fn record(
    pool: &PgPool,
    customer_id: i64,
    api_key_id: Option<i64>,
    report: &NewJobStatus<'_>,
) -> sqlx::Result<Recorded> {
    let mut tx = pool.begin().await?;
    // The run's other reports, so an outcome can be checked against its start.
    let others: Vec<JobStatusRow> = sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from job_status
          where customer_id = $1 and application = $2 and job = $3 and business_date = $4
            and run_id = $5"
    ))
    .bind(customer_id)
    .bind(report.application)
    .bind(report.job)
    .bind(report.business_date)
    .bind(report.run_id)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(same) = others.iter().find(|r| r.status == report.status) {
        let unchanged = same.status_time == report.status_time && same.host == report.host;
        return Ok(if unchanged {
            Recorded::Unchanged(same.clone())
        } else {
            Recorded::Conflict(same.clone())
        });
    }
    let is_start = report.status == "start";
    if !is_start && let Some(outcome) = others.iter().find(|r| r.status != "start") {
        return Ok(Recorded::Conflict(outcome.clone()));
    }
    // `others` holds no report of this status, so any other is on the far side of the run.
    if let Some(other) = others.iter().find(|r| {
        if is_start {
            r.status_time < report.status_time
        } else {
            r.status_time > report.status_time
        }
    }) {
        return Ok(Recorded::EndsBeforeStart(other.clone()));
    }
    let inserted: Option<JobStatusRow> = sqlx::query_as(concat!(
        "insert into job_status
                (customer_id, application, job, business_date, run_id, status, status_time, host,
                 api_key_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict do nothing
         returning ",
        columns!()
    ))
    .bind(customer_id)
    .bind(report.application)
    .bind(report.job)
    .bind(report.business_date)
    .bind(report.run_id)
    .bind(report.status)
    .bind(report.status_time)
    .bind(report.host)
    .bind(api_key_id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    match inserted {
        Some(row) => Ok(Recorded::Created(row)),
        // A concurrent report for the same run won the race: answer as if it had come first.
        None => Box::pin(record(pool, customer_id, api_key_id, report)).await,
    }
}

/// Filters of [`list`].
#[derive(Debug, Default)]
pub struct JobStatusFilter<'a> {
    pub application: Option<&'a str>,
    pub job: Option<&'a str>,
    pub business_date: Option<NaiveDate>,
    pub run_id: Option<&'a str>,
    pub limit: i64,
}

/// The customer's reports, latest status time first.
pub async fn list(
    pool: &PgPool,
    customer_id: i64,
    filter: &JobStatusFilter<'_>,
) -> sqlx::Result<Vec<JobStatusRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from job_status
          where customer_id = $1
            and ($2::text is null or application = $2)
            and ($3::text is null or job = $3)
            and ($4::date is null or business_date = $4)
            and ($5::text is null or run_id = $5)
          order by status_time desc, id desc
          limit $6"
    ))
    .bind(customer_id)
    .bind(filter.application)
    .bind(filter.job)
    .bind(filter.business_date)
    .bind(filter.run_id)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}
