//! Customers (tenants).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

use super::api_keys::{self, GeneratedKey, KeyRow};

/// The id dev mode trusts and creates, so the seed README's `X-Customer-ID: 1` works.
pub const DEMO_CUSTOMER_ID: i64 = 1;

#[derive(Debug, Clone, FromRow)]
pub struct CustomerRow {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Creates a customer and its first API key (all scopes) in one transaction: either both exist
/// afterwards or neither does. Returns the key with its secret, which is not stored.
pub async fn create_with_key(
    pool: &PgPool,
    name: &str,
    key_name: &str,
) -> sqlx::Result<(CustomerRow, KeyRow, GeneratedKey)> {
    let mut tx = pool.begin().await?;
    let customer: CustomerRow = sqlx::query_as(
        "insert into customers (name) values ($1)
         returning id, name, status, created_at, updated_at",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let generated = api_keys::generate();
    let key = api_keys::insert(
        &mut tx,
        customer.id,
        key_name,
        &generated,
        &api_keys::ALL_SCOPES,
    )
    .await?;
    tx.commit().await?;
    Ok((customer, key, generated))
}

/// Makes sure customer 1 ("demo") exists (dev mode), and that the identity sequence is past it
/// so customers created later through the admin API do not collide with it.
pub async fn ensure_demo(pool: &PgPool) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into customers (id, name) overriding system value values ($1, 'demo')
         on conflict (id) do nothing",
    )
    .bind(DEMO_CUSTOMER_ID)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "select setval(pg_get_serial_sequence('customers', 'id'),
                       greatest((select max(id) from customers), 1))",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Status of customer `id` (`active` / `suspended`), `None` if there is no such customer.
pub async fn status(pool: &PgPool, id: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("select status from customers where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}
