//! SLO tracking's repositories (issue 16): business calendars with their holidays, and
//! applications.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{FromRow, PgPool};

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

pub async fn delete_calendar(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("delete from calendars where id = $1 and customer_id = $2")
            .bind(id)
            .bind(customer_id)
            .execute(pool)
            .await?
            .rows_affected()
            > 0,
    )
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

pub async fn delete_application(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("delete from applications where id = $1 and customer_id = $2")
            .bind(id)
            .bind(customer_id)
            .execute(pool)
            .await?
            .rows_affected()
            > 0,
    )
}

/// An SLO with its jobs, its application's name and its calendar.
#[derive(Debug, Clone, FromRow)]
pub struct SloRow {
    pub id: i64,
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
    /// (job, expected start, expected end, minimum duration in seconds), by job.
    #[sqlx(json)]
    pub jobs: Vec<(String, i32, i32, Option<i32>)>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! slo {
    () => {
        "select s.id, s.name, s.application_id, a.name as application, s.calendar_id,
                c.kind as calendar_kind, c.time_zone,
                coalesce((select json_agg(h.holiday order by h.holiday)
                            from calendar_holidays h where h.calendar_id = c.id), '[]'::json)
                  as holidays,
                s.start_grace_minutes, s.tolerance_minutes,
                coalesce((select json_agg(json_build_array(j.job, j.expected_start_minutes,
                                                           j.expected_end_minutes,
                                                           j.min_duration_seconds) order by j.job)
                            from slo_jobs j where j.slo_id = s.id), '[]'::json) as jobs,
                s.created_at, s.updated_at
           from slos s
           join applications a on a.id = s.application_id
           join calendars c on c.id = s.calendar_id"
    };
}

/// A new SLO.
pub struct SloFields<'a> {
    pub name: &'a str,
    pub application_id: i64,
    pub calendar_id: i64,
    pub start_grace_minutes: i32,
    pub tolerance_minutes: i32,
    /// (job, expected start, expected end, minimum duration in seconds).
    pub jobs: &'a [(String, i32, i32, Option<i32>)],
}

/// What creating an SLO did: created it, or found no such application or calendar of the
/// customer.
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
    let (app, cal): (bool, bool) = sqlx::query_as(
        "select exists(select 1 from applications where id = $2 and customer_id = $1),
                exists(select 1 from calendars where id = $3 and customer_id = $1)",
    )
    .bind(customer_id)
    .bind(f.application_id)
    .bind(f.calendar_id)
    .fetch_one(&mut *tx)
    .await?;
    if !app {
        return Ok(CreateSlo::NoApplication);
    }
    if !cal {
        return Ok(CreateSlo::NoCalendar);
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
    sqlx::query(
        "insert into slo_jobs (slo_id, job, expected_start_minutes, expected_end_minutes,
                               min_duration_seconds)
         select $1, * from unnest($2::text[], $3::int4[], $4::int4[], $5::int4[])",
    )
    .bind(id)
    .bind(f.jobs.iter().map(|j| j.0.as_str()).collect::<Vec<_>>())
    .bind(f.jobs.iter().map(|j| j.1).collect::<Vec<_>>())
    .bind(f.jobs.iter().map(|j| j.2).collect::<Vec<_>>())
    .bind(f.jobs.iter().map(|j| j.3).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let row: SloRow = sqlx::query_as(concat!(slo!(), " where s.id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(CreateSlo::Created(Box::new(row)))
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

pub async fn delete_slo(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("delete from slos where id = $1 and customer_id = $2")
            .bind(id)
            .bind(customer_id)
            .execute(pool)
            .await?
            .rows_affected()
            > 0,
    )
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
        "select business_date, job, run_id, status, status_time from job_status
          where customer_id = $1 and application = $2 and job = any($3)
            and business_date between $4 and $5
          order by business_date, status_time",
    )
    .bind(customer_id)
    .bind(application)
    .bind(jobs)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}
