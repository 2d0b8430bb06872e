//! Read side of the engine for the API: domain states, storms, cluster membership.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::postgres::leases::{NODE_TIMEOUT, OWNERS_SQL};

#[derive(Debug, Clone, FromRow)]
pub struct DomainStateRow {
    pub domain_id: i64,
    pub hostname: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub state_since: Option<DateTime<Utc>>,
    pub desired_primary_weight: i16,
    pub desired_backup_weight: i16,
    pub primary_avail: Option<String>,
    pub backup_avail: Option<String>,
    pub primary_last: Option<serde_json::Value>,
    pub backup_last: Option<serde_json::Value>,
    pub observed_at: Option<DateTime<Utc>>,
    pub owner_node: Option<String>,
    pub vantages: serde_json::Value,
    pub decision_vantages: serde_json::Value,
    pub vantage_disagrees: serde_json::Value,
    pub drill: Option<serde_json::Value>,
    pub maintenance: Option<serde_json::Value>,
}

/// Per-domain engine state of a live service of the customer (`None`: no such service).
pub async fn service_state(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
) -> sqlx::Result<Option<Vec<DomainStateRow>>> {
    if !super::services::exists(pool, customer_id, service_id).await? {
        return Ok(None);
    }
    // The owner is the node whose lease session holds the shard's lock right now.
    let rows = sqlx::query_as(concat!(
        "with owners as (",
        OWNERS_SQL!(),
        ")
         select d.id as domain_id, d.hostname,
                coalesce(st.state, 'healthy') as state, st.state_reason, st.state_since,
                coalesce(st.desired_primary_weight, 100::smallint) as desired_primary_weight,
                coalesce(st.desired_backup_weight, 0::smallint) as desired_backup_weight,
                o.primary_avail::text as primary_avail, o.backup_avail::text as backup_avail,
                o.primary_last, o.backup_last, o.observed_at,
                n.node_id as owner_node,
                coalesce(o.vantages, '[]') as vantages,
                coalesce(st.vantages, '[]') as decision_vantages,
                coalesce(st.vantage_disagrees, '[]') as vantage_disagrees,
                (select jsonb_build_object('drill_id', dr.id, 'reason', dr.reason,
                                           'ends_at', dr.ends_at, 'began_at', dr.began_at,
                                           'requested_by', dr.requested_by)
                   from drills dr
                  where dr.domain_id = d.id and dr.finished_at is null
                    and (dr.began_at is not null or dr.ends_at > now())
                  order by dr.requested_at desc limit 1) as drill,
                (select jsonb_build_object('window_id', m.id, 'reason', m.reason,
                                           'starts_at', m.starts_at, 'ends_at', m.ends_at)
                   from maintenance_windows m
                  where m.service_id = d.service_id and (m.domain_id is null or m.domain_id = d.id)
                    and m.cancelled_at is null and m.starts_at <= now() and m.ends_at > now()
                  order by m.ends_at desc limit 1) as maintenance
           from service_domains d
           left join domain_states st on st.domain_id = d.id
           left join domain_observations o on o.domain_id = d.id
           left join owners w on w.shard = d.shard
           left join cluster_nodes n on n.backend_pid = w.pid
          where d.service_id = $1 and d.deleted_at is null
          order by d.id"
    ))
    .bind(service_id)
    .fetch_all(pool)
    .await?;
    Ok(Some(rows))
}

#[derive(Debug, Clone, FromRow)]
pub struct StormRow {
    pub id: Uuid,
    pub service_id: i64,
    pub domain_id: Option<i64>,
    pub hostname: Option<String>,
    pub kind: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub trigger: serde_json::Value,
    pub opened_by_node: Option<String>,
    pub closed_by_node: Option<String>,
}

/// Filters of the storm list.
#[derive(Debug, Default)]
pub struct StormFilter {
    pub service_id: Option<i64>,
    pub active: Option<bool>,
    /// Storms that were active at some point after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Storms that started before this instant.
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// `select … from` the customer's storms (`$1` = customer id) with their domains' names; a
/// macro so queries stay `&'static str`.
macro_rules! select_storms {
    () => {
        "select e.id, e.service_id, e.domain_id, d.hostname, e.kind, e.started_at, e.ended_at,
                e.trigger, e.opened_by_node, e.closed_by_node
           from storm_events e
           join services s on s.id = e.service_id
           left join service_domains d on d.id = e.domain_id
          where s.customer_id = $1"
    };
}

/// The customer's storms that produced discounts on invoice `invoice_id`, oldest first.
pub async fn of_invoice(
    pool: &PgPool,
    customer_id: i64,
    invoice_id: Uuid,
) -> sqlx::Result<Vec<StormRow>> {
    sqlx::query_as(concat!(
        select_storms!(),
        " and e.id in (select unnest(storm_ids) from invoice_line_items where invoice_id = $2)
          order by e.started_at, e.id"
    ))
    .bind(customer_id)
    .bind(invoice_id)
    .fetch_all(pool)
    .await
}

/// The customer's storms, newest first.
pub async fn list(pool: &PgPool, customer_id: i64, f: &StormFilter) -> sqlx::Result<Vec<StormRow>> {
    sqlx::query_as(concat!(
        select_storms!(),
        " and ($2::bigint is null or e.service_id = $2)
            and ($3::boolean is null or (e.ended_at is null) = $3)
            and ($4::timestamptz is null or e.ended_at is null or e.ended_at >= $4)
            and ($5::timestamptz is null or e.started_at < $5)
          order by e.started_at desc, e.id
          limit $6"
    ))
    .bind(customer_id)
    .bind(f.service_id)
    .bind(f.active)
    .bind(f.since)
    .bind(f.until)
    .bind(f.limit)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, customer_id: i64, id: Uuid) -> sqlx::Result<Option<StormRow>> {
    sqlx::query_as(concat!(select_storms!(), " and e.id = $2"))
        .bind(customer_id)
        .bind(id)
        .fetch_optional(pool)
        .await
}

#[derive(Debug, Clone, FromRow)]
pub struct NodeRow {
    pub node_id: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub alive: bool,
    /// Shards whose advisory lock the node's lease session holds now.
    pub shards: Vec<i16>,
    pub deposed_at: Option<DateTime<Utc>>,
    pub deposed_by: Option<String>,
    pub vantage: String,
}

/// The nodes, each with the shards its lease session holds right now (from `pg_locks`, the
/// one truth: a crashed node's session is gone with its locks, a frozen one's holds them until
/// it is deposed). Alive: a fresh heartbeat and a lease session that exists.
pub async fn cluster_nodes(pool: &PgPool) -> sqlx::Result<Vec<NodeRow>> {
    sqlx::query_as(concat!(
        "with owners as (",
        OWNERS_SQL!(),
        ")
         select n.node_id, n.started_at, n.heartbeat_at,
                n.heartbeat_at > now() - make_interval(secs => $1::double precision / 1000)
                  and exists (select 1 from pg_stat_activity a where a.pid = n.backend_pid
                                 and a.datname = current_database() and a.backend_start <= n.heartbeat_at) as alive,
                coalesce((select array_agg(w.shard::smallint order by w.shard)
                            from owners w where w.pid = n.backend_pid), '{}') as shards,
                n.deposed_at, n.deposed_by, n.vantage
           from cluster_nodes n order by n.vantage, n.node_id"
    ))
    .bind(NODE_TIMEOUT.as_millis() as i64)
    .fetch_all(pool)
    .await
}
