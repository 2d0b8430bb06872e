//! Invoicing over PostgreSQL: [`PgBillingStore`] implements the engine's
//! [`BillingStore`] port, and [`PgUsageStore`] its [`UsageStore`] port.
//!
//! One billing run is one transaction:
//!
//! 1. check the customer shard's fencing epoch (a deposed node stops here);
//! 2. lock the customer's unbilled snapshots whose windows have settled,
//!    `for update skip locked` (a concurrent run, or a usage writer, holds the others);
//! 3. load the services' storms and coverage factors, price every snapshot with the pure
//!    [`tranche_core::billing::price`];
//! 4. lock the existing invoices of the snapshots' periods; a snapshot of a period whose invoice
//!    is already finalized goes, as an adjustment, on the draft of the period containing `now`;
//! 5. add the lines' sums to the draft invoice of each period, creating the drafts that do not
//!    exist yet (one per customer and period, by a unique key), in one upsert;
//! 6. insert the line items (a snapshot can be on one line only, by its primary key), tag the
//!    snapshots `where invoice_id is null` (all or the run fails);
//! 7. finalize drafts whose period ended more than the grace ago; record the run.
//!
//! Anything failing rolls the whole run back; the failure is then recorded in `billing_runs`
//! with its error, and the next tick retries.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use tranche_core::billing::{
    BillingSettings, Line, StormSpan, Usage, max_coverage_factor, period_of, price,
};
use tranche_core::domain::SHARDS;
use tranche_engine::ports::{
    BillingRunSummary, BillingStore, Fence, StoreError, UsageReport, UsageService, UsageStore,
};
use uuid::Uuid;

use super::store::check_fence;

fn other(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.to_string())
}

/// The billing port over PostgreSQL.
pub struct PgBillingStore {
    pool: PgPool,
    fail_before_tagging: AtomicBool,
}

impl PgBillingStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            fail_before_tagging: AtomicBool::new(false),
        }
    }

    /// Fault injection for tests and drills: the next runs fail after inserting their invoices
    /// and line items and before tagging the snapshots (as a crash there would), until turned
    /// off again.
    pub fn fail_before_tagging(&self, on: bool) {
        self.fail_before_tagging.store(on, Ordering::SeqCst);
    }
}

#[derive(FromRow)]
struct UnbilledRow {
    id: Uuid,
    service_id: i64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    primary_bytes: i64,
    backup_bytes: i64,
    source: String,
    revision: i32,
}

#[derive(FromRow)]
struct StormRow {
    id: Uuid,
    service_id: i64,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct InvoiceRow {
    period_start: DateTime<Utc>,
    status: String,
}

/// A priced snapshot on its way to an invoice.
struct Priced {
    snapshot: UnbilledRow,
    line: Line,
    storm_ids: Vec<Uuid>,
    adjustment: bool,
}

fn duration(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[async_trait::async_trait]
impl BillingStore for PgBillingStore {
    async fn customers_on_shards(&self, shards: &[u16]) -> Result<Vec<(i64, u16)>, StoreError> {
        let shards: Vec<i64> = shards.iter().map(|&s| i64::from(s)).collect();
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "select id, id % $2 from customers where id % $2 = any($1::int8[]) order by id",
        )
        .bind(&shards)
        .bind(i64::from(SHARDS))
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        Ok(rows.into_iter().map(|(id, s)| (id, s as u16)).collect())
    }

    async fn bill_customer(
        &self,
        customer_id: i64,
        fence: Fence,
        now: DateTime<Utc>,
        settings: &BillingSettings,
        node_id: &str,
    ) -> Result<BillingRunSummary, StoreError> {
        let started = Utc::now();
        match self
            .run(customer_id, fence, now, settings, node_id, started)
            .await
        {
            Err(e @ StoreError::Fenced { .. }) => Err(e),
            Err(e) => {
                let recorded = sqlx::query(
                    "insert into billing_runs (customer_id, node_id, started_at, finished_at, error)
                     values ($1, $2, $3, now(), $4)",
                )
                .bind(customer_id)
                .bind(node_id)
                .bind(started)
                .bind(e.to_string())
                .execute(&self.pool)
                .await;
                if let Err(re) = recorded {
                    tracing::warn!(error = %re, "could not record the failed billing run");
                }
                Err(e)
            }
            ok => ok,
        }
    }

    async fn prune_runs(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        sqlx::query("delete from billing_runs where finished_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(other)
    }
}

impl PgBillingStore {
    async fn run(
        &self,
        customer_id: i64,
        fence: Fence,
        now: DateTime<Utc>,
        settings: &BillingSettings,
        node_id: &str,
        started: DateTime<Utc>,
    ) -> Result<BillingRunSummary, StoreError> {
        let mut tx = self.pool.begin().await.map_err(other)?;
        check_fence(&mut tx, fence).await?;
        // Foreign-key checks run as plans cached per connection; planned while `invoices` was
        // small (a fresh install, a first backlog), they would scan the table for every line.
        // Custom plans see its current size.
        sqlx::query("select set_config('plan_cache_mode', 'force_custom_plan', true)")
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        let settled = now - duration(settings.settle);
        let snapshots: Vec<UnbilledRow> = sqlx::query_as(
            "select id, service_id, window_start, window_end, primary_bytes, backup_bytes,
                    source, revision
               from usage_snapshots
              where customer_id = $1 and invoice_id is null and window_end <= $2
              order by window_start, id
              limit $3
              for update skip locked",
        )
        .bind(customer_id)
        .bind(settled)
        .bind(settings.batch as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(other)?;

        let mut summary = BillingRunSummary::default();
        if !snapshots.is_empty() {
            let priced = price_all(&mut tx, snapshots, settings).await?;
            summary = self
                .invoice(&mut tx, customer_id, priced, now, settings, node_id)
                .await?;
        }

        let grace_cutoff = now - duration(settings.grace);
        let finalized = sqlx::query(
            "update invoices set status = 'finalized', finalized_at = now()
              where customer_id = $1 and status = 'draft' and period_end <= $2",
        )
        .bind(customer_id)
        .bind(grace_cutoff)
        .execute(&mut *tx)
        .await
        .map_err(other)?
        .rows_affected();
        summary.invoices_finalized = finalized as u32;

        if summary.did_something() {
            sqlx::query(
                "insert into billing_runs (customer_id, node_id, started_at, finished_at,
                        invoices_touched, invoices_created, invoices_finalized, snapshots_billed)
                 values ($1, $2, $3, clock_timestamp(), $4, $5, $6, $7)",
            )
            .bind(customer_id)
            .bind(node_id)
            .bind(started)
            .bind(summary.invoices_touched as i32)
            .bind(summary.invoices_created as i32)
            .bind(summary.invoices_finalized as i32)
            .bind(summary.snapshots_billed as i32)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        }
        tx.commit().await.map_err(other)?;
        Ok(summary)
    }

    /// Puts priced snapshots on their invoices, inside the run's transaction.
    async fn invoice(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        customer_id: i64,
        priced: Vec<Priced>,
        now: DateTime<Utc>,
        settings: &BillingSettings,
        node_id: &str,
    ) -> Result<BillingRunSummary, StoreError> {
        let mut summary = BillingRunSummary::default();
        // Every period this run may write to: the snapshots' and the current one (for
        // adjustments to finalized periods). Locked in period order, so concurrent runs
        // cannot deadlock.
        let current = period_of(now, settings.period);
        let mut periods: BTreeMap<DateTime<Utc>, DateTime<Utc>> = BTreeMap::new();
        for p in &priced {
            let (s, e) = period_of(p.snapshot.window_start, settings.period);
            periods.insert(s, e);
        }
        let existing: Vec<InvoiceRow> = sqlx::query_as(
            "select period_start, status from invoices
              where customer_id = $1 and period_start = any($2)
              order by period_start
              for update",
        )
        .bind(customer_id)
        .bind(periods.keys().copied().collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await
        .map_err(other)?;
        let finalized: std::collections::HashSet<DateTime<Utc>> = existing
            .iter()
            .filter(|i| i.status == "finalized")
            .map(|i| i.period_start)
            .collect();
        if periods.keys().any(|p| finalized.contains(p)) {
            periods.insert(current.0, current.1);
        }
        // Each line's period: its snapshot's, or (an adjustment) the current one when that
        // period's invoice is finalized.
        let mut targets: Vec<(DateTime<Utc>, Priced)> = Vec::with_capacity(priced.len());
        for mut p in priced {
            let period = period_of(p.snapshot.window_start, settings.period).0;
            let target = if finalized.contains(&period) {
                p.adjustment = true;
                current.0
            } else {
                period
            };
            targets.push((target, p));
        }
        // Per draft: the sums of its new lines.
        let mut sums: BTreeMap<DateTime<Utc>, Sums> = BTreeMap::new();
        for (period, p) in &targets {
            let e = sums.entry(*period).or_default();
            e.subtotal += p.line.subtotal_cents;
            e.discount += p.line.discount_cents;
            e.total += p.line.total_cents;
            e.lines += 1;
        }
        let (invoice_of, created) =
            upsert_drafts(tx, customer_id, &sums, &periods, node_id).await?;
        summary.invoices_created = created;
        summary.invoices_touched = sums.len() as u32;
        let lines: Vec<(Uuid, Priced)> = targets
            .into_iter()
            .map(|(period, p)| (invoice_of[&period], p))
            .collect();
        insert_lines(tx, &lines, settings).await?;

        if self.fail_before_tagging.load(Ordering::SeqCst) {
            return Err(StoreError::Other(
                "injected failure before tagging snapshots".into(),
            ));
        }

        let ids: Vec<Uuid> = lines.iter().map(|(_, p)| p.snapshot.id).collect();
        let invoices: Vec<Uuid> = lines.iter().map(|(i, _)| *i).collect();
        let tagged = sqlx::query(
            "update usage_snapshots u set invoice_id = v.invoice, billed_at = now(), updated_at = now()
               from unnest($1::uuid[], $2::uuid[]) v(id, invoice)
              where u.id = v.id and u.invoice_id is null",
        )
        .bind(&ids)
        .bind(&invoices)
        .execute(&mut **tx)
        .await
        .map_err(other)?
        .rows_affected();
        if tagged != ids.len() as u64 {
            return Err(StoreError::Other(format!(
                "tagged {tagged} of {} snapshots; rolling back",
                ids.len()
            )));
        }
        summary.snapshots_billed = ids.len() as u32;
        Ok(summary)
    }
}

/// What a run adds to one draft invoice.
#[derive(Default)]
struct Sums {
    subtotal: Decimal,
    discount: Decimal,
    total: Decimal,
    lines: i32,
}

/// Adds `sums` (per period start) to the customer's draft invoices of those periods, creating
/// the drafts that do not exist yet (their ends from `periods`), in one statement. Returns each
/// period's invoice id and how many were created. Every period must be a draft: the run holds
/// the existing invoices `for update`, so one finalized since is an error.
async fn upsert_drafts(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    sums: &BTreeMap<DateTime<Utc>, Sums>,
    periods: &BTreeMap<DateTime<Utc>, DateTime<Utc>>,
    node_id: &str,
) -> Result<(HashMap<DateTime<Utc>, Uuid>, u32), StoreError> {
    let starts: Vec<DateTime<Utc>> = sums.keys().copied().collect();
    let ends: Vec<DateTime<Utc>> = starts.iter().map(|s| periods[s]).collect();
    let rows: Vec<(Uuid, DateTime<Utc>, bool)> = sqlx::query_as(
        "insert into invoices (customer_id, period_start, period_end, created_by_node,
                               subtotal_cents, discount_cents, total_cents, line_count)
         select $1, s, e, $4, sub, dis, tot, n
           from unnest($2::timestamptz[], $3::timestamptz[], $5::numeric[], $6::numeric[],
                       $7::numeric[], $8::int4[]) t(s, e, sub, dis, tot, n)
          order by s
         on conflict (customer_id, period_start) do update
            set subtotal_cents = invoices.subtotal_cents + excluded.subtotal_cents,
                discount_cents = invoices.discount_cents + excluded.discount_cents,
                total_cents = invoices.total_cents + excluded.total_cents,
                line_count = invoices.line_count + excluded.line_count
          where invoices.status = 'draft'
         returning id, period_start, xmax = 0",
    )
    .bind(customer_id)
    .bind(&starts)
    .bind(&ends)
    .bind(node_id)
    .bind(sums.values().map(|v| v.subtotal).collect::<Vec<_>>())
    .bind(sums.values().map(|v| v.discount).collect::<Vec<_>>())
    .bind(sums.values().map(|v| v.total).collect::<Vec<_>>())
    .bind(sums.values().map(|v| v.lines).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await
    .map_err(other)?;
    if rows.len() != starts.len() {
        return Err(StoreError::Other(format!(
            "{} of {} invoices were finalized during the run",
            starts.len() - rows.len(),
            starts.len()
        )));
    }
    let created = rows.iter().filter(|r| r.2).count() as u32;
    Ok((
        rows.into_iter().map(|(id, s, _)| (s, id)).collect(),
        created,
    ))
}

/// Prices the snapshots with their services' storms and coverage factors.
async fn price_all(
    tx: &mut Transaction<'_, Postgres>,
    snapshots: Vec<UnbilledRow>,
    settings: &BillingSettings,
) -> Result<Vec<Priced>, StoreError> {
    let mut services: Vec<i64> = snapshots.iter().map(|s| s.service_id).collect();
    services.sort_unstable();
    services.dedup();
    let earliest = snapshots.iter().map(|s| s.window_start).min();
    let latest = snapshots.iter().map(|s| s.window_end).max();
    let factors: Vec<(i64, Decimal)> = sqlx::query_as(
        "select service_id, max_coverage_factor from storm_policies where service_id = any($1)",
    )
    .bind(&services)
    .fetch_all(&mut **tx)
    .await
    .map_err(other)?;
    let storms: Vec<StormRow> = sqlx::query_as(
        "select id, service_id, started_at, ended_at from storm_events
          where service_id = any($1) and started_at < $3
            and (ended_at is null or ended_at > $2)
          order by started_at",
    )
    .bind(&services)
    .bind(earliest)
    .bind(latest)
    .fetch_all(&mut **tx)
    .await
    .map_err(other)?;
    let mut storms_of: HashMap<i64, (Vec<StormSpan>, Vec<Uuid>)> = HashMap::new();
    for s in storms {
        let e = storms_of.entry(s.service_id).or_default();
        e.0.push(StormSpan {
            started_at: s.started_at,
            ended_at: s.ended_at,
        });
        e.1.push(s.id);
    }
    let mut factor_of: HashMap<i64, Vec<Decimal>> = HashMap::new();
    for (service, f) in factors {
        factor_of.entry(service).or_default().push(f);
    }
    let none = (Vec::new(), Vec::new());
    snapshots
        .into_iter()
        .map(|snapshot| {
            let (spans, ids) = storms_of.get(&snapshot.service_id).unwrap_or(&none);
            let factor = max_coverage_factor(
                factor_of
                    .get(&snapshot.service_id)
                    .into_iter()
                    .flatten()
                    .copied(),
            );
            let usage = Usage {
                window_start: snapshot.window_start,
                window_end: snapshot.window_end,
                primary_bytes: snapshot.primary_bytes,
                backup_bytes: snapshot.backup_bytes,
            };
            let line = price(&usage, spans, factor, &settings.rates).map_err(|e| {
                StoreError::Other(format!("snapshot {} cannot be priced: {e}", snapshot.id))
            })?;
            let storm_ids = line.storms.iter().map(|&i| ids[i]).collect();
            let adjustment = snapshot.revision > 0;
            Ok(Priced {
                snapshot,
                line,
                storm_ids,
                adjustment,
            })
        })
        .collect()
}

async fn insert_lines(
    tx: &mut Transaction<'_, Postgres>,
    lines: &[(Uuid, Priced)],
    settings: &BillingSettings,
) -> Result<(), StoreError> {
    // One array per column.
    fn column<T>(lines: &[(Uuid, Priced)], f: impl Fn(&Priced) -> T) -> Vec<T> {
        lines.iter().map(|(_, p)| f(p)).collect()
    }
    // Storm ids travel as one text array of comma-separated lists (Postgres arrays of arrays
    // must be rectangular).
    let storm_lists: Vec<String> = lines
        .iter()
        .map(|(_, p)| {
            p.storm_ids
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    sqlx::query(
        "insert into invoice_line_items
                (invoice_id, snapshot_id, service_id, window_start, window_end, source, adjustment,
                 primary_bytes, backup_bytes, rate_cents_per_gb, discount_rate,
                 storm_overlap_seconds, max_coverage_factor, coverage,
                 primary_charge_exact, primary_charge_cents, backup_charge_exact,
                 backup_charge_cents, subtotal_cents, discount_exact, discount_cents, total_cents,
                 storm_ids)
         select v.invoice, v.snapshot, v.service, v.ws, v.we, v.source, v.adjustment,
                v.pb, v.bb, $10, $11, v.overlap, v.factor, v.coverage, v.pe, v.pc, v.be, v.bc,
                v.subtotal, v.de, v.dc, v.total,
                case when v.storms = '' then '{}'::uuid[]
                     else string_to_array(v.storms, ',')::uuid[] end
           from unnest($1::uuid[], $2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[],
                       $6::text[], $7::bool[], $8::int8[], $9::int8[], $12::numeric[],
                       $13::numeric[], $14::numeric[], $15::numeric[], $16::numeric[],
                       $17::numeric[], $18::numeric[], $19::numeric[], $20::numeric[],
                       $21::numeric[], $22::numeric[], $23::text[])
                v(invoice, snapshot, service, ws, we, source, adjustment, pb, bb, overlap,
                  factor, coverage, pe, pc, be, bc, subtotal, de, dc, total, storms)",
    )
    .bind(lines.iter().map(|(i, _)| *i).collect::<Vec<_>>())
    .bind(column(lines, |p| p.snapshot.id))
    .bind(column(lines, |p| p.snapshot.service_id))
    .bind(column(lines, |p| p.snapshot.window_start))
    .bind(column(lines, |p| p.snapshot.window_end))
    .bind(column(lines, |p| p.snapshot.source.clone()))
    .bind(column(lines, |p| p.adjustment))
    .bind(column(lines, |p| p.snapshot.primary_bytes))
    .bind(column(lines, |p| p.snapshot.backup_bytes))
    .bind(settings.rates.cents_per_gb)
    .bind(settings.rates.discount_rate)
    .bind(column(lines, |p| p.line.storm_overlap_seconds))
    .bind(column(lines, |p| p.line.max_coverage_factor))
    .bind(column(lines, |p| p.line.coverage))
    .bind(column(lines, |p| p.line.primary.exact))
    .bind(column(lines, |p| p.line.primary.cents))
    .bind(column(lines, |p| p.line.backup.exact))
    .bind(column(lines, |p| p.line.backup.cents))
    .bind(column(lines, |p| p.line.subtotal_cents))
    .bind(column(lines, |p| p.line.discount_exact))
    .bind(column(lines, |p| p.line.discount_cents))
    .bind(column(lines, |p| p.line.total_cents))
    .bind(storm_lists)
    .execute(&mut **tx)
    .await
    .map_err(other)?;
    Ok(())
}

/// The usage port over PostgreSQL.
pub struct PgUsageStore {
    pool: PgPool,
}

impl PgUsageStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl UsageStore for PgUsageStore {
    async fn usage_services(&self, shards: &[u16]) -> Result<Vec<UsageService>, StoreError> {
        let shards: Vec<i64> = shards.iter().map(|&s| i64::from(s)).collect();
        let rows: Vec<(i64, i64, String, String, Vec<String>)> = sqlx::query_as(
            "select s.id, s.customer_id, s.primary_cdn, s.backup_cdn,
                    array_agg(d.hostname order by d.hostname)
               from services s join service_domains d on d.service_id = s.id
              where s.customer_id % $2 = any($1::int8[])
                and s.deleted_at is null and d.deleted_at is null
              group by s.id
              order by s.id",
        )
        .bind(&shards)
        .bind(i64::from(SHARDS))
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        Ok(rows
            .into_iter()
            .map(
                |(service_id, customer_id, primary_cdn, backup_cdn, hostnames)| UsageService {
                    service_id,
                    customer_id,
                    primary_cdn,
                    backup_cdn,
                    hostnames,
                },
            )
            .collect())
    }

    async fn record_usage(&self, reports: &[UsageReport]) -> Result<usize, StoreError> {
        if reports.is_empty() {
            return Ok(0);
        }
        let outcomes = crate::store::usage::record(&self.pool, reports)
            .await
            .map_err(other)?;
        Ok(outcomes.iter().filter(|(o, _)| o.wrote()).count())
    }
}
