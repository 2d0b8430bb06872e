//! Failover drills and maintenance windows: what the API writes and reads. The engine reads
//! them with the domain specs (`engine_store.rs`) and records a drill's start and end there.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow)]
pub struct DrillRow {
    pub id: Uuid,
    pub service_id: i64,
    pub domain_id: i64,
    pub reason: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub began_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    /// Read with the row: the database's `now()`, to judge `status` by one clock.
    pub now: DateTime<Utc>,
}

const DRILL_COLUMNS: &str = "id, service_id, domain_id, reason, requested_by, requested_at,
    ends_at, cancelled_at, cancelled_by, began_at, finished_at, outcome, now() as now";

/// Why a drill could not be started.
#[derive(Debug)]
pub enum StartRefused {
    /// No such live domain of the customer's service.
    NotFound,
    /// The domain has no backup target to move traffic to.
    NoBackup,
    /// A drill of the domain is still under way.
    Running(Uuid),
}

/// Starts a drill: one under way per domain (serialized per domain with a transaction lock).
pub async fn start(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
    seconds: i64,
    reason: &str,
    requested_by: &str,
) -> sqlx::Result<Result<DrillRow, StartRefused>> {
    let mut tx = pool.begin().await?;
    let backup: Option<Option<String>> = sqlx::query_scalar(
        "select d.backup_target from service_domains d join services s on s.id = d.service_id
          where d.id = $1 and d.service_id = $2 and s.customer_id = $3
            and d.deleted_at is null and s.deleted_at is null
          for update of d",
    )
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_optional(&mut *tx)
    .await?;
    match backup {
        None => return Ok(Err(StartRefused::NotFound)),
        Some(None) => return Ok(Err(StartRefused::NoBackup)),
        Some(Some(_)) => {}
    }
    // Under way: not finished, and begun or still due to begin.
    let running: Option<Uuid> = sqlx::query_scalar(
        "select id from drills
          where domain_id = $1 and finished_at is null and (began_at is not null or ends_at > now())
          limit 1",
    )
    .bind(domain_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = running {
        return Ok(Err(StartRefused::Running(id)));
    }
    // A drill that never began (the backup was never healthy) and is past its time is closed.
    sqlx::query(
        "update drills set finished_at = now(), outcome = 'expired'
          where domain_id = $1 and finished_at is null",
    )
    .bind(domain_id)
    .execute(&mut *tx)
    .await?;
    let row: DrillRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into drills (customer_id, service_id, domain_id, reason, requested_by, ends_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
         returning {DRILL_COLUMNS}"
    )))
    .bind(customer_id)
    .bind(service_id)
    .bind(domain_id)
    .bind(reason)
    .bind(requested_by)
    .bind(seconds as f64)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(row))
}

/// A domain's drills, newest first (`None`: no such domain of the customer's service).
pub async fn list(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
    limit: i64,
) -> sqlx::Result<Option<Vec<DrillRow>>> {
    if !super::domains::exists(pool, customer_id, service_id, domain_id).await? {
        return Ok(None);
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {DRILL_COLUMNS} from drills
          where domain_id = $1 and service_id = $2
          order by requested_at desc limit $3"
    )))
    .bind(domain_id)
    .bind(service_id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map(Some)
}

/// Cancels a drill: it stops holding traffic now and ramps back (one that never began is
/// finished at once). `Ok(None)`: not found; `Err`-free `Some(Err(row))`: already over.
pub async fn cancel(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
    drill_id: Uuid,
    cancelled_by: &str,
) -> sqlx::Result<Option<Result<DrillRow, DrillRow>>> {
    let updated: Option<DrillRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update drills
            set cancelled_at = now(), cancelled_by = $5,
                ends_at = least(ends_at, greatest(now(), requested_at + interval '1 millisecond')),
                finished_at = case when began_at is null then now() end,
                outcome = case when began_at is null then 'cancelled' end
          where id = $1 and domain_id = $2 and service_id = $3 and customer_id = $4
            and finished_at is null and cancelled_at is null
            and (began_at is not null or ends_at > now())
      returning {DRILL_COLUMNS}"
    )))
    .bind(drill_id)
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .bind(cancelled_by)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = updated {
        return Ok(Some(Ok(row)));
    }
    let existing: Option<DrillRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {DRILL_COLUMNS} from drills
          where id = $1 and domain_id = $2 and service_id = $3 and customer_id = $4"
    )))
    .bind(drill_id)
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await?;
    Ok(existing.map(Err))
}

#[derive(Debug, Clone, FromRow)]
pub struct WindowRow {
    pub id: Uuid,
    pub service_id: i64,
    pub domain_id: Option<i64>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub now: DateTime<Utc>,
}

const WINDOW_COLUMNS: &str = "id, service_id, domain_id, starts_at, ends_at, reason, created_by,
    created_at, cancelled_at, cancelled_by, now() as now";

pub struct NewWindow<'a> {
    pub domain_id: Option<i64>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub reason: &'a str,
    pub created_by: &'a str,
}

/// Declares a maintenance window (`Ok(None)`: no such service; `Ok(Some(Err(())))`: the domain
/// is not one of the service's).
pub async fn declare(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    w: NewWindow<'_>,
) -> sqlx::Result<Option<Result<WindowRow, ()>>> {
    if !super::services::exists(pool, customer_id, service_id).await? {
        return Ok(None);
    }
    if let Some(domain_id) = w.domain_id
        && !super::domains::exists(pool, customer_id, service_id, domain_id).await?
    {
        return Ok(Some(Err(())));
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into maintenance_windows
                (customer_id, service_id, domain_id, starts_at, ends_at, reason, created_by)
         values ($1, $2, $3, $4, $5, $6, $7)
         returning {WINDOW_COLUMNS}"
    )))
    .bind(customer_id)
    .bind(service_id)
    .bind(w.domain_id)
    .bind(w.starts_at)
    .bind(w.ends_at)
    .bind(w.reason)
    .bind(w.created_by)
    .fetch_one(pool)
    .await
    .map(|r| Some(Ok(r)))
}

/// A service's maintenance windows, latest ending first (`None`: no such service).
pub async fn windows(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    limit: i64,
) -> sqlx::Result<Option<Vec<WindowRow>>> {
    if !super::services::exists(pool, customer_id, service_id).await? {
        return Ok(None);
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {WINDOW_COLUMNS} from maintenance_windows
          where service_id = $1 and customer_id = $2
          order by ends_at desc, id limit $3"
    )))
    .bind(service_id)
    .bind(customer_id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map(Some)
}

/// Cancels a window that has not ended (`Ok(None)`: not found; `Some(Err(row))`: already over).
pub async fn cancel_window(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    window_id: Uuid,
    cancelled_by: &str,
) -> sqlx::Result<Option<Result<WindowRow, WindowRow>>> {
    let updated: Option<WindowRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update maintenance_windows set cancelled_at = now(), cancelled_by = $4
          where id = $1 and service_id = $2 and customer_id = $3
            and cancelled_at is null and ends_at > now()
      returning {WINDOW_COLUMNS}"
    )))
    .bind(window_id)
    .bind(service_id)
    .bind(customer_id)
    .bind(cancelled_by)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = updated {
        return Ok(Some(Ok(row)));
    }
    let existing: Option<WindowRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {WINDOW_COLUMNS} from maintenance_windows
          where id = $1 and service_id = $2 and customer_id = $3"
    )))
    .bind(window_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await?;
    Ok(existing.map(Err))
}
