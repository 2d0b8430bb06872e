//! Event metering over PostgreSQL: the batcher's group commit ([`PgMeteringStore`]), the fold
//! of rollups into the hourly usage snapshots billing invoices ([`fold`]), and the reads and
//! writes behind `/v1/usage`, `/v1/usage/timeseries` and `/v1/quotas`.
//!
//! One group commit is one transaction, in a fixed order so that batches of several nodes never
//! deadlock: share-lock the customers' metering cycles (a cycle change waits for batches in
//! flight), load cycles, quotas, live services and the stored events with the same identities,
//! lock and read the totals of quotas that reject, plan ([`tranche_core::metering::batch`]),
//! then write events, rollups, totals, threshold markers with their `quota.threshold_crossed`
//! events, and the fold queue — each in key order. An insert that finds an identity another
//! node committed meanwhile rolls the transaction back and plans again.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tranche_actors::ports::{MeteringStore, StoreError};
use tranche_core::events::EventType;
use tranche_core::metering::batch::{self, Account, Incoming, Outcome, QuotaRule, TotalKey};
use tranche_core::metering::event::{EventContent, EventKey, Metric, Quantity};
use tranche_core::metering::period::BillingCycle;
use tranche_core::metering::quota::{self, OverQuota};
use tranche_core::usage::UsageReport;

use super::outbox::{NewEvent, emit};
use super::{port_error, timestamp};

/// Advisory-lock key space of metering cycles (shared by batches, exclusive for a change).
const METERING_LOCK_SPACE: i32 = 0x4d45_5452; // "METR"
/// The `source` of the hourly snapshots folded from events.
pub const SNAPSHOT_SOURCE: &str = "events";
/// Group commits retried after a deadlock, a serialization failure or an identity race.
const ATTEMPTS: usize = 4;

pub struct PgMeteringStore {
    pool: PgPool,
}

impl PgMeteringStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl MeteringStore for PgMeteringStore {
    async fn ingest(
        &self,
        events: &[Incoming],
        now: DateTime<Utc>,
        node_id: &str,
    ) -> Result<Vec<Outcome>, StoreError> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match try_ingest(&self.pool, events, now, node_id).await {
                Ok(Some(outcomes)) => {
                    let m = &crate::metrics::METRICS;
                    m.metering_commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    m.metering_batch_events.observe(events.len() as f64);
                    return Ok(outcomes);
                }
                Ok(None) if attempt < ATTEMPTS => continue,
                Ok(None) => {
                    return Err(StoreError::Other(
                        "usage events kept racing another node's; try again".into(),
                    ));
                }
                Err(e) if attempt < ATTEMPTS && retryable(&e) => continue,
                Err(e) => return Err(port_error(e)),
            }
        }
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "delete from usage_events where ctid = any(array(
                     select ctid from usage_events where received_at < $1 limit 10000))",
            )
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(port_error)?
            .rows_affected();
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }
}

/// Deadlock (40P01) or serialization failure (40001): the transaction may simply be retried.
fn retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01" || c == "40001")
}

/// What a group commit needs to know about its customers: cycles and metric rules, and which
/// of the named services are theirs and live — one statement.
async fn load(
    conn: &mut PgConnection,
    customers: &[i64],
    services: &[i64],
) -> sqlx::Result<(HashMap<i64, Account>, HashSet<(i64, i64)>)> {
    type Row = (i64, Option<i32>, Option<String>, Value, Vec<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "select c, a.billing_day, a.time_zone,
                coalesce((select json_agg(json_build_array(q.metric, q.quota::text, q.over_quota))
                            from metering_quotas q where q.customer_id = c), '[]'::json),
                coalesce((select array_agg(s.id) from services s
                           where s.customer_id = c and s.id = any($2) and s.deleted_at is null),
                         '{}'::int8[])
           from unnest($1::int8[]) c
           left join metering_accounts a on a.customer_id = c",
    )
    .bind(customers)
    .bind(services)
    .fetch_all(conn)
    .await?;
    let mut accounts = HashMap::with_capacity(rows.len());
    let mut live = HashSet::new();
    for (c, day, tz, quotas, ids) in rows {
        let cycle = match (day, tz) {
            (Some(day), Some(tz)) => {
                BillingCycle::new(day, &tz).unwrap_or_else(|_| BillingCycle::utc())
            }
            _ => BillingCycle::utc(),
        };
        let mut rules = HashMap::new();
        for q in quotas.as_array().into_iter().flatten() {
            let (Some(metric), limit, Some(mode)) = (
                q[0].as_str(),
                q[1].as_str().and_then(|t| t.parse::<Decimal>().ok()),
                q[2].as_str(),
            ) else {
                continue;
            };
            rules.insert(
                metric.to_owned(),
                QuotaRule {
                    limit,
                    over_quota: OverQuota::parse(mode).unwrap_or_default(),
                },
            );
        }
        accounts.insert(
            c,
            Account {
                cycle,
                quotas: rules,
            },
        );
        live.extend(ids.into_iter().map(|id| (c, id)));
    }
    Ok((accounts, live))
}

type StoredRow = (i64, String, String, i64, String, Decimal, DateTime<Utc>);

fn content_of(row: &StoredRow) -> Option<(EventKey, EventContent)> {
    let (customer_id, source, id, service_id, metric, quantity, time) = row.clone();
    Some((
        EventKey {
            customer_id,
            source,
            id,
        },
        EventContent {
            service_id,
            metric: Metric::parse(&metric).ok()?,
            quantity: Quantity::parse(&quantity.normalize().to_string()).ok()?,
            time,
        },
    ))
}

/// The stored events with the identities of `events`.
async fn stored(
    conn: &mut PgConnection,
    events: &[&Incoming],
) -> sqlx::Result<HashMap<EventKey, EventContent>> {
    if events.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<StoredRow> = sqlx::query_as(
        "select e.customer_id, e.source, e.event_id, e.service_id, e.metric, e.quantity,
                e.occurred_at
           from usage_events e
           join unnest($1::int8[], $2::text[], $3::text[]) k(c, s, i)
             on e.customer_id = k.c and e.source = k.s and e.event_id = k.i",
    )
    .bind(events.iter().map(|e| e.key.customer_id).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.key.source.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.key.id.as_str()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().filter_map(content_of).collect())
}

/// One group commit; `None` when an identity was committed by another node meanwhile in a
/// way the plan cannot absorb (plan again from the start).
///
/// Most batches are new events: they are planned as if none of their identities were stored
/// and inserted with `on conflict do nothing`; only when some were not inserted are those
/// looked up and the batch planned again (the plan is pure and cheap). A batch under a quota
/// that rejects looks its identities up first, since admission depends on which are new.
async fn try_ingest(
    pool: &PgPool,
    events: &[Incoming],
    now: DateTime<Utc>,
    node_id: &str,
) -> sqlx::Result<Option<Vec<Outcome>>> {
    let mut customers: Vec<i64> = events.iter().map(|e| e.key.customer_id).collect();
    customers.sort_unstable();
    customers.dedup();
    let mut services: Vec<i64> = events.iter().map(|e| e.content.service_id).collect();
    services.sort_unstable();
    services.dedup();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "select pg_advisory_xact_lock_shared($1, (c % 2147483647)::int4)
           from unnest($2::int8[]) c order by c",
    )
    .bind(METERING_LOCK_SPACE)
    .bind(&customers)
    .execute(&mut *tx)
    .await?;
    let (accounts, live) = load(&mut tx, &customers, &services).await?;

    // Events naming a service the customer does not have (or deleted) are refused up front.
    let known: Vec<usize> = (0..events.len())
        .filter(|&i| live.contains(&(events[i].key.customer_id, events[i].content.service_id)))
        .collect();
    let candidates: Vec<Incoming> = known.iter().map(|&i| events[i].clone()).collect();
    let rejecting = candidates.iter().any(|e| {
        accounts
            .get(&e.key.customer_id)
            .and_then(|a| a.quotas.get(e.content.metric.as_str()))
            .is_some_and(|r| r.limit.is_some() && r.over_quota == OverQuota::Reject)
    });

    let (stored_now, used) = if rejecting {
        let all: Vec<&Incoming> = candidates.iter().collect();
        (
            stored(&mut tx, &all).await?,
            lock_rejecting_totals(&mut tx, &candidates, &accounts).await?,
        )
    } else {
        (HashMap::new(), HashMap::new())
    };
    let mut plan = batch::plan(&candidates, &stored_now, &accounts, &used, now);
    let inserted = insert_events(&mut tx, &candidates, &plan.inserts, now).await?;
    if inserted.len() != plan.inserts.len() {
        if rejecting {
            tx.rollback().await?;
            return Ok(None);
        }
        let seen: Vec<&Incoming> = plan
            .inserts
            .iter()
            .filter(|i| !inserted.contains(i))
            .map(|&i| &candidates[i])
            .collect();
        let stored_now = stored(&mut tx, &seen).await?;
        plan = batch::plan(&candidates, &stored_now, &accounts, &used, now);
        let replanned: HashSet<usize> = plan.inserts.iter().copied().collect();
        if replanned != inserted {
            tx.rollback().await?;
            return Ok(None);
        }
    }
    let totals = write_aggregates(&mut tx, &plan).await?;
    announce_thresholds(&mut tx, &plan.totals, &totals, node_id, &accounts).await?;
    tx.commit().await?;

    let mut outcomes = vec![Outcome::Refused(batch::Refusal::UnknownService); events.len()];
    for (slot, outcome) in known.into_iter().zip(plan.outcomes) {
        outcomes[slot] = outcome;
    }
    Ok(Some(outcomes))
}

/// Locks (creating them at zero) the period totals the events add to under a quota that
/// rejects, and returns their current values.
async fn lock_rejecting_totals(
    tx: &mut Transaction<'_, Postgres>,
    events: &[Incoming],
    accounts: &HashMap<i64, Account>,
) -> sqlx::Result<HashMap<TotalKey, Decimal>> {
    let mut keys: BTreeMap<TotalKey, DateTime<Utc>> = BTreeMap::new();
    for e in events {
        let Some(account) = accounts.get(&e.key.customer_id) else {
            continue;
        };
        let rejects = account
            .quotas
            .get(e.content.metric.as_str())
            .is_some_and(|r| r.limit.is_some() && r.over_quota == OverQuota::Reject);
        if rejects {
            let (start, end) = account.cycle.period_containing(e.content.time);
            keys.insert(
                (
                    e.key.customer_id,
                    e.content.metric.as_str().to_owned(),
                    start,
                ),
                end,
            );
        }
    }
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (k, ends): (Vec<&TotalKey>, Vec<DateTime<Utc>>) = keys.iter().unzip();
    let binds = || {
        (
            k.iter().map(|k| k.0).collect::<Vec<_>>(),
            k.iter().map(|k| k.1.as_str()).collect::<Vec<_>>(),
            k.iter().map(|k| k.2).collect::<Vec<_>>(),
        )
    };
    let (c, m, st) = binds();
    sqlx::query(
        "insert into usage_period_totals
                (customer_id, metric, period_start, period_end, quantity, events)
         select c, m, s, e, 0, 0
           from unnest($1::int8[], $2::text[], $3::timestamptz[], $4::timestamptz[])
                with ordinality as k(c, m, s, e, ord)
          order by ord
         on conflict do nothing",
    )
    .bind(c)
    .bind(m)
    .bind(st)
    .bind(&ends)
    .execute(&mut **tx)
    .await?;
    let (c, m, st) = binds();
    let rows: Vec<(i64, String, DateTime<Utc>, Decimal)> = sqlx::query_as(
        "select t.customer_id, t.metric, t.period_start, t.quantity
           from usage_period_totals t
           join unnest($1::int8[], $2::text[], $3::timestamptz[]) with ordinality as k(c, m, s, ord)
             on t.customer_id = k.c and t.metric = k.m and t.period_start = k.s
          order by k.ord
            for update of t",
    )
    .bind(c)
    .bind(m)
    .bind(st)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(c, m, s, q)| ((c, m, s), q))
        .collect())
}

/// Inserts the planned events (`inserts`: indexes into `events`); returns the indexes of those
/// inserted — an identity committed meanwhile (by an earlier batch or another node) is not.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[Incoming],
    inserts: &[usize],
    now: DateTime<Utc>,
) -> sqlx::Result<HashSet<usize>> {
    if inserts.is_empty() {
        return Ok(HashSet::new());
    }
    let picked: Vec<&Incoming> = inserts.iter().map(|&i| &events[i]).collect();
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "insert into usage_events
                (customer_id, source, event_id, service_id, metric, quantity, occurred_at,
                 received_at)
         select c, s, i, sv, m, q, t, $8
           from unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[],
                       $6::numeric[], $7::timestamptz[]) with ordinality
                as u(c, s, i, sv, m, q, t, ord)
          order by ord
         on conflict do nothing
         returning customer_id, source, event_id",
    )
    .bind(picked.iter().map(|e| e.key.customer_id).collect::<Vec<_>>())
    .bind(
        picked
            .iter()
            .map(|e| e.key.source.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(picked.iter().map(|e| e.key.id.as_str()).collect::<Vec<_>>())
    .bind(
        picked
            .iter()
            .map(|e| e.content.service_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        picked
            .iter()
            .map(|e| e.content.metric.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        picked
            .iter()
            .map(|e| e.content.quantity.value())
            .collect::<Vec<_>>(),
    )
    .bind(picked.iter().map(|e| e.content.time).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    if rows.len() == inserts.len() {
        return Ok(inserts.iter().copied().collect());
    }
    let by_key: HashMap<(i64, &str, &str), usize> = inserts
        .iter()
        .map(|&i| {
            let k = &events[i].key;
            ((k.customer_id, k.source.as_str(), k.id.as_str()), i)
        })
        .collect();
    Ok(rows
        .iter()
        .filter_map(|(c, s, i)| by_key.get(&(*c, s.as_str(), i.as_str())).copied())
        .collect())
}

/// Adds the plan's rollups and period totals and queues its hours for the fold, in one
/// statement (totals first, then rollups, then the queue: one order for every batch);
/// returns each total after.
async fn write_aggregates(
    tx: &mut Transaction<'_, Postgres>,
    plan: &batch::Plan,
) -> sqlx::Result<HashMap<TotalKey, Decimal>> {
    if plan.totals.is_empty() {
        return Ok(HashMap::new());
    }
    let r: Vec<_> = plan.rollups.iter().collect();
    let t: Vec<_> = plan.totals.iter().collect();
    let f: Vec<_> = plan.fold_hours.iter().collect();
    let rows: Vec<(i64, String, DateTime<Utc>, Decimal)> = sqlx::query_as(
        "with rollups as (
             insert into usage_rollups (customer_id, metric, service_id, minute, quantity, events)
             select c, m, s, t, q, n
               from unnest($1::int8[], $2::text[], $3::int8[], $4::timestamptz[], $5::numeric[],
                           $6::int8[]) with ordinality as u(c, m, s, t, q, n, ord)
              order by ord
             on conflict (customer_id, metric, service_id, minute) do update
                set quantity = usage_rollups.quantity + excluded.quantity,
                    events = usage_rollups.events + excluded.events
         ), fold as (
             insert into usage_fold_queue (customer_id, service_id, hour)
             select c, s, h from unnest($13::int8[], $14::int8[], $15::timestamptz[])
                    with ordinality as u(c, s, h, ord)
              order by ord
             on conflict (customer_id, service_id, hour) do update set touched_at = now()
         )
         insert into usage_period_totals
                (customer_id, metric, period_start, period_end, quantity, events)
         select c, m, s, e, q, n
           from unnest($7::int8[], $8::text[], $9::timestamptz[], $10::timestamptz[],
                       $11::numeric[], $12::int8[]) with ordinality as u(c, m, s, e, q, n, ord)
          order by ord
         on conflict (customer_id, metric, period_start) do update
            set quantity = usage_period_totals.quantity + excluded.quantity,
                events = usage_period_totals.events + excluded.events,
                updated_at = now()
         returning customer_id, metric, period_start, quantity",
    )
    .bind(r.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
    .bind(r.iter().map(|(k, _)| k.1.as_str()).collect::<Vec<_>>())
    .bind(r.iter().map(|(k, _)| k.2).collect::<Vec<_>>())
    .bind(r.iter().map(|(k, _)| k.3).collect::<Vec<_>>())
    .bind(r.iter().map(|(_, v)| v.0).collect::<Vec<_>>())
    .bind(r.iter().map(|(_, v)| v.1).collect::<Vec<_>>())
    .bind(t.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
    .bind(t.iter().map(|(k, _)| k.1.as_str()).collect::<Vec<_>>())
    .bind(t.iter().map(|(k, _)| k.2).collect::<Vec<_>>())
    .bind(t.iter().map(|(_, v)| v.period_end).collect::<Vec<_>>())
    .bind(t.iter().map(|(_, v)| v.quantity).collect::<Vec<_>>())
    .bind(t.iter().map(|(_, v)| v.events).collect::<Vec<_>>())
    .bind(f.iter().map(|h| h.0).collect::<Vec<_>>())
    .bind(f.iter().map(|h| h.1).collect::<Vec<_>>())
    .bind(f.iter().map(|h| h.2).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(c, m, s, q)| ((c, m, s), q))
        .collect())
}

/// Marks every threshold the new totals reached that is not marked yet for its period, and
/// announces those it marked (`quota.threshold_crossed`), in the same transaction.
async fn announce_thresholds(
    tx: &mut Transaction<'_, Postgres>,
    deltas: &BTreeMap<TotalKey, batch::TotalDelta>,
    totals: &HashMap<TotalKey, Decimal>,
    node_id: &str,
    accounts: &HashMap<i64, Account>,
) -> sqlx::Result<()> {
    let mut marks: Vec<(&TotalKey, &batch::TotalDelta, Decimal, Decimal, i32)> = Vec::new();
    for (key, delta) in deltas {
        let (Some(limit), Some(&total)) = (delta.quota, totals.get(key)) else {
            continue;
        };
        for t in quota::reached(total, limit) {
            marks.push((key, delta, limit, total, t as i32));
        }
    }
    if marks.is_empty() {
        return Ok(());
    }
    let marked: Vec<(i64, String, DateTime<Utc>, i32)> = sqlx::query_as(
        "insert into quota_threshold_markers
                (customer_id, metric, period_start, threshold, period_end, quota, total, node_id)
         select c, m, s, t, e, q, n, $8
           from unnest($1::int8[], $2::text[], $3::timestamptz[], $4::int4[], $5::timestamptz[],
                       $6::numeric[], $7::numeric[]) with ordinality as u(c, m, s, t, e, q, n, ord)
          order by ord
         on conflict do nothing
         returning customer_id, metric, period_start, threshold",
    )
    .bind(marks.iter().map(|m| m.0.0).collect::<Vec<_>>())
    .bind(marks.iter().map(|m| m.0.1.as_str()).collect::<Vec<_>>())
    .bind(marks.iter().map(|m| m.0.2).collect::<Vec<_>>())
    .bind(marks.iter().map(|m| m.4).collect::<Vec<_>>())
    .bind(marks.iter().map(|m| m.1.period_end).collect::<Vec<_>>())
    .bind(marks.iter().map(|m| m.2).collect::<Vec<_>>())
    .bind(marks.iter().map(|m| m.3).collect::<Vec<_>>())
    .bind(node_id)
    .fetch_all(&mut **tx)
    .await?;
    if marked.is_empty() {
        return Ok(());
    }
    let events: Vec<NewEvent> = marked
        .into_iter()
        .filter_map(|(c, metric, start, threshold)| {
            let (_, delta, limit, total, _) = marks
                .iter()
                .find(|m| m.0.0 == c && m.0.1 == metric && m.0.2 == start && m.4 == threshold)?;
            let mode = accounts
                .get(&c)
                .and_then(|a| a.quotas.get(&metric))
                .map(|r| r.over_quota)
                .unwrap_or_default();
            Some(NewEvent::new(
                c,
                EventType::QuotaThresholdCrossed,
                json!({
                    "metric": metric,
                    "threshold": threshold,
                    "quota": limit.normalize().to_string(),
                    "total": total.normalize().to_string(),
                    "percent_used": quota::percent_used(*total, Some(*limit))
                        .map(|p| p.to_string()),
                    "period_start": timestamp(start),
                    "period_end": timestamp(delta.period_end),
                    "over_quota": mode.as_str(),
                }),
            ))
        })
        .collect();
    emit(tx, &events).await?;
    Ok(())
}

/// Folds the rollups of `customer_id`'s queued hours into hourly usage snapshots (source
/// [`SNAPSHOT_SOURCE`]), in one transaction: each queued hour's billed metrics are summed and
/// recorded as that hour's cumulative report, so an hour already invoiced gets an adjustment
/// for what arrived late. Returns how many hours were folded.
pub async fn fold(pool: &PgPool, customer_id: i64, limit: i64) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let hours: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
        "delete from usage_fold_queue q
          where (q.customer_id, q.service_id, q.hour) in (
                select customer_id, service_id, hour from usage_fold_queue
                 where customer_id = $1
                 order by service_id, hour
                 limit $2
                   for update skip locked)
      returning q.service_id, q.hour",
    )
    .bind(customer_id)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if hours.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let sums: Vec<(i64, DateTime<Utc>, Decimal, Decimal)> = sqlx::query_as(
        "select h.s, h.t,
                coalesce(sum(r.quantity) filter (where r.metric = 'primary_bytes'), 0),
                coalesce(sum(r.quantity) filter (where r.metric = 'backup_bytes'), 0)
           from unnest($2::int8[], $3::timestamptz[]) h(s, t)
           left join usage_rollups r
             on r.customer_id = $1 and r.service_id = h.s
            and r.metric in ('primary_bytes', 'backup_bytes')
            and r.minute >= h.t and r.minute < h.t + interval '1 hour'
          group by h.s, h.t",
    )
    .bind(customer_id)
    .bind(hours.iter().map(|h| h.0).collect::<Vec<_>>())
    .bind(hours.iter().map(|h| h.1).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let mut reports = Vec::with_capacity(sums.len());
    for (service_id, hour, primary, backup) in sums {
        let (Ok(primary_bytes), Ok(backup_bytes)) = (i64::try_from(primary), i64::try_from(backup))
        else {
            tracing::error!(customer_id, service_id, %hour, %primary, %backup,
                "an hour's metered bytes exceed a snapshot's range; not folded");
            continue;
        };
        reports.push(UsageReport {
            service_id,
            customer_id,
            window_start: hour,
            window_end: hour + chrono::TimeDelta::hours(1),
            primary_bytes,
            backup_bytes,
            source: SNAPSHOT_SOURCE.to_owned(),
        });
    }
    super::usage::record_in(&mut tx, &reports).await?;
    tx.commit().await?;
    Ok(hours.len())
}

/// Hours folded per transaction.
const FOLD_BATCH: i64 = 500;

/// [`fold`]s until the customer's queue is empty; returns how many hours were folded.
pub async fn fold_all(pool: &PgPool, customer_id: i64) -> sqlx::Result<usize> {
    let mut total = 0;
    loop {
        let n = fold(pool, customer_id, FOLD_BATCH).await?;
        total += n;
        if (n as i64) < FOLD_BATCH {
            return Ok(total);
        }
    }
}

/// A customer's metering cycle as stored (day 1, UTC when never set).
pub async fn cycle(pool: &PgPool, customer_id: i64) -> sqlx::Result<BillingCycle> {
    let row: Option<(i32, String)> = sqlx::query_as(
        "select billing_day, time_zone from metering_accounts where customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .and_then(|(day, tz)| BillingCycle::new(day, &tz).ok())
        .unwrap_or_else(BillingCycle::utc))
}

/// A quota as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QuotaRow {
    pub metric: String,
    pub quota: Option<Decimal>,
    pub over_quota: String,
}

/// A customer's quotas and declared metrics, by metric.
pub async fn quotas(pool: &PgPool, customer_id: i64) -> sqlx::Result<Vec<QuotaRow>> {
    sqlx::query_as(
        "select metric, quota, over_quota from metering_quotas
          where customer_id = $1 order by metric",
    )
    .bind(customer_id)
    .fetch_all(pool)
    .await
}

/// Replaces a customer's cycle and quotas. A batch in flight finishes first (the cycle's
/// advisory lock); when the cycle changes, the totals of the period containing `now` under the
/// new cycle are recounted from the minute rollups.
pub async fn put_quotas(
    pool: &PgPool,
    customer_id: i64,
    cycle: BillingCycle,
    rows: &[QuotaRow],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1, ($2 % 2147483647)::int4)")
        .bind(METERING_LOCK_SPACE)
        .bind(customer_id)
        .execute(&mut *tx)
        .await?;
    let before: Option<(i32, String)> = sqlx::query_as(
        "select billing_day, time_zone from metering_accounts where customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(&mut *tx)
    .await?;
    let changed = before.as_ref().map_or(
        (cycle.day(), cycle.time_zone()) != (1, "UTC"),
        |(day, tz)| (*day as u32, tz.as_str()) != (cycle.day(), cycle.time_zone()),
    );
    sqlx::query(
        "insert into metering_accounts (customer_id, billing_day, time_zone) values ($1, $2, $3)
         on conflict (customer_id) do update
            set billing_day = excluded.billing_day, time_zone = excluded.time_zone
          where (metering_accounts.billing_day, metering_accounts.time_zone)
                is distinct from (excluded.billing_day, excluded.time_zone)",
    )
    .bind(customer_id)
    .bind(cycle.day() as i32)
    .bind(cycle.time_zone())
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from metering_quotas where customer_id = $1 and not (metric = any($2))")
        .bind(customer_id)
        .bind(rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into metering_quotas (customer_id, metric, quota, over_quota)
         select $1, * from unnest($2::text[], $3::numeric[], $4::text[])
         on conflict (customer_id, metric) do update
            set quota = excluded.quota, over_quota = excluded.over_quota
          where (metering_quotas.quota, metering_quotas.over_quota)
                is distinct from (excluded.quota, excluded.over_quota)",
    )
    .bind(customer_id)
    .bind(rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.quota).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.over_quota.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    if changed {
        let (start, end) = cycle.period_containing(now);
        sqlx::query(
            "insert into usage_period_totals
                    (customer_id, metric, period_start, period_end, quantity, events)
             select $1, metric, $2, $3, sum(quantity), sum(events)
               from usage_rollups
              where customer_id = $1 and minute >= $2 and minute < $3
              group by metric
             on conflict (customer_id, metric, period_start) do update
                set period_end = excluded.period_end, quantity = excluded.quantity,
                    events = excluded.events, updated_at = now()",
        )
        .bind(customer_id)
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Usage of one metric and service in a range (from the minute rollups).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageRow {
    pub metric: String,
    pub service_id: i64,
    pub quantity: Decimal,
    pub events: i64,
}

/// A customer's usage in `[from, to)` per metric and service, optionally of one metric or
/// service.
pub async fn usage_between(
    pool: &PgPool,
    customer_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    metric: Option<&str>,
    service_id: Option<i64>,
) -> sqlx::Result<Vec<UsageRow>> {
    sqlx::query_as(
        "select metric, service_id, sum(quantity) as quantity, sum(events)::int8 as events
           from usage_rollups
          where customer_id = $1 and minute >= $2 and minute < $3
            and ($4::text is null or metric = $4)
            and ($5::int8 is null or service_id = $5)
          group by metric, service_id
          order by metric, service_id",
    )
    .bind(customer_id)
    .bind(from)
    .bind(to)
    .bind(metric)
    .bind(service_id)
    .fetch_all(pool)
    .await
}

/// The thresholds announced for the period starting at `period_start`, per metric.
pub async fn thresholds_crossed(
    pool: &PgPool,
    customer_id: i64,
    period_start: DateTime<Utc>,
) -> sqlx::Result<Vec<(String, i32)>> {
    sqlx::query_as(
        "select metric, threshold from quota_threshold_markers
          where customer_id = $1 and period_start = $2 order by metric, threshold",
    )
    .bind(customer_id)
    .bind(period_start)
    .fetch_all(pool)
    .await
}

/// One bucket of a time series.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub quantity: Decimal,
    pub events: i64,
}

/// A metric's usage in `[from, to)` per `unit` (`minute`, `hour`, `day`) of local time in
/// `time_zone`; buckets without events are left out.
#[allow(clippy::too_many_arguments)] // one per filter of the query
pub async fn timeseries(
    pool: &PgPool,
    customer_id: i64,
    metric: &str,
    service_id: Option<i64>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    unit: &str,
    time_zone: &str,
) -> sqlx::Result<Vec<Bucket>> {
    sqlx::query_as(
        "select date_trunc($6, minute, $7) as start, sum(quantity) as quantity,
                sum(events)::int8 as events
           from usage_rollups
          where customer_id = $1 and metric = $2
            and ($3::int8 is null or service_id = $3)
            and minute >= $4 and minute < $5
          group by 1 order by 1",
    )
    .bind(customer_id)
    .bind(metric)
    .bind(service_id)
    .bind(from)
    .bind(to)
    .bind(unit)
    .bind(time_zone)
    .fetch_all(pool)
    .await
}
