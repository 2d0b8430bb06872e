//! Domain verification over PostgreSQL ([`PgVerificationStore`]): due checks and their
//! results (the TXT lookups themselves are [`crate::resolver::HickoryTxt`]).

use super::outbox::{NewEvent, emit};
use super::port_error;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tranche_actors::ports::{StoreError, VerificationStore};
use tranche_core::events::verification_event;
use tranche_core::verify::{Check, Outcome, Status};

pub struct PgVerificationStore {
    pool: PgPool,
}

impl PgVerificationStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

type CheckRow = (i64, String, String, String, DateTime<Utc>, i32, bool);

fn check_of((domain_id, hostname, token, status, created_at, attempts, lost): CheckRow) -> Check {
    Check {
        domain_id,
        hostname,
        token,
        status: Status::parse(&status).unwrap_or(Status::Pending),
        created_at,
        attempts,
        lost,
    }
}

/// The check of one of the customer's domains (for `POST …/verify`).
pub async fn check_for(
    pool: &PgPool,
    customer_id: i64,
    domain_id: i64,
) -> sqlx::Result<Option<Check>> {
    let row: Option<CheckRow> = sqlx::query_as(
        "select d.id, d.hostname, d.verification_token, d.verification_status, d.created_at,
                d.verification_attempts, d.verification_lost_at is not null
           from service_domains d join services s on s.id = d.service_id
          where d.id = $1 and s.customer_id = $2 and d.deleted_at is null",
    )
    .bind(domain_id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(check_of))
}

/// Writes `outcome` if the domain is still in the state `check` saw; whether it was.
pub async fn record(
    pool: &PgPool,
    check: &Check,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let written: Option<(i64, i64, String)> = sqlx::query_as(
        "update service_domains
            set verification_status = $3,
                verified_at = case when $3 = 'verified' then coalesce(verified_at, $4) end,
                verification_method = case when $3 = 'verified' then 'dns' end,
                -- Verifying a domain is what lets the zone actors steer it.
                steering_enabled = steering_enabled or $5,
                verification_checked_at = $4,
                verification_error = $6,
                verification_attempts = $7,
                verification_next_at = $8,
                verification_lost_at = case when $9 then coalesce(verification_lost_at, $4) end
          where id = $1 and verification_status = $2 and deleted_at is null
      returning service_id, (select s.customer_id from services s where s.id = service_id), hostname",
    )
    .bind(check.domain_id)
    .bind(check.status.as_str())
    .bind(outcome.status.as_str())
    .bind(now)
    .bind(outcome.newly_verified)
    .bind(&outcome.error)
    .bind(outcome.attempts)
    .bind(outcome.next_at)
    .bind(outcome.lost)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((service_id, customer_id, hostname)) = written else {
        return Ok(false);
    };
    if let Some(kind) = verification_event(check.status, outcome.status) {
        let payload = serde_json::json!({
            "service_id": service_id, "domain_id": check.domain_id, "domain": hostname,
            "error": outcome.error,
        });
        emit(&mut tx, &[NewEvent::new(customer_id, kind, payload)]).await?;
    }
    tx.commit().await?;
    Ok(true)
}

#[async_trait::async_trait]
impl VerificationStore for PgVerificationStore {
    async fn due_verifications(
        &self,
        shards: &[u16],
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Check>, StoreError> {
        let shards: Vec<i16> = shards.iter().map(|&s| s as i16).collect();
        let rows: Vec<CheckRow> = sqlx::query_as(
            "select d.id, d.hostname, d.verification_token, d.verification_status, d.created_at,
                    d.verification_attempts, d.verification_lost_at is not null
               from service_domains d join services s on s.id = d.service_id
              where d.shard = any($1) and d.deleted_at is null and s.deleted_at is null
                and d.verification_status in ('pending', 'verified')
                -- Dev mode's verifications have no challenge record to re-check.
                and d.verification_method is distinct from 'dev'
                and (d.verification_next_at is null or d.verification_next_at <= $2)
              order by d.verification_next_at nulls first
              limit $3",
        )
        .bind(&shards)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows.into_iter().map(check_of).collect())
    }

    async fn record_verification(
        &self,
        check: &Check,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        record(&self.pool, check, outcome, now)
            .await
            .map_err(port_error)
    }
}
