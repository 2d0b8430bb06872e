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
