//! Status-page links: read-only tokens to `/status/{token}` (only their SHA-256 is stored).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow)]
pub struct LinkRow {
    pub id: Uuid,
    pub customer_id: i64,
    pub service_id: Option<i64>,
    pub label: String,
    pub session: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, customer_id, service_id, label, session, created_by, created_at, expires_at, revoked_at";

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new random token (256 bits, hex).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub struct NewLink<'a> {
    pub service_id: Option<i64>,
    pub label: &'a str,
    pub session: bool,
    pub created_by: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates a link and returns it with its token (`None`: the service is not the customer's).
pub async fn create(
    pool: &PgPool,
    customer_id: i64,
    link: NewLink<'_>,
) -> sqlx::Result<Option<(LinkRow, String)>> {
    if let Some(service_id) = link.service_id
        && !super::services::exists(pool, customer_id, service_id).await?
    {
        return Ok(None);
    }
    let token = new_token();
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into status_links (customer_id, service_id, token_hash, label, session, created_by,
                expires_at)
         values ($1, $2, $3, $4, $5, $6, $7)
         returning {COLUMNS}"
    )))
    .bind(customer_id)
    .bind(link.service_id)
    .bind(hash(&token))
    .bind(link.label)
    .bind(link.session)
    .bind(link.created_by)
    .bind(link.expires_at)
    .fetch_one(pool)
    .await?;
    Ok(Some((row, token)))
}

/// The live link a token opens (not revoked, not expired, its customer active).
pub async fn resolve(pool: &PgPool, token: &str) -> sqlx::Result<Option<LinkRow>> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from status_links
          where token_hash = $1 and revoked_at is null
            and (expires_at is null or expires_at > now())
            and customer_id in (select id from customers where status = 'active')"
    )))
    .bind(hash(token))
    .fetch_optional(pool)
    .await
}

/// The customer's links that are not sign-in sessions, newest first.
pub async fn list(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<LinkRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from status_links
          where customer_id = $1 and not session
          order by created_at desc limit 1000"
    )))
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

/// Revokes a link (the page stops updating at once); `None`: no such link.
pub async fn revoke(pool: &PgPool, customer_id: i64, id: Uuid) -> sqlx::Result<Option<LinkRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update status_links set revoked_at = coalesce(revoked_at, now())
          where id = $1 and customer_id = $2
      returning {COLUMNS}"
    )))
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}
