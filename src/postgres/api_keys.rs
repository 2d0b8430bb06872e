//! API keys: generation, hashing, lookup.
//!
//! A key reads `tr_<12 hex>_<64 hex>`. The first part (`tr_<12 hex>`, 48 random bits) is the
//! *prefix*: stored in clear, unique, shown in listings, and used to find the row. The whole key
//! carries 256 random bits after the prefix; only its SHA-256 is stored. A fast hash is right for
//! a random 256-bit secret (there is nothing to brute-force); the comparison is constant-time.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use subtle::ConstantTimeEq;

use super::read_cache::{self, NotifiedCache};

/// Scopes a customer's first key gets.
pub const ALL_SCOPES: [&str; 3] = ["read", "write", "admin"];
/// The scope that lets a key report job status, for the applications it names only.
pub const JOB_STATUS: &str = "job-status";
/// Every scope a key can hold.
pub const KNOWN_SCOPES: [&str; 4] = ["read", "write", "admin", JOB_STATUS];

/// A freshly generated key. `secret` is the whole key, shown to the client once.
pub struct GeneratedKey {
    pub prefix: String,
    pub secret: String,
    pub hash: [u8; 32],
}

/// A stored key (never the secret).
#[derive(Debug, Clone, FromRow)]
pub struct KeyRow {
    pub id: i64,
    pub customer_id: i64,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    /// The applications a `job-status` key reports for (empty without that scope).
    pub applications: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// What authentication needs to know about a presented key.
#[derive(Debug, Clone, FromRow)]
pub struct KeyAuthRow {
    pub id: i64,
    pub customer_id: i64,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub applications: Vec<String>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub customer_status: String,
}

pub fn generate() -> GeneratedKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let prefix = format!("tr_{}", hex::encode(id));
    let secret = format!("{prefix}_{}", hex::encode(secret));
    let hash = hash(&secret);
    GeneratedKey {
        prefix,
        secret,
        hash,
    }
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The prefix of a presented key, if it has the shape of one.
pub fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("tr_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && secret.len() == 64).then(|| &key[..15])
}

/// Whether `key` hashes to `stored`, in constant time.
pub fn matches(key: &str, stored: &[u8]) -> bool {
    hash(key).ct_eq(stored).into()
}

pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    name: &str,
    key: &GeneratedKey,
    scopes: &[&str],
    applications: &[String],
) -> sqlx::Result<KeyRow> {
    sqlx::query_as(
        "insert into api_keys (customer_id, name, prefix, secret_hash, scopes, applications)
         values ($1, $2, $3, $4, $5, $6)
         returning id, customer_id, name, prefix, scopes, applications, created_at",
    )
    .bind(customer_id)
    .bind(name)
    .bind(&key.prefix)
    .bind(&key.hash[..])
    .bind(scopes)
    .bind(applications)
    .fetch_one(&mut **tx)
    .await
}

/// The unrevoked key with this prefix, with its customer's status.
pub async fn find_for_auth(pool: &PgPool, prefix: &str) -> sqlx::Result<Option<KeyAuthRow>> {
    sqlx::query_as(
        "select k.id, k.customer_id, k.secret_hash, k.scopes, k.applications, k.last_used_at,
                c.status as customer_status
           from api_keys k join customers c on c.id = k.customer_id
          where k.prefix = $1 and k.revoked_at is null",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await
}

/// Records use of a key. Callers rate-limit this (once a minute per key), so reads stay reads.
pub async fn touch(pool: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query("update api_keys set last_used_at = now() where id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(drop)
}

/// A key as its customer sees it in listings.
#[derive(Debug, Clone, FromRow)]
pub struct KeyListRow {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub applications: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The customer's keys, newest first (revoked ones included, marked).
pub async fn list(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<KeyListRow>> {
    sqlx::query_as(
        "select id, name, prefix, scopes, applications, created_at, last_used_at, revoked_at
           from api_keys where customer_id = $1 order by id desc",
    )
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

/// Creates a key for the customer; the returned secret is not stored.
pub async fn create(
    pool: &PgPool,
    customer_id: i64,
    name: &str,
    scopes: &[&str],
    applications: &[String],
) -> sqlx::Result<(KeyRow, GeneratedKey)> {
    let mut tx = pool.begin().await?;
    let generated = generate();
    let key = insert(&mut tx, customer_id, name, &generated, scopes, applications).await?;
    tx.commit().await?;
    Ok((key, generated))
}

/// Revokes the customer's key `id` (its trigger announces it to every node's key cache).
/// Revoking a revoked key keeps its first revocation time. `None`: no such key.
pub async fn revoke(pool: &PgPool, customer_id: i64, id: i64) -> sqlx::Result<Option<KeyListRow>> {
    sqlx::query_as(
        "update api_keys set revoked_at = coalesce(revoked_at, now())
          where id = $1 and customer_id = $2
      returning id, name, prefix, scopes, applications, created_at, last_used_at, revoked_at",
    )
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape_and_verify() {
        let k = generate();
        assert_eq!(k.secret.len(), 3 + 12 + 1 + 64);
        assert_eq!(prefix_of(&k.secret), Some(k.prefix.as_str()));
        assert!(matches(&k.secret, &k.hash));
        let last = if k.secret.ends_with('0') { "1" } else { "0" };
        let tampered = format!("{}{last}", &k.secret[..k.secret.len() - 1]);
        assert!(!matches(&tampered, &k.hash));
        assert_ne!(generate().secret, k.secret);
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!(prefix_of("tr_abc_def"), None);
        assert_eq!(prefix_of("not-a-key"), None);
        assert_eq!(prefix_of(""), None);
    }
}

/// The notification channel announcing changes that can refuse a cached key (migration 31):
/// payload `key:<prefix>` or `customer:<id>`.
pub const AUTH_CHANNEL: &str = "tranche_auth";

/// How long a cached key is trusted without news: the safety net for a listener connection that
/// died without the node noticing. Revocations normally arrive by notification in milliseconds.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Authentication lookups: a per-node cache kept exact by notification, and lookups shared
/// between concurrent requests when the cache cannot answer.
///
/// **The cache** ([`NotifiedCache`]). A key found is kept (its hash, scopes, customer status;
/// never the secret) and answers later requests without a query. Every change that can refuse
/// it — revocation, deletion, new scopes or applications, its customer's suspension — is
/// announced on [`AUTH_CHANNEL`] by a trigger in the changing transaction, and the node's
/// [`read_cache::listen`] drops the key or the customer's keys as the notification arrives. The
/// node that makes the change drops them itself before answering ([`KeyLookups::forget_key`],
/// [`KeyLookups::forget_customer`]), so there it takes effect at once; elsewhere within
/// PostgreSQL's notification latency (milliseconds). Each entry is trusted for [`CACHE_TTL`]
/// at most.
///
/// **Shared lookups.** A request that finds no lookup running starts one at once (one query,
/// as alone). Requests that arrive while one runs wait for the next, which starts when it ends
/// and looks all of their prefixes up in one query (`prefix = any(…)`). Every such answer comes
/// from a query that began after its request arrived.
pub struct KeyLookups {
    pool: PgPool,
    queue: std::sync::Mutex<LookupQueue>,
    cache: NotifiedCache<String, KeyAuthRow>,
}

/// A failed round, as each of its requests gets it: whether the database was unreachable
/// (503 upstream) and the error.
type LookupError = (bool, String);
type Waiter = tokio::sync::oneshot::Sender<Result<Option<KeyAuthRow>, LookupError>>;

#[derive(Default)]
struct LookupQueue {
    running: bool,
    waiting: Vec<(String, Waiter)>,
}

impl KeyLookups {
    pub fn new(pool: PgPool) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            pool,
            queue: std::sync::Mutex::default(),
            cache: NotifiedCache::new(CACHE_TTL),
        })
    }

    /// The unrevoked key with this prefix and its customer's status: from the cache when it
    /// holds the key, else from [`find_for_auth`] shared with the requests arriving meanwhile.
    pub async fn find(
        self: &std::sync::Arc<Self>,
        prefix: &str,
    ) -> sqlx::Result<Option<KeyAuthRow>> {
        let miss = match self.cache.get(prefix) {
            Ok(row) => {
                counted("cache");
                return Ok(Some(row));
            }
            Err(miss) => miss,
        };
        counted("database");
        let row = self.look_up(prefix).await?;
        if let Some(row) = &row {
            self.cache.insert(miss, prefix.to_owned(), row.clone());
        }
        Ok(row)
    }

    /// Records that the key was just used (`last_used_at` written), so the cached copy does not
    /// ask for another write before [`find_for_auth`] would.
    pub fn touched(&self, prefix: &str, at: DateTime<Utc>) {
        self.cache.update(prefix, |row| row.last_used_at = Some(at));
    }

    /// Drops the key with this prefix from the cache (after revoking it).
    pub fn forget_key(&self, prefix: &str) {
        self.cache.invalidate(|p, _| p == prefix);
    }

    /// Drops the customer's keys from the cache (after suspending or deleting it).
    pub fn forget_customer(&self, customer_id: i64) {
        self.cache
            .invalidate(|_, row| row.customer_id == customer_id);
    }
}

impl read_cache::Notified for KeyLookups {
    fn channels(&self) -> &'static [&'static str] {
        &[AUTH_CHANNEL]
    }

    /// Applies an [`AUTH_CHANNEL`] payload; anything unreadable empties the cache.
    fn notified(&self, _channel: &str, payload: &str) {
        match payload.split_once(':') {
            Some(("key", prefix)) => self.forget_key(prefix),
            Some(("customer", id)) if let Ok(id) = id.parse() => self.forget_customer(id),
            _ => {
                tracing::warn!(
                    payload,
                    "unreadable {AUTH_CHANNEL} notification: cache emptied"
                );
                self.cache.invalidate(|_, _| true);
            }
        }
    }

    fn set_listening(&self, listening: bool) {
        self.cache.set_listening(listening);
    }
}

impl KeyLookups {
    /// [`find_for_auth`], shared with the requests arriving meanwhile.
    async fn look_up(
        self: &std::sync::Arc<Self>,
        prefix: &str,
    ) -> sqlx::Result<Option<KeyAuthRow>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.waiting.push((prefix.to_owned(), tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // In a task of its own: a request cancelled mid-lookup must not strand the others.
            let me = self.clone();
            tokio::spawn(async move { me.run().await });
        }
        match rx.await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err((true, e))) => Err(sqlx::Error::Io(std::io::Error::other(e))),
            Ok(Err((false, e))) => Err(sqlx::Error::Protocol(e)),
            Err(_) => Err(sqlx::Error::Protocol("key lookup abandoned".into())),
        }
    }

    /// Looks up every waiting prefix, round after round, until none wait.
    async fn run(&self) {
        loop {
            let round = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let mut prefixes: Vec<&str> = round.iter().map(|(p, _)| p.as_str()).collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            let rows: sqlx::Result<Vec<(String, KeyAuthRow)>> = if let [one] = prefixes[..] {
                find_for_auth(&self.pool, one)
                    .await
                    .map(|r| r.into_iter().map(|r| (one.to_owned(), r)).collect())
            } else {
                find_many(&self.pool, &prefixes).await
            };
            match rows {
                Ok(rows) => {
                    let found: std::collections::HashMap<String, KeyAuthRow> =
                        rows.into_iter().collect();
                    for (prefix, waiter) in round {
                        let _ = waiter.send(Ok(found.get(&prefix).cloned()));
                    }
                }
                Err(e) => {
                    let unavailable = matches!(
                        e,
                        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
                    );
                    let message = e.to_string();
                    for (_, waiter) in round {
                        let _ = waiter.send(Err((unavailable, message.clone())));
                    }
                }
            }
        }
    }
}

fn counted(source: &'static str) {
    crate::metrics::METRICS
        .api_key_lookups
        .get_or_create(&crate::metrics::SourceLabels { source })
        .inc();
}

/// [`find_for_auth`] for several prefixes, each with its row.
async fn find_many(pool: &PgPool, prefixes: &[&str]) -> sqlx::Result<Vec<(String, KeyAuthRow)>> {
    #[derive(FromRow)]
    struct Row {
        prefix: String,
        #[sqlx(flatten)]
        key: KeyAuthRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "select k.prefix, k.id, k.customer_id, k.secret_hash, k.scopes, k.applications,
                k.last_used_at, c.status as customer_status
           from api_keys k join customers c on c.id = k.customer_id
          where k.prefix = any($1) and k.revoked_at is null",
    )
    .bind(prefixes)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.prefix, r.key)).collect())
}
