//! Storm policies: when a service's primary CDN is in a storm.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{FromRow, PgConnection, PgPool};
use tranche_core::domain::PolicyParams;

#[derive(Debug, Clone, FromRow, serde::Deserialize)]
pub struct PolicyRow {
    pub id: i64,
    pub service_id: i64,
    pub kind: String,
    pub threshold_avail: Decimal,
    pub window_seconds: i32,
    pub cooldown_seconds: i32,
    pub max_coverage_factor: Decimal,
    pub probe_interval_seconds: i32,
    pub min_samples: i32,
    pub consecutive_failures: i32,
    pub consecutive_successes: i32,
    pub quorum: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The selected columns, as a macro so queries stay `&'static str` (sqlx 0.9 audits dynamic SQL).
macro_rules! columns {
    () => {
        "p.id, p.service_id, p.kind, p.threshold_avail, p.window_seconds,
    p.cooldown_seconds, p.max_coverage_factor, p.probe_interval_seconds, p.min_samples,
    p.consecutive_failures, p.consecutive_successes, p.quorum, p.created_at, p.updated_at"
    };
}

pub async fn list(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
) -> sqlx::Result<Vec<PolicyRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        "
           from storm_policies p join services s on s.id = p.service_id
          where p.service_id = $1 and s.customer_id = $2 and s.deleted_at is null
          order by p.id"
    ))
    .bind(service_id)
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    policy_id: i64,
) -> sqlx::Result<Option<PolicyRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        "
           from storm_policies p join services s on s.id = p.service_id
          where p.id = $1 and p.service_id = $2 and s.customer_id = $3 and s.deleted_at is null"
    ))
    .bind(policy_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// Adds a policy to a live service of the customer; `None` when there is no such service.
pub async fn create(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    params: &PolicyParams,
) -> sqlx::Result<Option<PolicyRow>> {
    sqlx::query_as(concat!(
        "insert into storm_policies as p
                (service_id, kind, threshold_avail, window_seconds, cooldown_seconds,
                 max_coverage_factor, probe_interval_seconds, min_samples,
                 consecutive_failures, consecutive_successes, quorum)
         select s.id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
           from services s
          where s.id = $1 and s.customer_id = $2 and s.deleted_at is null
         returning ",
        columns!(),
        ""
    ))
    .bind(service_id)
    .bind(customer_id)
    .bind(params.kind.as_str())
    .bind(params.threshold_avail)
    .bind(params.window_seconds)
    .bind(params.cooldown_seconds)
    .bind(params.max_coverage_factor)
    .bind(params.probe_interval_seconds)
    .bind(params.min_samples)
    .bind(params.consecutive_failures)
    .bind(params.consecutive_successes)
    .bind(params.quorum.as_str())
    .fetch_optional(pool)
    .await
}

/// Like [`get`], locking the row until the transaction ends, so a PATCH validates and writes
/// the same values even when two PATCHes race.
pub async fn get_for_update(
    conn: &mut PgConnection,
    customer_id: i64,
    service_id: i64,
    policy_id: i64,
) -> sqlx::Result<Option<PolicyRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        "
           from storm_policies p join services s on s.id = p.service_id
          where p.id = $1 and p.service_id = $2 and s.customer_id = $3 and s.deleted_at is null
            for update of p"
    ))
    .bind(policy_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_optional(conn)
    .await
}

/// Writes the complete, validated parameters of policy `policy_id` (locked by the caller).
pub async fn update(
    conn: &mut PgConnection,
    policy_id: i64,
    params: &PolicyParams,
) -> sqlx::Result<PolicyRow> {
    sqlx::query_as(concat!(
        "update storm_policies p
            set threshold_avail = $2, window_seconds = $3, cooldown_seconds = $4,
                max_coverage_factor = $5, probe_interval_seconds = $6, min_samples = $7,
                consecutive_failures = $8, consecutive_successes = $9, quorum = $10
          where p.id = $1
         returning ",
        columns!(),
        ""
    ))
    .bind(policy_id)
    .bind(params.threshold_avail)
    .bind(params.window_seconds)
    .bind(params.cooldown_seconds)
    .bind(params.max_coverage_factor)
    .bind(params.probe_interval_seconds)
    .bind(params.min_samples)
    .bind(params.consecutive_failures)
    .bind(params.consecutive_successes)
    .bind(params.quorum.as_str())
    .fetch_one(conn)
    .await
}

pub async fn delete(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    policy_id: i64,
) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "delete from storm_policies p
          using services s
          where p.id = $1 and p.service_id = $2 and s.id = p.service_id
            and s.customer_id = $3 and s.deleted_at is null",
    )
    .bind(policy_id)
    .bind(service_id)
    .bind(customer_id)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}
