//! Usage snapshots: recorded idempotently, never changed once invoiced.
//!
//! A report carries the usage a source sees *now* for one window (cumulative), keyed by
//! (service, window, source). [`record`] makes the stored revisions of that key add up to it,
//! by the rules of [`tranche_core::usage::revision`] (create, update the unbilled latest
//! revision, adjust after billing, never reduce what was invoiced).
//!
//! A snapshot is billed when its invoice line exists (the line's key is the snapshot's id;
//! billing does not rewrite the snapshot). Writers hold each customer's billing lock in shared
//! mode, from before they read until they commit, and a billing run holds it exclusively
//! (migration 32): a run either bills a snapshot before the report sees it (→ adjustment) or
//! after the report changed it (→ billed with the new values), never in between, and no
//! snapshot commits below a sequence number a run has already passed. Writers of one service
//! are serialised by a transaction-scoped advisory lock, taken after the customers' locks.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use tranche_actors::ports::UsageReport;
use tranche_core::usage::revision::{Change, Revision, last_per_key, plan_revision};
use uuid::Uuid;

/// Advisory-lock key space of usage writers (`pg_advisory_xact_lock(USAGE_LOCK_SPACE, id)`).
const USAGE_LOCK_SPACE: i32 = 0x5553_4147; // "USAG"

#[derive(Debug, Clone, FromRow)]
pub struct SnapshotRow {
    pub id: Uuid,
    pub service_id: i64,
    pub customer_id: i64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub primary_bytes: i64,
    pub backup_bytes: i64,
    pub source: String,
    pub revision: i32,
    pub invoice_id: Option<Uuid>,
    pub billed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A snapshot's columns, from `usage_snapshots u` left-joined to its line `l`.
macro_rules! columns {
    () => {
        "u.id, u.service_id, u.customer_id, u.window_start, u.window_end, u.primary_bytes,
         u.backup_bytes, u.source, u.revision, l.invoice_id, l.created_at as billed_at,
         u.created_at, u.updated_at"
    };
}

/// A snapshot's columns as an insert or update of an unbilled snapshot returns them.
macro_rules! unbilled_columns {
    () => {
        "u.id, u.service_id, u.customer_id, u.window_start, u.window_end, u.primary_bytes,
         u.backup_bytes, u.source, u.revision, null::uuid as invoice_id,
         null::timestamptz as billed_at, u.created_at, u.updated_at"
    };
}

pub use tranche_core::usage::revision::Outcome;

type Key = (i64, DateTime<Utc>, DateTime<Utc>, String);

fn key(r: &UsageReport) -> Key {
    (r.service_id, r.window_start, r.window_end, r.source.clone())
}

fn row_key(row: &SnapshotRow) -> Key {
    (
        row.service_id,
        row.window_start,
        row.window_end,
        row.source.clone(),
    )
}

/// Records `reports` in one transaction (load the keys' revisions, plan each report with the
/// core's [`plan_revision`], apply); per report, what happened and the snapshot that now
/// carries it (for `below_billed`/`unchanged` with every revision billed: the latest revision).
/// Reports repeating a key within the call: the last one wins.
pub async fn record(
    pool: &PgPool,
    reports: &[UsageReport],
) -> sqlx::Result<Vec<(Outcome, SnapshotRow)>> {
    let mut tx = pool.begin().await?;
    let out = record_in(&mut tx, reports).await?;
    tx.commit().await?;
    Ok(out)
}

/// [`record`] inside the caller's transaction (the fold of metered events uses it).
pub async fn record_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    reports: &[UsageReport],
) -> sqlx::Result<Vec<(Outcome, SnapshotRow)>> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let mut customers: Vec<i64> = reports.iter().map(|r| r.customer_id).collect();
    customers.sort_unstable();
    customers.dedup();
    let mut services: Vec<i64> = reports.iter().map(|r| r.service_id).collect();
    services.sort_unstable();
    services.dedup();
    // The customers' billing locks (shared; a billing run holds one exclusively), then the
    // services' writer locks, each in ascending order: every writer locks in the same order.
    // One round trip (volatile functions run after the sort).
    sqlx::query(
        "select case when k.shared then pg_advisory_xact_lock_shared(k.space, k.key)
                     else pg_advisory_xact_lock(k.space, k.key) end
           from (select 0 as phase, $1::int4 as space, (c % 2147483647)::int4 as key,
                        true as shared
                   from unnest($2::int8[]) c
                 union all
                 select 1, $3::int4, (s % 2147483647)::int4, false
                   from unnest($4::int8[]) s) k
          order by k.phase, k.key",
    )
    .bind(super::billing::BILLING_LOCK_SPACE)
    .bind(&customers)
    .bind(USAGE_LOCK_SPACE)
    .bind(&services)
    .execute(&mut **tx)
    .await?;

    let existing: Vec<SnapshotRow> = sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from usage_snapshots u left join invoice_line_items l on l.snapshot_id = u.id
          where (u.service_id, u.window_start, u.window_end, u.source) in
                (select * from unnest($1::int8[], $2::timestamptz[], $3::timestamptz[], $4::text[]))
          order by u.revision
          for update of u"
    ))
    .bind(reports.iter().map(|r| r.service_id).collect::<Vec<_>>())
    .bind(reports.iter().map(|r| r.window_start).collect::<Vec<_>>())
    .bind(reports.iter().map(|r| r.window_end).collect::<Vec<_>>())
    .bind(reports.iter().map(|r| r.source.clone()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let mut revisions: HashMap<Key, Vec<SnapshotRow>> = HashMap::new();
    for row in existing {
        revisions.entry(row_key(&row)).or_default().push(row);
    }

    // Plan every key's last report; gather the writes by kind.
    let mut out: Vec<(usize, Outcome, SnapshotRow)> = Vec::with_capacity(reports.len());
    let mut inserts: Vec<(usize, Outcome, i32, i64, i64)> = Vec::new();
    let mut updates: Vec<(usize, Uuid, i64, i64)> = Vec::new();
    for i in last_per_key(reports.iter().map(key)) {
        let r = &reports[i];
        let revs = revisions.get(&key(r)).map(Vec::as_slice).unwrap_or(&[]);
        let seen: Vec<Revision> = revs
            .iter()
            .map(|s| Revision {
                revision: s.revision,
                primary_bytes: s.primary_bytes,
                backup_bytes: s.backup_bytes,
                billed: s.invoice_id.is_some(),
            })
            .collect();
        let plan = plan_revision(&seen, r.primary_bytes, r.backup_bytes);
        match plan.change {
            Change::Insert {
                revision,
                primary_bytes,
                backup_bytes,
            } => inserts.push((i, plan.outcome, revision, primary_bytes, backup_bytes)),
            Change::UpdateLatest {
                primary_bytes,
                backup_bytes,
            } => {
                let last = revs.last().expect("an update has a latest revision");
                updates.push((i, last.id, primary_bytes, backup_bytes));
            }
            Change::Keep => {
                let last = revs.last().expect("a kept report has a latest revision");
                out.push((i, plan.outcome, last.clone()));
            }
        }
    }

    if !inserts.is_empty() {
        let column = |f: &dyn Fn(&UsageReport) -> i64| -> Vec<i64> {
            inserts.iter().map(|x| f(&reports[x.0])).collect()
        };
        let rows: Vec<SnapshotRow> = sqlx::query_as(concat!(
            "insert into usage_snapshots as u
                    (service_id, customer_id, window_start, window_end, primary_bytes,
                     backup_bytes, source, revision)
             select * from unnest($1::int8[], $2::int8[], $3::timestamptz[], $4::timestamptz[],
                                  $5::int8[], $6::int8[], $7::text[], $8::int4[])
             returning ",
            unbilled_columns!()
        ))
        .bind(column(&|r| r.service_id))
        .bind(column(&|r| r.customer_id))
        .bind(
            inserts
                .iter()
                .map(|x| reports[x.0].window_start)
                .collect::<Vec<_>>(),
        )
        .bind(
            inserts
                .iter()
                .map(|x| reports[x.0].window_end)
                .collect::<Vec<_>>(),
        )
        .bind(inserts.iter().map(|x| x.3).collect::<Vec<_>>())
        .bind(inserts.iter().map(|x| x.4).collect::<Vec<_>>())
        .bind(
            inserts
                .iter()
                .map(|x| reports[x.0].source.clone())
                .collect::<Vec<_>>(),
        )
        .bind(inserts.iter().map(|x| x.2).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        let mut by_key: HashMap<Key, SnapshotRow> =
            rows.into_iter().map(|row| (row_key(&row), row)).collect();
        for (i, outcome, ..) in &inserts {
            if let Some(row) = by_key.remove(&key(&reports[*i])) {
                out.push((*i, *outcome, row));
            }
        }
    }
    if !updates.is_empty() {
        let rows: Vec<SnapshotRow> = sqlx::query_as(concat!(
            "update usage_snapshots u
                set primary_bytes = v.p, backup_bytes = v.b, updated_at = now()
               from unnest($1::uuid[], $2::int8[], $3::int8[]) v(id, p, b)
              where u.id = v.id
                and not exists (select 1 from invoice_line_items l where l.snapshot_id = u.id)
          returning ",
            unbilled_columns!()
        ))
        .bind(updates.iter().map(|x| x.1).collect::<Vec<_>>())
        .bind(updates.iter().map(|x| x.2).collect::<Vec<_>>())
        .bind(updates.iter().map(|x| x.3).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        let mut by_id: HashMap<Uuid, SnapshotRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        for (i, id, ..) in &updates {
            let row = by_id
                .remove(id)
                .ok_or_else(|| sqlx::Error::Protocol("a locked snapshot changed".into()))?;
            out.push((*i, Outcome::Updated, row));
        }
    }
    out.sort_by_key(|(i, ..)| *i);
    Ok(out.into_iter().map(|(_, o, r)| (o, r)).collect())
}

/// Filter of [`list`].
#[derive(Debug, Default)]
pub struct SnapshotFilter {
    /// Snapshots whose window starts at or after this.
    pub from: Option<DateTime<Utc>>,
    /// Snapshots whose window starts before this.
    pub to: Option<DateTime<Utc>>,
    /// `true`: only unbilled; `false`: only invoiced.
    pub unbilled: Option<bool>,
    pub limit: i64,
}

/// A live service's snapshots, newest window first (revisions in order).
pub async fn list(
    pool: &PgPool,
    customer_id: i64,
    service_id: i64,
    filter: &SnapshotFilter,
) -> sqlx::Result<Option<Vec<SnapshotRow>>> {
    if !super::services::exists(pool, customer_id, service_id).await? {
        return Ok(None);
    }
    let rows = sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from usage_snapshots u left join invoice_line_items l on l.snapshot_id = u.id
          where u.service_id = $1 and u.customer_id = $2
            and ($3::timestamptz is null or u.window_start >= $3)
            and ($4::timestamptz is null or u.window_start < $4)
            and ($5::boolean is null or (l.snapshot_id is null) = $5)
          order by u.window_start desc, u.source, u.revision
          limit $6"
    ))
    .bind(service_id)
    .bind(customer_id)
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.unbilled)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    Ok(Some(rows))
}
