//! Service domains: the customer hostnames Tranche probes and steers.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

#[derive(Debug, Clone, FromRow, serde::Deserialize)]
pub struct DomainRow {
    pub id: i64,
    pub service_id: i64,
    pub hostname: String,
    pub primary_target: Option<String>,
    pub backup_target: Option<String>,
    pub probe_path: String,
    pub probe_scheme: String,
    pub expected_statuses: String,
    pub probe_timeout_ms: i32,
    pub dns_zone: Option<String>,
    pub shard: i16,
    pub verification_status: String,
    pub verification_token: String,
    pub verified_at: Option<DateTime<Utc>>,
    pub verification_checked_at: Option<DateTime<Utc>>,
    pub verification_error: Option<String>,
    pub verification_lost_at: Option<DateTime<Utc>>,
    pub verification_attempts: i32,
    pub steering_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The selected columns, as a macro so queries stay `&'static str` (sqlx 0.9 audits dynamic SQL).
macro_rules! columns {
    () => {
        "d.id, d.service_id, d.hostname, d.primary_target, d.backup_target,
    d.probe_path, d.probe_scheme, d.expected_statuses, d.probe_timeout_ms, d.dns_zone, d.shard,
    d.verification_status, d.verification_token, d.verified_at, d.verification_checked_at,
    d.verification_error, d.verification_lost_at, d.verification_attempts, d.steering_enabled,
    d.created_at, d.updated_at"
    };
}

/// A domain to add.
#[derive(Debug)]
pub struct NewDomain<'a> {
    pub hostname: &'a str,
    pub primary_target: Option<String>,
    pub backup_target: Option<String>,
    pub probe_path: &'a str,
    pub probe_scheme: &'a str,
    pub expected_statuses: String,
    pub probe_timeout_ms: i32,
    pub dns_zone: Option<String>,
    pub shard: i16,
    pub verification_token: &'a str,
    /// Whether the engine may steer this hostname's DNS once it is verified.
    pub steering_enabled: bool,
    /// Verified at creation (dev mode's auto-verification).
    pub verified: bool,
}

/// Probe settings to change (`None`: keep).
#[derive(Debug, Default)]
pub struct DomainPatch<'a> {
    pub primary_target: Option<&'a str>,
    pub backup_target: Option<&'a str>,
    pub probe_path: Option<&'a str>,
    pub probe_scheme: Option<&'a str>,
    pub expected_statuses: Option<String>,
    pub probe_timeout_ms: Option<i32>,
}

impl DomainPatch<'_> {
    pub fn is_empty(&self) -> bool {
        self.primary_target.is_none()
            && self.backup_target.is_none()
            && self.probe_path.is_none()
            && self.probe_scheme.is_none()
            && self.expected_statuses.is_none()
            && self.probe_timeout_ms.is_none()
    }
}

/// Applies `patch` to a live domain of the customer's live service; `None` if there is none.
pub async fn update(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
    patch: &DomainPatch<'_>,
) -> sqlx::Result<Option<DomainRow>> {
    sqlx::query_as(concat!(
        "update service_domains d
            set primary_target = coalesce($4, d.primary_target),
                backup_target = coalesce($5, d.backup_target),
                probe_path = coalesce($6, d.probe_path),
                probe_scheme = coalesce($7, d.probe_scheme),
                expected_statuses = coalesce($8, d.expected_statuses),
                probe_timeout_ms = coalesce($9, d.probe_timeout_ms)
           from services s
          where d.id = $1 and d.service_id = $2 and s.id = d.service_id and s.customer_id = $3
            and s.deleted_at is null and d.deleted_at is null
      returning ",
        columns!()
    ))
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .bind(patch.primary_target)
    .bind(patch.backup_target)
    .bind(patch.probe_path)
    .bind(patch.probe_scheme)
    .bind(patch.expected_statuses.as_deref())
    .bind(patch.probe_timeout_ms)
    .fetch_optional(pool)
    .await
}

/// Live domains of service `service_id`, which must be customer `customer_id`'s.
pub async fn list(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
) -> sqlx::Result<Vec<DomainRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        "
           from service_domains d join services s on s.id = d.service_id
          where d.service_id = $1 and s.customer_id = $2
            and s.deleted_at is null and d.deleted_at is null
          order by d.id"
    ))
    .bind(service_id)
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

/// Adds a domain to a live service of the customer in one statement (no check-then-insert race);
/// `None` when there is no such service.
pub async fn create(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain: &NewDomain<'_>,
) -> sqlx::Result<Option<DomainRow>> {
    sqlx::query_as(concat!(
        "insert into service_domains as d
                (service_id, hostname, primary_target, backup_target, probe_path, probe_scheme,
                 expected_statuses, probe_timeout_ms, dns_zone, shard, verification_token,
                 steering_enabled, verification_status, verified_at, verification_method)
         select s.id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                case when $14 then 'verified' else 'pending' end,
                case when $14 then now() end,
                case when $14 then 'dev' end
           from services s
          where s.id = $1 and s.customer_id = $2 and s.deleted_at is null
         returning ",
        columns!(),
        ""
    ))
    .bind(service_id)
    .bind(customer_id)
    .bind(domain.hostname)
    .bind(&domain.primary_target)
    .bind(&domain.backup_target)
    .bind(domain.probe_path)
    .bind(domain.probe_scheme)
    .bind(&domain.expected_statuses)
    .bind(domain.probe_timeout_ms)
    .bind(&domain.dns_zone)
    .bind(domain.shard)
    .bind(domain.verification_token)
    .bind(domain.steering_enabled)
    .bind(domain.verified)
    .fetch_optional(pool)
    .await
}

/// A live domain of a live service of the customer.
pub async fn get(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
) -> sqlx::Result<Option<DomainRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from service_domains d join services s on s.id = d.service_id
          where d.id = $1 and d.service_id = $2 and s.customer_id = $3
            and s.deleted_at is null and d.deleted_at is null"
    ))
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// Soft-deletes a live domain of a live service of the customer; whether one was deleted.
pub async fn soft_delete(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "update service_domains d set deleted_at = now()
           from services s
          where d.id = $1 and d.service_id = $2 and s.id = d.service_id and s.customer_id = $3
            and s.deleted_at is null and d.deleted_at is null",
    )
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Whether `domain_id` is a live domain of the customer's live service `service_id`.
pub async fn exists(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from service_domains d join services s on s.id = d.service_id
                         where d.id = $1 and d.service_id = $2 and s.customer_id = $3
                           and d.deleted_at is null and s.deleted_at is null)",
    )
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_one(pool)
    .await
}
