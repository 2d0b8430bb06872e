//! Services: a unit of failover (one primary CDN, one backup CDN, its domains and policies).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};

use super::domains::DomainRow;
use super::policies::PolicyRow;
use super::read_cache::{self, NotifiedCache};

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
        "select ",
        columns!(),
        " from services
          where customer_id = $1 and deleted_at is null
          order by id"
    ))
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

/// A service with its live domains and its policies.
#[derive(Debug, Clone, FromRow)]
pub struct ServiceDetailRow {
    #[sqlx(flatten)]
    pub service: ServiceRow,
    pub domains: Json<Vec<DomainRow>>,
    pub policies: Json<Vec<PolicyRow>>,
}

/// A live service of the customer with its domains and policies, in one statement: the API's hottest read
/// costs one round trip instead of three. Numerics travel as JSON strings, so they stay exact.
pub async fn get_detail(
    pool: &PgPool,
    customer_id: i64,
    id: i64,
) -> sqlx::Result<Option<ServiceDetailRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        ",
            coalesce((select json_agg(d order by d.id)
                        from (select d.id, d.service_id, d.hostname, d.primary_target,
                                     d.backup_target, d.probe_path, d.probe_scheme,
                                     d.expected_statuses, d.probe_timeout_ms, d.dns_zone,
                                     d.shard, d.verification_status,
                                     d.verification_token, d.verified_at, d.verification_checked_at,
                                     d.verification_error, d.verification_lost_at,
                                     d.verification_attempts, d.steering_enabled, d.created_at,
                                     d.updated_at
                                from service_domains d
                               where d.service_id = services.id and d.deleted_at is null) d),
                     '[]') as domains,
            coalesce((select json_agg(p order by p.id)
                        from (select p.id, p.service_id, p.kind,
                                     p.threshold_avail::text as threshold_avail,
                                     p.window_seconds, p.cooldown_seconds,
                                     p.max_coverage_factor::text as max_coverage_factor,
                                     p.probe_interval_seconds, p.min_samples,
                                     p.consecutive_failures, p.consecutive_successes, p.quorum, p.created_at,
                                     p.updated_at
                                from storm_policies p
                               where p.service_id = services.id) p),
                     '[]') as policies
           from services
          where id = $1 and customer_id = $2 and deleted_at is null"
    ))
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// How long a cached service detail is trusted without news (see [`ServiceReads`]).
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The API's hottest read, `GET /v1/services/{id}`, answered from a per-node cache kept exact
/// by notification ([`NotifiedCache`]): every change to `services`, `service_domains` or
/// `storm_policies` announces itself on `tranche_config` (their statement triggers, which also
/// wake the engine), and any such notification empties this cache; a customer's suspension or
/// deletion (`tranche_auth`) drops its services. A node empties it itself after every write
/// request it serves but the usage and job-report feeds ([`ServiceReads::forget_all`]), so a
/// client reads its own writes from the next request; changes made elsewhere are seen within
/// PostgreSQL's notification latency.
pub struct ServiceReads {
    pool: PgPool,
    cache: NotifiedCache<(i64, i64), std::sync::Arc<ServiceDetailRow>>,
}

impl ServiceReads {
    pub fn new(pool: PgPool) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            pool,
            cache: NotifiedCache::new(CACHE_TTL),
        })
    }

    /// [`get_detail`], from the cache when it holds the service.
    pub async fn get_detail(
        &self,
        customer_id: i64,
        id: i64,
    ) -> sqlx::Result<Option<std::sync::Arc<ServiceDetailRow>>> {
        let key = (customer_id, id);
        let miss = match self.cache.get(&key) {
            Ok(row) => return Ok(Some(row)),
            Err(miss) => miss,
        };
        let row = get_detail(&self.pool, customer_id, id)
            .await?
            .map(std::sync::Arc::new);
        if let Some(row) = &row {
            self.cache.insert(miss, key, row.clone());
        }
        Ok(row)
    }

    /// Empties the cache (after a write this node served).
    pub fn forget_all(&self) {
        self.cache.invalidate(|_, _| true);
    }
}

impl read_cache::Notified for ServiceReads {
    fn channels(&self) -> &'static [&'static str] {
        &[crate::node::CONFIG_CHANNEL, super::api_keys::AUTH_CHANNEL]
    }

    fn notified(&self, channel: &str, payload: &str) {
        match payload.split_once(':') {
            Some(("customer", id))
                if channel == super::api_keys::AUTH_CHANNEL
                    && let Ok(id) = id.parse::<i64>() =>
            {
                self.cache.invalidate(|(customer, _), _| *customer == id)
            }
            // Keys come and go without changing any service.
            Some(("key", _)) if channel == super::api_keys::AUTH_CHANNEL => {}
            _ => self.forget_all(),
        }
    }

    fn set_listening(&self, listening: bool) {
        self.cache.set_listening(listening);
    }
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
         returning ",
        columns!(),
        ""
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
          returning ",
        columns!(),
        ""
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
