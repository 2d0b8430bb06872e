//! Shard leases over PostgreSQL: session advisory locks on one dedicated connection, fencing
//! epochs in `shard_leases`, membership in `cluster_nodes`.
//!
//! Everything goes through the dedicated connection, so any failure of it (the database
//! restarted, the network broke) shows up as an error here and the lease keeper drops every
//! shard at once. A process that dies closes the connection and PostgreSQL frees its locks; a
//! process that freezes keeps it, so survivors end a session whose node missed its heartbeat
//! deadline (`depose_stale`). The advisory locks are the one truth about who owns a shard:
//! [`OWNERS_SQL!`] reads them from `pg_locks` for the API.

use super::port_error;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;
use tranche_actors::ports::{LeaseBackend, Membership, StoreError};
use tranche_core::domain::vantage::Member;

/// First key of the two-key advisory lock space used for shards (ASCII "TRNC", 1414680131).
const LOCK_SPACE: i32 = 0x5452_4e43;
// `OWNERS_SQL!` spells the lock space out as an oid.
const _: () = assert!(LOCK_SPACE == 1_414_680_131);
/// A node whose heartbeat is older than this is considered dead when computing fair shares
/// (a node whose lease session is gone is dead at once), and is deposed by the survivors.
pub const NODE_TIMEOUT: Duration = tranche_actors::config::LEASE_DEADLINE;
/// `application_name` of lease sessions (visible in `pg_stat_activity`).
const APPLICATION_NAME: &str = "tranche-lease";

/// `application_name` of a node's notification listener (configuration changes and vantage
/// summaries), so that survivors end it together with the lease session when they depose the
/// node: a frozen process never reads its notifications, and PostgreSQL's notification queue
/// cannot advance past the slowest listener — it would fill up for every node. At most 63
/// bytes, as PostgreSQL keeps.
pub fn listener_application_name(node_id: &str) -> String {
    let mut name = format!("tranche-listen {node_id}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// `(shard, pid)` of every shard lock held right now: the advisory locks in `pg_locks`
/// (two-key form: `classid` = the lock space [`LOCK_SPACE`], `objid` = the shard, `objsubid` =
/// 2). A lock is held by exactly one session, so no shard is ever counted twice. A macro so
/// queries built with it stay `&'static str`.
#[macro_export]
macro_rules! OWNERS_SQL {
    () => {
        "select l.objid::int as shard, l.pid from pg_locks l
          where l.locktype = 'advisory' and l.granted and l.objsubid = 2
            and l.classid = 1414680131::oid"
    };
}
pub use OWNERS_SQL;

pub struct PgLeaseBackend {
    pool: PgPool,
    /// The lock connection, detached from the pool: dropping it closes it, which frees every
    /// lock (a pooled connection would go back to the pool still holding them).
    conn: Mutex<Option<PgConnection>>,
    /// This node's vantage, recorded with every heartbeat.
    vantage: String,
}

impl PgLeaseBackend {
    pub fn new(pool: PgPool, vantage: impl Into<String>) -> Self {
        Self {
            pool,
            conn: Mutex::new(None),
            vantage: vantage.into(),
        }
    }

    async fn with_conn<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c mut sqlx::PgConnection,
        ) -> futures_like::BoxFuture<'c, sqlx::Result<T>>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let mut conn = self.pool.acquire().await.map_err(port_error)?.detach();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "set application_name = '{APPLICATION_NAME}'"
            )))
            .execute(&mut conn)
            .await
            .map_err(port_error)?;
            *guard = Some(conn);
        }
        let conn = guard.as_mut().expect("just set");
        match f(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // The connection's state is unknown: drop it (and with it every lock).
                if let Some(c) = guard.take() {
                    let _ = c.close().await;
                }
                Err(port_error(e))
            }
        }
    }
}

/// Boxed futures without pulling in the `futures` crate.
mod futures_like {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

#[async_trait::async_trait]
impl LeaseBackend for PgLeaseBackend {
    async fn heartbeat(&self, node_id: &str, shards: &[u16]) -> Result<usize, StoreError> {
        let node = node_id.to_owned();
        let shards: Vec<i16> = shards.iter().map(|s| *s as i16).collect();
        let timeout_ms = NODE_TIMEOUT.as_millis() as i64;
        let vantage = self.vantage.clone();
        self.with_conn(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "insert into cluster_nodes (node_id, heartbeat_at, shards, backend_pid, vantage)
                     values ($1, now(), $2, pg_backend_pid(), $3)
                     on conflict (node_id) do update
                        set heartbeat_at = now(), shards = excluded.shards,
                            backend_pid = excluded.backend_pid, vantage = excluded.vantage",
                )
                .bind(&node)
                .bind(&shards)
                .bind(&vantage)
                .execute(&mut *c)
                .await?;
                // Live: a fresh heartbeat *and* a lease session that still exists. A crashed node's
                // session disappears at once, so its shards are redistributed on the next tick.
                let live: i64 = sqlx::query_scalar(
                    "select count(*) from cluster_nodes n
                      where n.heartbeat_at > now() - make_interval(secs => $1::double precision / 1000)
                        and exists (select 1 from pg_stat_activity a where a.pid = n.backend_pid
                                 and a.datname = current_database() and a.backend_start <= n.heartbeat_at)",
                )
                .bind(timeout_ms)
                .fetch_one(&mut *c)
                .await?;
                // Forget nodes that crashed long ago (clean shutdowns deregister themselves).
                sqlx::query("delete from cluster_nodes where heartbeat_at < now() - interval '1 hour'")
                    .execute(&mut *c)
                    .await?;
                Ok(live.max(1) as usize)
            })
        })
        .await
    }

    async fn depose_stale(
        &self,
        node_id: &str,
        deadline: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let node = node_id.to_owned();
        let deadline_ms = deadline.as_millis() as i64;
        self.with_conn(move |c| {
            Box::pin(async move {
                // The session must be the lease session the node last heartbeated from (started
                // before that heartbeat, named as ours), not a later one that reused its pid.
                // The candidates are read first and ended one by one: a volatile function in a
                // WHERE clause may be evaluated before the other conditions. Their rows stay
                // locked until the end, so none can heartbeat in between and be deposed fresh.
                let mut tx = sqlx::Connection::begin(&mut *c).await?;
                let stale: Vec<(String, i32)> = sqlx::query_as(
                    "select n.node_id, n.backend_pid
                       from cluster_nodes n
                       join pg_stat_activity a on a.pid = n.backend_pid
                                             and a.datname = current_database()
                      where n.node_id <> $1
                        and n.heartbeat_at < now() - make_interval(secs => $2::double precision / 1000)
                        and a.backend_start <= n.heartbeat_at
                        and a.application_name = $3
                        for update of n skip locked",
                )
                .bind(&node)
                .bind(deadline_ms)
                .bind(APPLICATION_NAME)
                .fetch_all(&mut *tx)
                .await?;
                let mut deposed = Vec::with_capacity(stale.len());
                for (other, pid) in stale {
                    let ended: bool = sqlx::query_scalar("select pg_terminate_backend($1, 1000)")
                        .bind(pid)
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(
                        "update cluster_nodes set deposed_at = now(), deposed_by = $2
                          where node_id = $1 and backend_pid = $3",
                    )
                    .bind(&other)
                    .bind(&node)
                    .bind(pid)
                    .execute(&mut *tx)
                    .await?;
                    // Its listener too (see `listener_application_name`); it reconnects if the
                    // node wakes up.
                    sqlx::query(
                        "select pg_terminate_backend(pid) from pg_stat_activity
                          where application_name = $1 and datname = current_database()",
                    )
                    .bind(listener_application_name(&other))
                    .execute(&mut *tx)
                    .await?;
                    if ended {
                        deposed.push(other);
                    }
                }
                tx.commit().await?;
                Ok(deposed)
            })
        })
        .await
    }

    async fn try_acquire(&self, node_id: &str, shard: u16) -> Result<Option<i64>, StoreError> {
        let node = node_id.to_owned();
        self.with_conn(move |c| {
            Box::pin(async move {
                let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
                    .bind(LOCK_SPACE)
                    .bind(i32::from(shard))
                    .fetch_one(&mut *c)
                    .await?;
                if !locked {
                    return Ok(None);
                }
                let epoch: i64 = sqlx::query_scalar(
                    "insert into shard_leases (shard, epoch, node_id) values ($1, 1, $2)
                     on conflict (shard) do update
                        set epoch = shard_leases.epoch + 1, node_id = excluded.node_id, acquired_at = now()
                     returning epoch",
                )
                .bind(shard as i16)
                .bind(&node)
                .fetch_one(&mut *c)
                .await?;
                Ok(Some(epoch))
            })
        })
        .await
    }

    async fn release(&self, shard: u16) -> Result<(), StoreError> {
        self.with_conn(move |c| {
            Box::pin(async move {
                sqlx::query("select pg_advisory_unlock($1, $2)")
                    .bind(LOCK_SPACE)
                    .bind(i32::from(shard))
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn reset(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = c.close().await;
        }
    }

    async fn members(&self) -> Result<Membership, StoreError> {
        // Live as in `heartbeat`; owners from the locks themselves (`OWNERS_SQL!`).
        let rows: Vec<(String, String, Vec<i32>)> = sqlx::query_as(concat!(
            "with owners as (",
            OWNERS_SQL!(),
            ")
             select n.node_id, n.vantage,
                    coalesce((select array_agg(w.shard) from owners w where w.pid = n.backend_pid), '{}')
               from cluster_nodes n
              where n.heartbeat_at > now() - make_interval(secs => $1::double precision / 1000)
                and exists (select 1 from pg_stat_activity a where a.pid = n.backend_pid
                               and a.datname = current_database() and a.backend_start <= n.heartbeat_at)"
        ))
        .bind(NODE_TIMEOUT.as_millis() as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        let mut membership = Membership::default();
        for (node_id, vantage, shards) in rows {
            for shard in shards {
                membership.owners.insert(shard as u16, node_id.clone());
            }
            membership.live.push(Member { node_id, vantage });
        }
        Ok(membership)
    }

    async fn deregister(&self, node_id: &str) {
        if let Err(e) = sqlx::query("delete from cluster_nodes where node_id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "could not deregister node");
        }
    }
}
