//! The webhook outbox over PostgreSQL: [`emit`] records events in the transaction of their fact
//! and queues them for the subscribed endpoints; [`PgWebhookStore`] (the engine's
//! `WebhookStore` port) reads pending deliveries in order per endpoint, records results and
//! retries, and prunes old events. The HTTP side is [`crate::webhook`]; which facts are events
//! is decided by [`tranche_core::events`].

use super::port_error;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tranche_actors::ports::{Delivery, StoreError, WebhookStore};
use tranche_core::domain::SHARDS;
use tranche_core::events::EventType;
use tranche_core::webhook::Format;
use uuid::Uuid;

/// The SQL condition that endpoint `$e` receives events of type `$t`: enabled and subscribed to
/// it (no types listed: every type). One definition for every statement that queues deliveries.
macro_rules! subscribed {
    ($e:literal, $t:literal) => {
        concat!(
            "(",
            $e,
            ".enabled and (cardinality(",
            $e,
            ".event_types) = 0 or ",
            $t,
            " = any(",
            $e,
            ".event_types)))"
        )
    };
}
pub(crate) use subscribed;

/// An event to record for a customer.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub customer_id: i64,
    pub kind: EventType,
    pub payload: Value,
    /// Queue it for this endpoint only (a test ping), whatever its subscriptions.
    pub endpoint: Option<i64>,
}

impl NewEvent {
    pub fn new(customer_id: i64, kind: EventType, payload: Value) -> Self {
        Self {
            customer_id,
            kind,
            payload,
            endpoint: None,
        }
    }
}

/// Records `events` (in order) and queues each for every enabled endpoint of its customer
/// subscribed to its type, in one statement inside the caller's transaction; returns the
/// events' ids.
pub async fn emit(conn: &mut PgConnection, events: &[NewEvent]) -> sqlx::Result<Vec<Uuid>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(concat!(
        "with src as (
             select gen_random_uuid() as id, u.customer_id, u.type, u.payload, u.endpoint, u.ord
               from unnest($1::int8[], $2::text[], $3::jsonb[], $4::int8[])
                    with ordinality as u(customer_id, type, payload, endpoint, ord)
         ), ev as (
             insert into events (id, customer_id, type, payload)
             select id, customer_id, type, payload from src order by ord
         ), queued as (
             insert into webhook_deliveries (endpoint_id, event_id, customer_id)
             select e.id, src.id, src.customer_id
               from src join webhook_endpoints e on e.customer_id = src.customer_id
              where case when src.endpoint is null then ",
        subscribed!("e", "src.type"),
        " else e.id = src.endpoint end
              order by src.ord, e.id
         )
         select id from src order by ord",
    ))
    .bind(events.iter().map(|e| e.customer_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.endpoint).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// The outbox over PostgreSQL; opens the endpoints' sealed secrets to sign with.
pub struct PgWebhookStore {
    pool: PgPool,
    secrets: Arc<crate::secrets::SecretBox>,
}

impl PgWebhookStore {
    pub fn new(pool: PgPool, secrets: Arc<crate::secrets::SecretBox>) -> Self {
        Self { pool, secrets }
    }
}

/// A pending delivery with its endpoint and event.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    endpoint_id: i64,
    url: String,
    secret: String,
    format: String,
    customer_id: i64,
    event_id: Uuid,
    event_type: String,
    occurred_at: DateTime<Utc>,
    payload: Value,
    attempts: i32,
    created_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
}

#[async_trait::async_trait]
impl WebhookStore for PgWebhookStore {
    async fn pending_deliveries(
        &self,
        shards: &[u16],
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let shards: Vec<i64> = shards.iter().map(|&s| i64::from(s)).collect();
        let rows: Vec<DeliveryRow> = sqlx::query_as(
            "select d.id, d.endpoint_id, e.url, e.secret, e.format, d.customer_id,
                    ev.id as event_id, ev.type as event_type, ev.occurred_at, ev.payload,
                    d.attempts, d.created_at, d.next_attempt_at
               from webhook_deliveries d
               join webhook_endpoints e on e.id = d.endpoint_id
               join events ev on ev.id = d.event_id
              where d.status = 'pending' and d.customer_id % $2 = any($1::int8[])
              order by d.endpoint_id, d.seq
              limit $3",
        )
        .bind(&shards)
        .bind(i64::from(SHARDS))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                // A secret that does not open (its key is not configured) holds its endpoint's
                // deliveries back rather than sending them unsigned.
                let Some(format) = Format::parse(&r.format) else {
                    tracing::error!(webhook.endpoint = r.endpoint_id, format = %r.format, "unknown webhook format; holding its deliveries");
                    return None;
                };
                let secret = match self.secrets.open(r.customer_id, &r.secret) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(webhook.endpoint = r.endpoint_id, error = %e, "cannot sign deliveries to this endpoint");
                        return None;
                    }
                };
                Some((r, secret, format))
            })
            .map(|(r, secret, format)| Delivery {
                id: r.id.to_string(),
                endpoint_id: r.endpoint_id,
                url: r.url,
                secret,
                format,
                customer_id: r.customer_id,
                event_id: r.event_id.to_string(),
                event_type: r.event_type,
                occurred_at: r.occurred_at,
                payload: r.payload.to_string(),
                attempts: r.attempts,
                created_at: r.created_at,
                next_attempt_at: r.next_attempt_at,
            })
            .collect())
    }

    async fn delivered(&self, id: &str, status: u16, at: DateTime<Utc>) -> Result<(), StoreError> {
        let id = Uuid::parse_str(id).map_err(|e| StoreError::Other(e.to_string()))?;
        sqlx::query(
            "update webhook_deliveries
                set status = 'delivered', delivered_at = $3, last_attempt_at = $3,
                    attempts = attempts + 1, last_status_code = $2, last_error = null
              where id = $1",
        )
        .bind(id)
        .bind(i32::from(status))
        .bind(at)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(port_error)
    }

    async fn attempt_failed(
        &self,
        id: &str,
        status: Option<u16>,
        error: &str,
        at: DateTime<Utc>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let id = Uuid::parse_str(id).map_err(|e| StoreError::Other(e.to_string()))?;
        sqlx::query(
            "update webhook_deliveries
                set attempts = attempts + 1, last_attempt_at = $4, last_status_code = $2,
                    last_error = $3,
                    status = case when $5::timestamptz is null then 'failed' else 'pending' end,
                    next_attempt_at = coalesce($5, next_attempt_at)
              where id = $1",
        )
        .bind(id)
        .bind(status.map(i32::from))
        .bind(error)
        .bind(at)
        .bind(retry_at)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(port_error)
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // In slices, so no statement holds many locks or runs for long.
        let mut total = 0;
        loop {
            let deleted = sqlx::query(
                "delete from events where id in (
                     select e.id from events e
                      where e.occurred_at < $1
                        and not exists (select 1 from webhook_deliveries d
                                         where d.event_id = e.id and d.status = 'pending')
                      limit 5000)",
            )
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(port_error)?
            .rows_affected();
            total += deleted;
            if deleted < 5000 {
                return Ok(total);
            }
        }
    }
}
