//! Webhook endpoints, their delivery log, and manual replays. (Events and deliveries are
//! written by [`super::outbox::emit`] in the transaction of each fact.)

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow)]
pub struct EndpointRow {
    pub id: i64,
    pub url: String,
    pub secret: String,
    pub event_types: Vec<String>,
    pub format: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! columns {
    () => {
        "id, url, secret, event_types, format, enabled, created_at, updated_at"
    };
}

/// Fields of a new endpoint, or the changes of a PATCH (`None`: unchanged).
#[derive(Debug, Default)]
pub struct EndpointFields {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub format: Option<String>,
    pub enabled: Option<bool>,
}

pub async fn create(
    pool: &PgPool,
    customer_id: i64,
    f: &EndpointFields,
) -> sqlx::Result<EndpointRow> {
    sqlx::query_as(concat!(
        "insert into webhook_endpoints (customer_id, url, secret, event_types, format, enabled)
         values ($1, $2, $3, coalesce($4, '{}'), coalesce($5, 'json'), coalesce($6, true))
         returning ",
        columns!()
    ))
    .bind(customer_id)
    .bind(&f.url)
    .bind(&f.secret)
    .bind(&f.event_types)
    .bind(&f.format)
    .bind(f.enabled)
    .fetch_one(pool)
    .await
}

pub async fn list(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<EndpointRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from webhook_endpoints where customer_id = $1 order by id"
    ))
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from webhook_endpoints where id = $1 and customer_id = $2"
    ))
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

pub async fn update(
    pool: &PgPool,
    customer_id: i64,
    id: i64,
    f: &EndpointFields,
) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as(concat!(
        "update webhook_endpoints
            set url = coalesce($3, url), secret = coalesce($4, secret),
                event_types = coalesce($5, event_types), format = coalesce($6, format),
                enabled = coalesce($7, enabled)
          where id = $1 and customer_id = $2
      returning ",
        columns!()
    ))
    .bind(id)
    .bind(customer_id)
    .bind(&f.url)
    .bind(&f.secret)
    .bind(&f.event_types)
    .bind(&f.format)
    .bind(f.enabled)
    .fetch_optional(pool)
    .await
}

pub async fn delete(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<bool> {
    let r = sqlx::query("delete from webhook_endpoints where id = $1 and customer_id = $2")
        .bind(id)
        .bind(customer_id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Queues a `ping` event for this endpoint only; returns the event id.
pub async fn ping(pool: &PgPool, customer_id: i64, endpoint_id: i64) -> sqlx::Result<Uuid> {
    let mut conn = pool.acquire().await?;
    let event = super::outbox::NewEvent {
        endpoint: Some(endpoint_id),
        ..super::outbox::NewEvent::new(
            customer_id,
            tranche_core::events::EventType::Ping,
            serde_json::json!({ "endpoint_id": endpoint_id }),
        )
    };
    let ids = super::outbox::emit(&mut conn, &[event]).await?;
    ids.into_iter()
        .next()
        .ok_or_else(|| sqlx::Error::Protocol("the ping was not recorded".into()))
}

#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

macro_rules! delivery_columns {
    () => {
        "d.id, d.event_id, ev.type as event_type, ev.occurred_at, d.status, d.attempts,
         d.next_attempt_at, d.last_attempt_at, d.last_status_code, d.last_error, d.delivered_at,
         d.created_at"
    };
}

/// An endpoint's delivery log, newest first.
pub async fn deliveries(
    pool: &PgPool,
    endpoint_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(concat!(
        "select ",
        delivery_columns!(),
        " from webhook_deliveries d join events ev on ev.id = d.event_id
          where d.endpoint_id = $1
          order by d.seq desc
          limit $2"
    ))
    .bind(endpoint_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Queues the event of delivery `delivery_id` again for its endpoint (a new delivery, at the
/// end of the endpoint's queue). `None`: no such delivery of this endpoint.
pub async fn replay(
    pool: &PgPool,
    endpoint_id: i64,
    delivery_id: Uuid,
) -> sqlx::Result<Option<DeliveryRow>> {
    sqlx::query_as(concat!(
        "with new as (
             insert into webhook_deliveries (endpoint_id, event_id, customer_id)
             select endpoint_id, event_id, customer_id from webhook_deliveries
              where id = $1 and endpoint_id = $2
             returning *)
         select ",
        delivery_columns!(),
        " from new d join events ev on ev.id = d.event_id"
    ))
    .bind(delivery_id)
    .bind(endpoint_id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: Uuid,
    pub customer_id: i64,
    pub r#type: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// The customer's events, newest first.
pub async fn events(
    pool: &PgPool,
    customer_id: i64,
    event_type: Option<&str>,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as(
        "select id, customer_id, type, occurred_at, payload from events
          where customer_id = $1
            and ($2::text is null or type = $2)
            and ($3::timestamptz is null or occurred_at < $3)
          order by occurred_at desc, id
          limit $4",
    )
    .bind(customer_id)
    .bind(event_type)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}
