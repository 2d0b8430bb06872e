//! Services: a unit of failover (one primary CDN, one backup CDN, its domains and policies).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

#[derive(Debug, Clone, FromRow)]
pub struct ServiceRow {
    pub id: i64,
    pub customer_id: i64,
    pub name: String,
    pub primary_cdn: String,
    pub backup_cdn: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The selected columns, as a macro so queries stay `&'static str` (sqlx 0.9 audits dynamic SQL).
macro_rules! columns {
    () => {
        "id, customer_id, name, primary_cdn, backup_cdn, created_at, updated_at"
    };
}

/// Fields a PATCH may change; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct ServicePatch<'a> {
    pub name: Option<&'a str>,
    pub primary_cdn: Option<&'a str>,
    pub backup_cdn: Option<&'a str>,
}

pub async fn list(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<ServiceRow>> {
    sqlx::query_as(concat!(
        "select ", columns!(), " from services
          where customer_id = $1 and deleted_at is null
          order by id"
    ))
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<Option<ServiceRow>> {
    sqlx::query_as(concat!(
        "select ", columns!(), " from services
          where id = $1 and customer_id = $2 and deleted_at is null"
    ))
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

pub async fn create(
    pool: &PgPool,
    customer_id: i64,
    name: &str,
    primary_cdn: &str,
    backup_cdn: &str,
) -> sqlx::Result<ServiceRow> {
    sqlx::query_as(concat!(
        "insert into services (customer_id, name, primary_cdn, backup_cdn)
         values ($1, $2, $3, $4)
         returning ", columns!(), ""
    ))
    .bind(customer_id)
    .bind(name)
    .bind(primary_cdn)
    .bind(backup_cdn)
    .fetch_one(pool)
    .await
}

pub async fn update(
    pool: &PgPool,
    customer_id: i64,
    id: i64,
    patch: &ServicePatch<'_>,
) -> sqlx::Result<Option<ServiceRow>> {
    sqlx::query_as(concat!(
        "update services
            set name = coalesce($3, name),
                primary_cdn = coalesce($4, primary_cdn),
                backup_cdn = coalesce($5, backup_cdn)
          where id = $1 and customer_id = $2 and deleted_at is null
          returning ", columns!(), ""
    ))
    .bind(id)
    .bind(customer_id)
    .bind(patch.name)
    .bind(patch.primary_cdn)
    .bind(patch.backup_cdn)
    .fetch_optional(pool)
    .await
}

/// Soft-deletes the service and its domains (freeing their hostnames) in one transaction.
/// Returns whether a live service was deleted.
pub async fn soft_delete(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query(
        "update services set deleted_at = now()
          where id = $1 and customer_id = $2 and deleted_at is null",
    )
    .bind(id)
    .bind(customer_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if deleted {
        sqlx::query(
            "update service_domains set deleted_at = now()
              where service_id = $1 and deleted_at is null",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// Whether customer `customer_id` has a live service `id`.
pub async fn exists(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from services
                         where id = $1 and customer_id = $2 and deleted_at is null)",
    )
    .bind(id)
    .bind(customer_id)
    .fetch_one(pool)
    .await
}
