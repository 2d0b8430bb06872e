//! Read side of DNS steering for the API: per-domain desired vs applied weights, and the audit
//! log of changes (filtered to the calling customer's domains).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow)]
pub struct DnsDomainRow {
    pub domain_id: i64,
    pub hostname: String,
    pub zone: Option<String>,
    pub steering_enabled: bool,
    pub desired_primary: i16,
    pub applied_primary: Option<i16>,
    pub applied_at: Option<DateTime<Utc>>,
    pub provider: Option<String>,
    pub last_error: Option<String>,
    pub failed_at: Option<DateTime<Utc>>,
    pub last_change_id: Option<Uuid>,
    pub last_change_status: Option<String>,
    pub last_change_at: Option<DateTime<Utc>>,
    pub pin_primary: Option<i16>,
    pub pin_reason: Option<String>,
    pub pinned_by: Option<String>,
    pub pinned_at: Option<DateTime<Utc>>,
}

/// DNS view of a live service of the customer (`None`: no such service).
pub async fn service_dns(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
) -> sqlx::Result<Option<Vec<DnsDomainRow>>> {
    if !super::services::exists(pool, customer_id, service_id).await? {
        return Ok(None);
    }
    sqlx::query_as(
        "select d.id as domain_id, d.hostname, d.dns_zone as zone, d.steering_enabled,
                coalesce(st.desired_primary_weight, 100::smallint) as desired_primary,
                r.applied_primary_weight as applied_primary, r.applied_at, r.provider,
                r.last_error, r.failed_at, r.last_change_id,
                c.status as last_change_status, c.submitted_at as last_change_at,
                p.primary_weight as pin_primary, p.reason as pin_reason, p.pinned_by, p.pinned_at
           from service_domains d
           left join domain_states st on st.domain_id = d.id
           left join dns_pins p on p.domain_id = d.id
           left join dns_records r on r.domain_id = d.id
           left join dns_changes c on c.id = r.last_change_id
          where d.service_id = $1 and d.deleted_at is null
          order by d.id",
    )
    .bind(service_id)
    .fetch_all(pool)
    .await
    .map(Some)
}

#[derive(Debug, Clone, FromRow)]
pub struct DnsChangeRow {
    pub id: Uuid,
    pub zone: String,
    pub provider: String,
    pub changes: serde_json::Value,
    pub status: String,
    pub attempt: i32,
    pub will_retry: bool,
    pub provider_change_id: Option<String>,
    pub error: Option<String>,
    pub submitted_at: DateTime<Utc>,
    pub insync_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct ChangeFilter {
    pub service_id: Option<i64>,
    pub domain_id: Option<i64>,
    pub status: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// Audit log entries touching the customer's domains, newest first. A batch may also carry
/// other customers' domains of the same zone: only the caller's entries are returned.
pub async fn changes(
    pool: &PgPool,
    customer_id: i64,
    f: &ChangeFilter,
) -> sqlx::Result<Vec<DnsChangeRow>> {
    sqlx::query_as(
        "with mine as (
             select d.id from service_domains d join services s on s.id = d.service_id
              where s.customer_id = $1
                and ($2::bigint is null or d.service_id = $2)
                and ($3::bigint is null or d.id = $3)
         )
         select c.id, c.zone, c.provider,
                (select coalesce(jsonb_agg(x), '[]'::jsonb) from jsonb_array_elements(c.changes) x
                  where (x->>'domain_id')::bigint in (select id from mine)) as changes,
                c.status, c.attempt, c.will_retry, c.provider_change_id, c.error, c.submitted_at,
                c.insync_at, c.failed_at
           from dns_changes c
          where c.domain_ids && (select coalesce(array_agg(id), '{}') from mine)
            and ($4::text is null or c.status = $4)
            and ($5::timestamptz is null or c.submitted_at >= $5)
            and ($6::timestamptz is null or c.submitted_at < $6)
          order by c.submitted_at desc, c.id
          limit $7",
    )
    .bind(customer_id)
    .bind(f.service_id)
    .bind(f.domain_id)
    .bind(&f.status)
    .bind(f.since)
    .bind(f.until)
    .bind(f.limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct PinRow {
    pub domain_id: i64,
    pub primary_weight: i16,
    pub reason: String,
    pub pinned_by: String,
    pub pinned_at: DateTime<Utc>,
}

/// Pins a live domain of a live service of the customer (replacing any pin), audited; `None`
/// when there is no such domain.
pub async fn pin(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
    primary_weight: i16,
    reason: &str,
    actor: &str,
) -> sqlx::Result<Option<PinRow>> {
    let mut tx = pool.begin().await?;
    let owned: bool = sqlx::query_scalar(
        "select exists (select 1 from service_domains d join services s on s.id = d.service_id
                         where d.id = $1 and d.service_id = $2 and s.customer_id = $3
                           and d.deleted_at is null and s.deleted_at is null)",
    )
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .fetch_one(&mut *tx)
    .await?;
    if !owned {
        return Ok(None);
    }
    let row: PinRow = sqlx::query_as(
        "insert into dns_pins (domain_id, primary_weight, reason, pinned_by) values ($1, $2, $3, $4)
         on conflict (domain_id) do update set primary_weight = excluded.primary_weight,
             reason = excluded.reason, pinned_by = excluded.pinned_by, pinned_at = now()
         returning domain_id, primary_weight, reason, pinned_by, pinned_at",
    )
    .bind(domain_id)
    .bind(primary_weight)
    .bind(reason)
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "insert into dns_pin_events (domain_id, action, primary_weight, reason, actor) values ($1, 'pin', $2, $3, $4)",
    )
    .bind(domain_id)
    .bind(primary_weight)
    .bind(reason)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Releases a pin of the customer's domain, audited; whether there was one.
pub async fn release(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    domain_id: i64,
    actor: &str,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query(
        "delete from dns_pins p using service_domains d, services s
          where p.domain_id = $1 and d.id = p.domain_id and d.service_id = $2
            and s.id = d.service_id and s.customer_id = $3",
    )
    .bind(domain_id)
    .bind(service_id)
    .bind(customer_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if released {
        sqlx::query(
            "insert into dns_pin_events (domain_id, action, actor) values ($1, 'release', $2)",
        )
        .bind(domain_id)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(released)
}
