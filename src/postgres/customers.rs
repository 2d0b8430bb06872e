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

/// Creates a customer, its default settings and its first API key (all scopes) in one
/// transaction: either all exist afterwards or none does. Returns the key with its secret, which is not stored.
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
    super::settings::create_defaults(&mut tx, customer.id).await?;
    let generated = api_keys::generate();
    let key = api_keys::insert(
        &mut tx,
        customer.id,
        key_name,
        &generated,
        &api_keys::ALL_SCOPES,
        &[],
    )
    .await?;
    tx.commit().await?;
    Ok((customer, key, generated))
}

/// Makes sure customer 1 ("demo") exists (dev mode), and that the identity sequence is past it
/// so customers created later through the admin API do not collide with it.
pub async fn ensure_demo(pool: &PgPool) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let created = sqlx::query(
        "insert into customers (id, name) overriding system value values ($1, 'demo')
         on conflict (id) do nothing",
    )
    .bind(DEMO_CUSTOMER_ID)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if created == 1 {
        super::settings::create_defaults(&mut tx, DEMO_CUSTOMER_ID).await?;
    }
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

macro_rules! columns {
    () => {
        "id, name, status, created_at, updated_at"
    };
}

/// Customers by id, after `after` (paging).
pub async fn list(pool: &PgPool, after: i64, limit: i64) -> sqlx::Result<Vec<CustomerRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from customers where id > $1 order by id limit $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from customers where id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Renames and/or suspends/reactivates a customer. A suspended customer's keys answer 401 on
/// every node from the next request on (authentication reads the status).
pub async fn update(
    pool: &PgPool,
    id: i64,
    name: Option<&str>,
    status: Option<&str>,
) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as(concat!(
        "update customers set name = coalesce($2, name), status = coalesce($3, status)
          where id = $1 returning ",
        columns!()
    ))
    .bind(id)
    .bind(name)
    .bind(status)
    .fetch_optional(pool)
    .await
}

/// What [`delete`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    NotFound,
    /// The customer has invoices: billing records are kept; suspend the customer instead.
    HasInvoices,
}

/// Deletes a customer and everything it owns (services, domains, storms, keys, usage), unless
/// it has invoices.
pub async fn delete(pool: &PgPool, id: i64) -> sqlx::Result<Deleted> {
    let mut tx = pool.begin().await?;
    let exists: Option<i64> =
        sqlx::query_scalar("select id from customers where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Ok(Deleted::NotFound);
    }
    let invoiced: bool =
        sqlx::query_scalar("select exists (select 1 from invoices where customer_id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if invoiced {
        return Ok(Deleted::HasInvoices);
    }
    sqlx::query("delete from customers where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Deleted::Deleted)
}
