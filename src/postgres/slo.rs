//! SLO tracking's repositories (issue 16): business calendars with their holidays,
//! applications, SLOs and job reports as they read them; and [`PgSloStore`], the engine's
//! `SloStore` port: the trackers' performance rows and their once-only alerts.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::json;
use sqlx::{FromRow, PgPool};
use tranche_actors::ports::{Fence, RaisedAlert, SloKey, SloStore, StoreError, TrackedSlo};
use tranche_core::domain::SHARDS;
use tranche_core::events::slo_event;
use tranche_core::slo::calendar::{Calendar, CalendarKind, Offset};
use tranche_core::slo::performance::{
    Alert, JobExpectation, Performance, Repeat, Report, ReportKind, SloSpec,
};

use super::outbox::{NewEvent, emit};
use super::{port_error, timestamp};

#[derive(Debug, Clone, FromRow)]
pub struct CalendarRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub time_zone: String,
    /// (date, name) in date order.
    #[sqlx(json)]
    pub holidays: Vec<(NaiveDate, Option<String>)>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! calendar {
    () => {
        "select c.id, c.name, c.kind, c.time_zone, c.created_at, c.updated_at,
                coalesce((select json_agg(json_build_array(h.holiday, h.name) order by h.holiday)
                            from calendar_holidays h where h.calendar_id = c.id), '[]'::json)
                  as holidays
           from calendars c"
    };
}

/// A new calendar, or the replacement of one's fields.
pub struct CalendarFields<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub time_zone: &'a str,
    pub holidays: &'a [(NaiveDate, Option<String>)],
}

/// Creates a calendar with its holidays.
pub async fn create_calendar(
    pool: &PgPool,
    customer_id: i64,
    f: &CalendarFields<'_>,
) -> sqlx::Result<CalendarRow> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "insert into calendars (customer_id, name, kind, time_zone) values ($1, $2, $3, $4)
         returning id",
    )
    .bind(customer_id)
    .bind(f.name)
    .bind(f.kind)
    .bind(f.time_zone)
    .fetch_one(&mut *tx)
    .await?;
    set_holidays(&mut tx, id, f.holidays).await?;
    let row = sqlx::query_as(concat!(calendar!(), " where c.id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}

async fn set_holidays(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    calendar_id: i64,
    holidays: &[(NaiveDate, Option<String>)],
) -> sqlx::Result<()> {
    sqlx::query("delete from calendar_holidays where calendar_id = $1")
        .bind(calendar_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "insert into calendar_holidays (calendar_id, holiday, name)
         select $1, * from unnest($2::date[], $3::text[])",
    )
    .bind(calendar_id)
    .bind(holidays.iter().map(|h| h.0).collect::<Vec<_>>())
    .bind(holidays.iter().map(|h| h.1.clone()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces a calendar's fields and holidays; `None` when it is not the customer's.
pub async fn replace_calendar(
    pool: &PgPool,
    customer_id: i64,
    id: i64,
    f: &CalendarFields<'_>,
) -> sqlx::Result<Option<CalendarRow>> {
    let mut tx = pool.begin().await?;
    let found: Option<i64> = sqlx::query_scalar(
        "update calendars set name = $3, kind = $4, time_zone = $5
          where id = $1 and customer_id = $2 returning id",
    )
    .bind(id)
    .bind(customer_id)
    .bind(f.name)
    .bind(f.kind)
    .bind(f.time_zone)
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Ok(None);
    }
    set_holidays(&mut tx, id, f.holidays).await?;
    let row = sqlx::query_as(concat!(calendar!(), " where c.id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(row))
}

pub async fn calendars(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<CalendarRow>> {
    sqlx::query_as(concat!(
        calendar!(),
        " where c.customer_id = $1 order by c.name"
    ))
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

pub async fn calendar(
    pool: &PgPool,
    customer_id: i64,
    id: i64,
) -> sqlx::Result<Option<CalendarRow>> {
    sqlx::query_as(concat!(
        calendar!(),
        " where c.id = $1 and c.customer_id = $2"
    ))
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// What [`delete`] removes: one of the customer's calendars, applications or SLOs.
#[derive(Debug, Clone, Copy)]
pub enum Owned {
    Calendar,
    Application,
    Slo,
}

/// Deletes one of the customer's calendars, applications or SLOs; whether it was theirs.
pub async fn delete(pool: &PgPool, what: Owned, customer_id: i64, id: i64) -> sqlx::Result<bool> {
    let sql = match what {
        Owned::Calendar => "delete from calendars where id = $1 and customer_id = $2",
        Owned::Application => "delete from applications where id = $1 and customer_id = $2",
        Owned::Slo => "delete from slos where id = $1 and customer_id = $2",
    };
    Ok(sqlx::query(sql)
        .bind(id)
        .bind(customer_id)
        .execute(pool)
        .await?
        .rows_affected()
        > 0)
}

#[derive(Debug, Clone, FromRow)]
pub struct ApplicationRow {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn create_application(
    pool: &PgPool,
    customer_id: i64,
    name: &str,
    description: Option<&str>,
) -> sqlx::Result<ApplicationRow> {
    sqlx::query_as(
        "insert into applications (customer_id, name, description) values ($1, $2, $3)
         returning id, name, description, created_at, updated_at",
    )
    .bind(customer_id)
    .bind(name)
    .bind(description)
    .fetch_one(pool)
    .await
}

pub async fn applications(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<ApplicationRow>> {
    sqlx::query_as(
        "select id, name, description, created_at, updated_at from applications
          where customer_id = $1 order by name",
    )
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

pub async fn application(
    pool: &PgPool,
    customer_id: i64,
    id: i64,
) -> sqlx::Result<Option<ApplicationRow>> {
    sqlx::query_as(
        "select id, name, description, created_at, updated_at from applications
          where id = $1 and customer_id = $2",
    )
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// An SLO with its jobs, its application's name and its calendar.
#[derive(Debug, Clone, FromRow)]
pub struct SloRow {
    pub id: i64,
    pub customer_id: i64,
    pub name: String,
    pub application_id: i64,
    pub application: String,
    pub calendar_id: i64,
    pub calendar_kind: String,
    pub time_zone: String,
    #[sqlx(json)]
    pub holidays: Vec<NaiveDate>,
    pub start_grace_minutes: i32,
    pub tolerance_minutes: i32,
    /// By job.
    #[sqlx(json)]
    pub jobs: Vec<SloJobRow>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! slo {
    () => {
        "select s.id, s.customer_id, s.name, s.application_id, a.name as application, s.calendar_id,
                c.kind as calendar_kind, c.time_zone,
                coalesce((select json_agg(h.holiday order by h.holiday)
                            from calendar_holidays h where h.calendar_id = c.id), '[]'::json)
                  as holidays,
                s.start_grace_minutes, s.tolerance_minutes,
                coalesce((select json_agg(j order by j.job)
                            from slo_jobs j where j.slo_id = s.id), '[]'::json) as jobs,
                s.created_at, s.updated_at
           from slos s
           join applications a on a.id = s.application_id
           join calendars c on c.id = s.calendar_id"
    };
}

impl SloRow {
    /// The core's view of the SLO: its expectations and its calendar.
    pub fn spec(&self) -> Result<(SloSpec, Calendar), String> {
        let kind = CalendarKind::parse(&self.calendar_kind).map_err(|e| e.0)?;
        let calendar =
            Calendar::new(kind, &self.time_zone, self.holidays.iter().copied()).map_err(|e| e.0)?;
        let offset = |m: i32| Offset::from_minutes(i64::from(m)).map_err(|e| e.0);
        let jobs = self
            .jobs
            .iter()
            .map(|j| {
                let repeat = match (j.every_minutes, j.until_minutes) {
                    (Some(every), Some(until)) => Some(Repeat {
                        every: Duration::minutes(i64::from(every)),
                        until: offset(until)?,
                    }),
                    _ => None,
                };
                Ok(JobExpectation {
                    job: j.job.clone(),
                    expected_start: offset(j.expected_start_minutes)?,
                    expected_end: offset(j.expected_end_minutes)?,
                    min_duration: j
                        .min_duration_seconds
                        .map(|s| Duration::seconds(i64::from(s))),
                    repeat,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok((
            SloSpec {
                jobs,
                start_grace: Duration::minutes(i64::from(self.start_grace_minutes)),
                tolerance: Duration::minutes(i64::from(self.tolerance_minutes)),
            },
            calendar,
        ))
    }
}

/// A job of an SLO as stored (times in minutes after the business date's midnight).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SloJobRow {
    pub job: String,
    pub expected_start_minutes: i32,
    pub expected_end_minutes: i32,
    pub min_duration_seconds: Option<i32>,
    /// A repeating job's period, and the latest start of its last occurrence.
    pub every_minutes: Option<i32>,
    pub until_minutes: Option<i32>,
}

/// A new SLO.
pub struct SloFields<'a> {
    pub name: &'a str,
    pub application_id: i64,
    pub calendar_id: i64,
    pub start_grace_minutes: i32,
    pub tolerance_minutes: i32,
    pub jobs: &'a [SloJobRow],
}

/// What creating (or replacing) an SLO did: made it, or found no such application or calendar
/// of the customer.
pub enum CreateSlo {
    Created(Box<SloRow>),
    NoApplication,
    NoCalendar,
}

pub async fn create_slo(
    pool: &PgPool,
    customer_id: i64,
    f: &SloFields<'_>,
) -> sqlx::Result<CreateSlo> {
    let mut tx = pool.begin().await?;
    if let Some(refused) = check_references(&mut tx, customer_id, f).await? {
        return Ok(refused);
    }
    let id: i64 = sqlx::query_scalar(
        "insert into slos (customer_id, application_id, calendar_id, name, start_grace_minutes,
                           tolerance_minutes)
         values ($1, $2, $3, $4, $5, $6) returning id",
    )
    .bind(customer_id)
    .bind(f.application_id)
    .bind(f.calendar_id)
    .bind(f.name)
    .bind(f.start_grace_minutes)
    .bind(f.tolerance_minutes)
    .fetch_one(&mut *tx)
    .await?;
    insert_jobs(&mut tx, id, f.jobs).await?;
    let row: SloRow = sqlx::query_as(concat!(slo!(), " where s.id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(CreateSlo::Created(Box::new(row)))
}

/// Replaces an SLO's fields and jobs (`None`: no such SLO of the customer).
pub async fn replace_slo(
    pool: &PgPool,
    customer_id: i64,
    id: i64,
    f: &SloFields<'_>,
) -> sqlx::Result<Option<CreateSlo>> {
    let mut tx = pool.begin().await?;
    let found: Option<i64> =
        sqlx::query_scalar("select id from slos where id = $1 and customer_id = $2 for update")
            .bind(id)
            .bind(customer_id)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Ok(None);
    }
    if let Some(refused) = check_references(&mut tx, customer_id, f).await? {
        return Ok(Some(refused));
    }
    sqlx::query(
        "update slos set name = $2, application_id = $3, calendar_id = $4,
                         start_grace_minutes = $5, tolerance_minutes = $6
          where id = $1",
    )
    .bind(id)
    .bind(f.name)
    .bind(f.application_id)
    .bind(f.calendar_id)
    .bind(f.start_grace_minutes)
    .bind(f.tolerance_minutes)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from slo_jobs where slo_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    insert_jobs(&mut tx, id, f.jobs).await?;
    let row: SloRow = sqlx::query_as(concat!(slo!(), " where s.id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(CreateSlo::Created(Box::new(row))))
}

/// Whether the application and calendar are the customer's (`Some`: which is not).
async fn check_references(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    customer_id: i64,
    f: &SloFields<'_>,
) -> sqlx::Result<Option<CreateSlo>> {
    let (app, cal): (bool, bool) = sqlx::query_as(
        "select exists(select 1 from applications where id = $2 and customer_id = $1),
                exists(select 1 from calendars where id = $3 and customer_id = $1)",
    )
    .bind(customer_id)
    .bind(f.application_id)
    .bind(f.calendar_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(if !app {
        Some(CreateSlo::NoApplication)
    } else if !cal {
        Some(CreateSlo::NoCalendar)
    } else {
        None
    })
}

async fn insert_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: i64,
    jobs: &[SloJobRow],
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into slo_jobs (slo_id, job, expected_start_minutes, expected_end_minutes,
                               min_duration_seconds, every_minutes, until_minutes)
         select $1, * from unnest($2::text[], $3::int4[], $4::int4[], $5::int4[], $6::int4[],
                                  $7::int4[])",
    )
    .bind(id)
    .bind(jobs.iter().map(|j| j.job.as_str()).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| j.expected_start_minutes)
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.expected_end_minutes)
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.min_duration_seconds)
            .collect::<Vec<_>>(),
    )
    .bind(jobs.iter().map(|j| j.every_minutes).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.until_minutes).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn slos(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<SloRow>> {
    sqlx::query_as(concat!(slo!(), " where s.customer_id = $1 order by s.name"))
        .bind(customer_id)
        .fetch_all(pool)
        .await
}

pub async fn slo(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<Option<SloRow>> {
    sqlx::query_as(concat!(slo!(), " where s.id = $1 and s.customer_id = $2"))
        .bind(id)
        .bind(customer_id)
        .fetch_optional(pool)
        .await
}

/// One job-status report, as the SLO evaluation reads it.
#[derive(Debug, Clone, FromRow)]
pub struct ReportRow {
    pub business_date: NaiveDate,
    pub job: String,
    pub run_id: String,
    pub status: String,
    pub status_time: DateTime<Utc>,
}

impl ReportRow {
    /// The core's report, with its business date (`None` for an unknown status).
    pub fn into_core(self) -> Option<(NaiveDate, Report)> {
        let kind = ReportKind::parse(&self.status)?;
        Some((
            self.business_date,
            Report {
                job: self.job,
                run_id: self.run_id,
                kind,
                at: self.status_time,
            },
        ))
    }
}

/// The reports of `application`'s `jobs` for business dates in `[from, to]`.
pub async fn reports(
    pool: &PgPool,
    customer_id: i64,
    application: &str,
    jobs: &[&str],
    from: NaiveDate,
    to: NaiveDate,
) -> sqlx::Result<Vec<ReportRow>> {
    sqlx::query_as(
        // One index range of `job_status_run_status_key` (customer, application, job, business
        // date, …) per job — `offset 0` keeps the planner from flattening the lateral join and
        // filtering a whole application's day instead, which it did on a young table's
        // statistics: with thousands of SLOs on one application that is every other tracker's
        // rows too.
        "select s.business_date, s.job, s.run_id, s.status, s.status_time
           from unnest($3::text[]) as j(job)
           cross join lateral (
               select business_date, job, run_id, status, status_time from job_status
                where customer_id = $1 and application = $2 and job = j.job
                  and business_date between $4 and $5
               offset 0) as s
          order by s.business_date, s.status_time",
    )
    .bind(customer_id)
    .bind(application)
    .bind(jobs)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// The engine's `SloStore` over PostgreSQL.
pub struct PgSloStore {
    pool: PgPool,
}

impl PgSloStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn alert_of(kind: &str) -> Option<Alert> {
    match kind {
        "not_started" => Some(Alert::NotStarted),
        "late" => Some(Alert::Late),
        "breached" => Some(Alert::Breached),
        _ => None,
    }
}

/// The `data` of an SLO alert's event (of one occurrence of a repeating job, or the SLO's).
fn alert_payload(
    slo: &TrackedSlo,
    alert: Alert,
    occurrence: Option<&str>,
    p: &Performance,
) -> serde_json::Value {
    let occurrence = occurrence.and_then(|o| {
        let a = p.occurrence_alerts.iter().find(|a| a.occurrence == o)?;
        Some(json!({
            "job": a.occurrence,
            "expected_end": timestamp(a.expected_end),
            "actual_end": a.actual_end.map(timestamp),
        }))
    });
    json!({
        "slo_id": slo.id,
        "slo": slo.name,
        "application": slo.application,
        "business_date": p.business_date.to_string(),
        "alert": alert.as_str(),
        "status": p.status.as_str(),
        "time_zone": slo.calendar.time_zone(),
        "expected_start": timestamp(p.expected_start),
        "expected_end": timestamp(p.expected_end),
        "actual_start": p.actual_start.map(timestamp),
        "actual_end": p.actual_end.map(timestamp),
        "late_by_seconds": p.late_by.map(|d| d.num_seconds()),
        "occurrence": occurrence,
    })
}

#[async_trait::async_trait]
impl SloStore for PgSloStore {
    async fn slos_on_shards(&self, shards: &[u16]) -> Result<Vec<SloKey>, StoreError> {
        let shards: Vec<i64> = shards.iter().map(|&s| i64::from(s)).collect();
        let rows: Vec<(i64, i64, String, Vec<String>, i64, i64)> = sqlx::query_as(
            "select s.id, s.customer_id, a.name,
                    array(select j.job from slo_jobs j where j.slo_id = s.id),
                    s.calendar_id, s.customer_id % $2
               from slos s join applications a on a.id = s.application_id
              where s.customer_id % $2 = any($1::int8[])",
        )
        .bind(&shards)
        .bind(i64::from(SHARDS))
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, customer_id, application, jobs, calendar_id, shard)| SloKey {
                    id,
                    customer_id,
                    application,
                    jobs,
                    calendar_id,
                    shard: shard as u16,
                },
            )
            .collect())
    }

    async fn load_slo(&self, id: i64) -> Result<Option<TrackedSlo>, StoreError> {
        let row: Option<SloRow> = sqlx::query_as(concat!(slo!(), " where s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(port_error)?;
        let Some(row) = row else { return Ok(None) };
        let (spec, calendar) = row.spec().map_err(StoreError::Other)?;
        Ok(Some(TrackedSlo {
            id: row.id,
            customer_id: row.customer_id,
            name: row.name,
            application: row.application,
            spec,
            calendar,
            created_at: row.created_at,
        }))
    }

    async fn reports(
        &self,
        slo: &TrackedSlo,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, Report)>, StoreError> {
        let jobs: Vec<&str> = slo.spec.jobs.iter().map(|j| j.job.as_str()).collect();
        let rows = reports(
            &self.pool,
            slo.customer_id,
            &slo.application,
            &jobs,
            from,
            to,
        )
        .await
        .map_err(port_error)?;
        Ok(rows.into_iter().filter_map(ReportRow::into_core).collect())
    }

    async fn record(
        &self,
        slo: &TrackedSlo,
        rows: &[Performance],
        fence: Fence,
        now: DateTime<Utc>,
        node_id: &str,
    ) -> Result<Vec<RaisedAlert>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        super::engine_store::check_fence(&mut tx, fence).await?;
        let too_fast: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                r.too_fast
                    .iter()
                    .map(|t| {
                        json!({
                            "job": t.job,
                            "run_id": t.run_id,
                            "duration_seconds": t.duration.num_seconds(),
                            "min_duration_seconds": t.min_duration.num_seconds(),
                        })
                    })
                    .collect()
            })
            .collect();
        sqlx::query(
            "insert into slo_performance (slo_id, business_date, expected_start, expected_end,
                                          actual_start, actual_end, status, late_by_seconds,
                                          too_fast, wake_at, evaluated_at)
             select $1, u.*, $11
               from unnest($2::date[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
                           $6::timestamptz[], $7::text[], $8::int8[], $9::jsonb[],
                           $10::timestamptz[]) as u
             on conflict (slo_id, business_date) do update
                set expected_start = excluded.expected_start,
                    expected_end = excluded.expected_end,
                    actual_start = excluded.actual_start,
                    actual_end = excluded.actual_end,
                    status = excluded.status,
                    late_by_seconds = excluded.late_by_seconds,
                    too_fast = excluded.too_fast,
                    wake_at = excluded.wake_at,
                    evaluated_at = excluded.evaluated_at",
        )
        .bind(slo.id)
        .bind(rows.iter().map(|r| r.business_date).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.expected_start).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.expected_end).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.actual_start).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.actual_end).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.late_by.map(|d| d.num_seconds()))
                .collect::<Vec<_>>(),
        )
        .bind(&too_fast)
        .bind(rows.iter().map(|r| r.wake_at).collect::<Vec<_>>())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(port_error)?;
        // (date, kind, occurrence: '' for the SLO's own)
        let due: Vec<(NaiveDate, &str, &str)> = rows
            .iter()
            .flat_map(|r| {
                r.due()
                    .map(|(o, a)| (r.business_date, a.as_str(), o.unwrap_or_default()))
            })
            .collect();
        let mut raised = Vec::new();
        if !due.is_empty() {
            let marked: Vec<(NaiveDate, String, String)> = sqlx::query_as(
                "insert into slo_alerts (slo_id, business_date, kind, occurrence, raised_at,
                                         raised_by_node)
                 select $1, u.d, u.k, u.o, $5, $6
                   from unnest($2::date[], $3::text[], $4::text[]) as u(d, k, o)
                 on conflict do nothing
                 returning business_date, kind, occurrence",
            )
            .bind(slo.id)
            .bind(due.iter().map(|d| d.0).collect::<Vec<_>>())
            .bind(due.iter().map(|d| d.1).collect::<Vec<_>>())
            .bind(due.iter().map(|d| d.2).collect::<Vec<_>>())
            .bind(now)
            .bind(node_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(port_error)?;
            let mut events = Vec::new();
            for (date, kind, occurrence) in marked {
                let (Some(alert), Some(row)) = (
                    alert_of(&kind),
                    rows.iter().find(|r| r.business_date == date),
                ) else {
                    continue;
                };
                let occurrence = (!occurrence.is_empty()).then_some(occurrence);
                events.push(NewEvent::new(
                    slo.customer_id,
                    slo_event(alert),
                    alert_payload(slo, alert, occurrence.as_deref(), row),
                ));
                raised.push(RaisedAlert {
                    business_date: date,
                    alert,
                    occurrence,
                });
            }
            let ids = emit(&mut tx, &events).await.map_err(port_error)?;
            sqlx::query(
                "update slo_alerts a set event_id = u.id
                   from unnest($2::date[], $3::text[], $4::text[], $5::uuid[]) as u(d, k, o, id)
                  where a.slo_id = $1 and a.business_date = u.d and a.kind = u.k
                    and a.occurrence = u.o",
            )
            .bind(slo.id)
            .bind(raised.iter().map(|r| r.business_date).collect::<Vec<_>>())
            .bind(raised.iter().map(|r| r.alert.as_str()).collect::<Vec<_>>())
            .bind(
                raised
                    .iter()
                    .map(|r| r.occurrence.as_deref().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(port_error)?;
        }
        tx.commit().await.map_err(port_error)?;
        for r in &raised {
            crate::metrics::METRICS
                .slo_alerts
                .get_or_create(&crate::metrics::AlertLabels {
                    alert: r.alert.as_str(),
                })
                .inc();
        }
        Ok(raised)
    }
}

/// A tracker's stored row, with its SLO and the alerts raised for it.
#[derive(Debug, Clone, FromRow)]
pub struct BoardRow {
    pub slo_id: i64,
    pub slo: String,
    pub application: String,
    pub business_date: NaiveDate,
    pub expected_start: DateTime<Utc>,
    pub expected_end: DateTime<Utc>,
    pub actual_start: Option<DateTime<Utc>>,
    pub actual_end: Option<DateTime<Utc>>,
    pub status: String,
    pub late_by_seconds: Option<i64>,
    /// (alert, raised at, occurrence or ''), in the order raised.
    #[sqlx(json)]
    pub alerts: Vec<(String, DateTime<Utc>, String)>,
    pub evaluated_at: DateTime<Utc>,
}

/// The customer's tracked rows for `date`, optionally of one status: the live board.
pub async fn board(
    pool: &PgPool,
    customer_id: i64,
    date: NaiveDate,
    status: Option<&str>,
) -> sqlx::Result<Vec<BoardRow>> {
    sqlx::query_as(
        "select p.slo_id, s.name as slo, a.name as application, p.business_date,
                p.expected_start, p.expected_end, p.actual_start, p.actual_end, p.status,
                p.late_by_seconds,
                coalesce((select json_agg(json_build_array(x.kind, x.raised_at, x.occurrence)
                                          order by x.raised_at, x.occurrence)
                            from slo_alerts x
                           where x.slo_id = p.slo_id and x.business_date = p.business_date),
                         '[]'::json) as alerts,
                p.evaluated_at
           from slo_performance p
           join slos s on s.id = p.slo_id
           join applications a on a.id = s.application_id
          where s.customer_id = $1 and p.business_date = $2 and ($3::text is null or p.status = $3)
          order by p.expected_end, s.name",
    )
    .bind(customer_id)
    .bind(date)
    .bind(status)
    .fetch_all(pool)
    .await
}
