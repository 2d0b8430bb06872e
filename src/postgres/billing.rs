//! Invoicing over PostgreSQL: [`PgBillingStore`] implements the engine's
//! [`BillingStore`] port, and [`PgUsageStore`] its [`UsageStore`] port.
//!
//! One billing run is one transaction, in three steps: load, plan (the pure
//! [`tranche_core::billing::plan_run`], which holds every invoicing rule), apply.
//!
//! * **load** ([`load_run`]): check the customer shard's fencing epoch (a deposed node stops
//!   here); take the customer's billing lock (exclusive: no writer of its snapshots is in
//!   flight, and a concurrent run, on-demand or on another node, waits and then bills what is
//!   left); read the settled snapshots above the customer's billing cursor that have no line
//!   yet (see [`tranche_core::billing::cursor`]), their services' storms and coverage factors;
//!   lock the existing invoices of the snapshots' periods (in period order) and note which are
//!   finalized;
//! * **plan**: price every snapshot, decide its invoice, and where the cursor moves;
//! * **apply** ([`apply_run`]): add the plan's sums to the drafts, creating those that do not
//!   exist yet (one per customer and period, by a unique key), in one upsert; insert the line
//!   items (a snapshot can be on one line only, by its primary key: the line is what makes it
//!   billed, the snapshot itself is not rewritten); move the cursor; finalize drafts past their
//!   grace; record the run.
//!
//! Anything failing rolls the whole run back; the failure is then recorded in `billing_runs`
//! with its error, and the next tick retries.

use super::port_error;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use tranche_actors::ports::{
    BillingRunSummary, BillingStore, Fence, StoreError, UsageReport, UsageService, UsageStore,
};
use tranche_core::billing::{
    BillingSettings, CursorScan, RunInputs, RunPlan, StormSpan, Unbilled, Usage, next_cursor,
    plan_run, snapshot_periods,
};
use tranche_core::domain::SHARDS;
use tranche_core::events::EventType;
use uuid::Uuid;

use super::engine_store::{check_fence, fence_holds};

/// Advisory-lock key space of a customer's billing lock ("BILL"; migration 32): a billing run
/// holds it exclusively, the writers of the customer's snapshots shared.
pub(crate) const BILLING_LOCK_SPACE: i32 = 0x4249_4c4c;
const _: () = assert!(BILLING_LOCK_SPACE == 1_112_099_916);

/// The billing port over PostgreSQL.
pub struct PgBillingStore {
    pool: PgPool,
}

impl PgBillingStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The customer's billing cursor, the highest `seq` billed so far, and the bounds
/// [`next_cursor`] needs.
#[derive(FromRow)]
struct CursorRow {
    cursor: i64,
    high_seq: i64,
    top: Option<i64>,
    first_unsettled: Option<i64>,
}

#[derive(FromRow)]
struct UnbilledRow {
    id: Uuid,
    seq: i64,
    service_id: i64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    primary_bytes: i64,
    backup_bytes: i64,
    source: String,
    revision: i32,
}

/// A service's coverage factor (`factor`) or one of its storms (`storm_id` and its span).
#[derive(FromRow)]
struct ServiceTermsRow {
    service_id: i64,
    factor: Option<Decimal>,
    storm_id: Option<Uuid>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
}

/// A run's inputs, and the database identities the plan's indices refer to.
pub struct LoadedRun {
    pub inputs: RunInputs,
    /// Per snapshot of `inputs`: its id and source.
    snapshots: Vec<(Uuid, String)>,
    /// Per service: the ids of its storms, in the order of `inputs.storms`.
    storm_ids: HashMap<i64, Vec<Uuid>>,
    /// The customer's billing cursor and highest billed `seq`, before the run and after it.
    cursor: CursorMove,
}

/// The billing cursor and the highest billed `seq`, as `(cursor, high_seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CursorMove {
    before: (i64, i64),
    after: (i64, i64),
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
        .map_err(port_error)?;
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
        let result = self
            .run(customer_id, fence, now, settings, node_id, started)
            .await;
        crate::metrics::METRICS.billing_run(result.as_ref(), started);
        match result {
            Err(e @ StoreError::Fenced { .. }) => Err(e),
            Err(e) => {
                self.record_failure(customer_id, node_id, started, &e).await;
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
            .map_err(port_error)
    }

    async fn fold_metered_usage(&self, customer_id: i64) -> Result<usize, StoreError> {
        super::metering::fold_all(&self.pool, customer_id)
            .await
            .map_err(port_error)
    }
}

impl PgBillingStore {
    /// Runs a customer's invoicing now, for `POST /v1/billing-runs`, from whichever node took
    /// the request. Runs are safe to race (a run holds the customer's billing lock; the second
    /// waits, then bills what is left), so this one is fenced at the shard's current epoch
    /// only. The run is recorded even when it finds nothing to do; a failure rolls it back and
    /// is recorded with its error.
    pub async fn run_on_demand(
        &self,
        customer_id: i64,
        now: DateTime<Utc>,
        settings: &BillingSettings,
        node_id: &str,
        key_id: Option<i64>,
    ) -> Result<Uuid, StoreError> {
        let started = Utc::now();
        let run = async {
            super::metering::fold_all(&self.pool, customer_id)
                .await
                .map_err(port_error)?;
            let mut tx = self.pool.begin().await.map_err(port_error)?;
            let shard = (customer_id % i64::from(SHARDS)) as u16;
            let epoch: Option<i64> =
                sqlx::query_scalar("select epoch from shard_leases where shard = $1")
                    .bind(shard as i16)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(port_error)?;
            if let Some(epoch) = epoch {
                check_fence(&mut tx, Fence { shard, epoch }).await?;
            }
            let summary =
                plan_and_apply(&mut tx, customer_id, None, now, settings, node_id).await?;
            let id = record_run(
                &mut tx,
                customer_id,
                node_id,
                started,
                &summary,
                Some(key_id),
            )
            .await?;
            tx.commit().await.map_err(port_error)?;
            Ok::<_, StoreError>((id, summary))
        };
        let result = run.await;
        crate::metrics::METRICS.billing_run(result.as_ref().map(|r| &r.1), started);
        match result.map(|r| r.0) {
            Err(e) => {
                self.record_failure(customer_id, node_id, started, &e).await;
                Err(e)
            }
            ok => ok,
        }
    }

    async fn record_failure(
        &self,
        customer_id: i64,
        node_id: &str,
        started: DateTime<Utc>,
        e: &StoreError,
    ) {
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
    }

    async fn run(
        &self,
        customer_id: i64,
        fence: Fence,
        now: DateTime<Utc>,
        settings: &BillingSettings,
        node_id: &str,
        started: DateTime<Utc>,
    ) -> Result<BillingRunSummary, StoreError> {
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        let summary =
            plan_and_apply(&mut tx, customer_id, Some(fence), now, settings, node_id).await?;
        if summary.did_something() {
            record_run(&mut tx, customer_id, node_id, started, &summary, None).await?;
        }
        tx.commit().await.map_err(port_error)?;
        Ok(summary)
    }
}

/// Loads a customer's run inputs inside the run's transaction: checks the `fence` (when
/// given; on the shard's lease row, `for share`, as [`check_fence`] does), takes the
/// customer's billing lock and locks the invoices the run may write to.
pub async fn load_run(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    fence: Option<Fence>,
    now: DateTime<Utc>,
    settings: &BillingSettings,
) -> Result<LoadedRun, StoreError> {
    // The customer's billing lock, exclusive: the writers of its snapshots (who hold it
    // shared) are not in flight while the run reads and bills. One round trip: the fence and
    // the lock. (The run's statements keep their connection's prepared plans; the one lookup
    // whose cached plan went stale as `invoices` grew is planned per use: migration 33.)
    let (_, epoch): (String, Option<i64>) = sqlx::query_as(
        "select pg_advisory_xact_lock($1, ($2 % 2147483647)::int4)::text,
                (select epoch from shard_leases where shard = $3 for share)",
    )
    .bind(BILLING_LOCK_SPACE)
    .bind(customer_id)
    .bind(fence.map_or(-1, |f| f.shard as i16))
    .fetch_one(&mut **tx)
    .await
    .map_err(port_error)?;
    if let Some(fence) = fence {
        fence_holds(fence, epoch)?;
    }
    // The cursor and what lies above it (a snapshot is billed when its line exists).
    let bounds: CursorRow = sqlx::query_as(
        "select c.cursor, c.high_seq,
                (select max(seq) from usage_snapshots where customer_id = $1) as top,
                (select min(seq) from usage_snapshots
                  where customer_id = $1 and seq > c.cursor and window_end > $2)
                    as first_unsettled
           from (select coalesce(max(seq), 0) as cursor, coalesce(max(high_seq), 0) as high_seq
                   from billing_cursors where customer_id = $1) c",
    )
    .bind(customer_id)
    .bind(settings.billable_before(now))
    .fetch_one(&mut **tx)
    .await
    .map_err(port_error)?;
    // The settled snapshots above the cursor without a line, lowest numbers first. Only those
    // up to the highest number billed so far can have one: unless the cursor is below that,
    // no line is looked for (the check would cost a probe of the lines' index per row).
    macro_rules! unbilled {
        ($billed:literal) => {
            concat!(
                "select id, seq, service_id, window_start, window_end, primary_bytes,
                        backup_bytes, source, revision
                   from usage_snapshots s
                  where customer_id = $1 and seq > $2 and window_end <= $3 ",
                $billed,
                " order by seq limit $4"
            )
        };
    }
    let rows: Vec<UnbilledRow> = if bounds.high_seq > bounds.cursor {
        sqlx::query_as(unbilled!(
            "and not exists (select 1 from invoice_line_items l where l.snapshot_id = s.id)"
        ))
    } else {
        sqlx::query_as(unbilled!(""))
    }
    .bind(customer_id)
    .bind(bounds.cursor)
    .bind(settings.billable_before(now))
    .bind(settings.batch as i64)
    .fetch_all(&mut **tx)
    .await
    .map_err(port_error)?;
    let scan = CursorScan {
        cursor: bounds.cursor,
        top: bounds.top,
        first_unsettled: bounds.first_unsettled,
        billed: rows.len(),
        last_billed: rows.last().map(|r| r.seq),
        batch: settings.batch,
    };
    let mut loaded = LoadedRun {
        inputs: RunInputs::default(),
        snapshots: Vec::with_capacity(rows.len()),
        storm_ids: HashMap::new(),
        cursor: CursorMove {
            before: (bounds.cursor, bounds.high_seq),
            after: (
                next_cursor(&scan),
                scan.last_billed.unwrap_or(0).max(bounds.high_seq),
            ),
        },
    };
    if rows.is_empty() {
        return Ok(loaded);
    }
    for r in rows {
        loaded.inputs.snapshots.push(Unbilled {
            service_id: r.service_id,
            usage: Usage {
                window_start: r.window_start,
                window_end: r.window_end,
                primary_bytes: r.primary_bytes,
                backup_bytes: r.backup_bytes,
            },
            revision: r.revision,
        });
        loaded.snapshots.push((r.id, r.source));
    }
    let snapshots = &loaded.inputs.snapshots;
    let mut services: Vec<i64> = snapshots.iter().map(|s| s.service_id).collect();
    services.sort_unstable();
    services.dedup();
    let earliest = snapshots.iter().map(|s| s.usage.window_start).min();
    let latest = snapshots.iter().map(|s| s.usage.window_end).max();
    // The services' coverage factors and the storms overlapping the snapshots, in one round
    // trip: a factor row has no storm id.
    let rows: Vec<ServiceTermsRow> = sqlx::query_as(
        "select * from (
             select service_id, max_coverage_factor as factor, null::uuid as storm_id,
                    null::timestamptz as started_at, null::timestamptz as ended_at
               from storm_policies where service_id = any($1)
             union all
             select service_id, null, id, started_at, ended_at from storm_events
              where service_id = any($1) and started_at < $3
                and (ended_at is null or ended_at > $2)
         ) t order by t.storm_id is not null, t.started_at",
    )
    .bind(&services)
    .bind(earliest)
    .bind(latest)
    .fetch_all(&mut **tx)
    .await
    .map_err(port_error)?;
    for r in rows {
        match (r.factor, r.storm_id, r.started_at) {
            (Some(f), None, _) => loaded
                .inputs
                .coverage_factors
                .entry(r.service_id)
                .or_default()
                .push(f),
            (None, Some(id), Some(started_at)) => {
                loaded
                    .inputs
                    .storms
                    .entry(r.service_id)
                    .or_default()
                    .push(StormSpan {
                        started_at,
                        ended_at: r.ended_at,
                    });
                loaded.storm_ids.entry(r.service_id).or_default().push(id);
            }
            _ => {
                return Err(StoreError::Other(format!(
                    "unexpected coverage row for service {}",
                    r.service_id
                )));
            }
        }
    }
    let statuses: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
        "select period_start, status from invoices
          where customer_id = $1 and period_start = any($2)
          order by period_start
          for update",
    )
    .bind(customer_id)
    .bind(snapshot_periods(&loaded.inputs.snapshots, settings))
    .fetch_all(&mut **tx)
    .await
    .map_err(port_error)?;
    loaded.inputs.finalized_periods = statuses
        .into_iter()
        .filter(|(_, status)| status == "finalized")
        .map(|(p, _)| p)
        .collect();
    Ok(loaded)
}

/// Loads, plans and applies one run inside `tx` (the caller records it).
async fn plan_and_apply(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    fence: Option<Fence>,
    now: DateTime<Utc>,
    settings: &BillingSettings,
    node_id: &str,
) -> Result<BillingRunSummary, StoreError> {
    let loaded = load_run(tx, customer_id, fence, now, settings).await?;
    let plan = plan_run(&loaded.inputs, now, settings).map_err(|e| {
        StoreError::Other(format!(
            "snapshot {} cannot be priced: {}",
            loaded.snapshots[e.snapshot].0, e.error
        ))
    })?;
    apply_run(tx, customer_id, &loaded, &plan, now, settings, node_id).await
}

/// Applies a run's plan inside its transaction.
pub async fn apply_run(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    loaded: &LoadedRun,
    plan: &RunPlan,
    now: DateTime<Utc>,
    settings: &BillingSettings,
    node_id: &str,
) -> Result<BillingRunSummary, StoreError> {
    let mut summary = BillingRunSummary::default();
    if !plan.lines.is_empty() {
        let (invoice_of, created) = upsert_drafts(tx, customer_id, plan, node_id).await?;
        summary.invoices_created = created;
        summary.invoices_touched = plan.drafts.len() as u32;
        let invoices: Vec<Uuid> = plan
            .lines
            .iter()
            .map(|l| invoice_of[&l.period_start])
            .collect();
        insert_lines(tx, loaded, plan, &invoices, settings).await?;
        summary.snapshots_billed = plan.lines.len() as u32;
    }
    // Finalizing reports itself into SLO tracking, as the customer's application `tranche`
    // (dogfooding): a run per invoice, started when its period closed, succeeded now. The same
    // statement moves the billing cursor (one round trip for the run's tail).
    let finalized: i64 = sqlx::query_scalar(
        "with fin as (
             update invoices set status = 'finalized', finalized_at = now()
              where customer_id = $1 and status = 'draft' and period_end <= $2
             returning id, period_start, period_end, finalized_at
         ), reported as (
             insert into job_status (customer_id, application, job, business_date, run_id,
                                     status, status_time, host)
             select $1, 'tranche', 'invoice-finalisation',
                    (f.period_start at time zone 'UTC')::date, f.id::text, s.status,
                    case s.status when 'start' then f.period_end else f.finalized_at end, $3
               from fin f cross join (values ('start'), ('succeed')) as s(status)
             on conflict do nothing
         ), moved as (
             insert into billing_cursors (customer_id, seq, high_seq)
             select $1, $4, $5 where $6
             on conflict (customer_id) do update
                set seq = greatest(billing_cursors.seq, excluded.seq),
                    high_seq = greatest(billing_cursors.high_seq, excluded.high_seq),
                    updated_at = now()
         )
         select count(*) from fin",
    )
    .bind(customer_id)
    .bind(settings.finalize_until(now))
    .bind(node_id)
    .bind(loaded.cursor.after.0)
    .bind(loaded.cursor.after.1)
    .bind(loaded.cursor.after != loaded.cursor.before)
    .fetch_one(&mut **tx)
    .await
    .map_err(port_error)?;
    summary.invoices_finalized = finalized as u32;
    if finalized > 0 {
        dogfood_slo(tx, customer_id, settings).await?;
    }

    Ok(summary)
}

/// The first time a customer's invoice is finalized, its application `tranche` is created with
/// an every-day UTC calendar and the SLO `tranche-invoice-finalisation` (see
/// [`BillingSettings::finalisation_slo`]), so the customer is told (`slo.late`) if Tranche's
/// billing falls behind (the start grace runs to the expected end: the start is reported with
/// the success). Deleting the application makes the next finalization create it again.
async fn dogfood_slo(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    settings: &BillingSettings,
) -> Result<(), StoreError> {
    let Some((start, end)) = settings.finalisation_slo() else {
        return Ok(());
    };
    let application: Option<i64> = sqlx::query_scalar(
        "insert into applications (customer_id, name, description)
         values ($1, 'tranche', 'Tranche''s own jobs for this account: invoice finalisation')
         on conflict (customer_id, name) do nothing returning id",
    )
    .bind(customer_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(port_error)?;
    let Some(application) = application else {
        return Ok(());
    };
    sqlx::query(
        "with cal as (
             insert into calendars (customer_id, name, kind, time_zone)
             values ($1, 'tranche-utc-daily', 'every_day', 'UTC')
             on conflict (customer_id, name) do update set name = excluded.name
             returning id
         ), slo as (
             insert into slos (customer_id, application_id, calendar_id, name,
                               start_grace_minutes, tolerance_minutes)
             select $1, $2, cal.id, 'tranche-invoice-finalisation', $4 - $3, 60 from cal
             on conflict (customer_id, name) do nothing
             returning id
         )
         insert into slo_jobs (slo_id, job, expected_start_minutes, expected_end_minutes)
         select slo.id, 'invoice-finalisation', $3, $4 from slo",
    )
    .bind(customer_id)
    .bind(application)
    .bind(start as i32)
    .bind(end as i32)
    .execute(&mut **tx)
    .await
    .map_err(port_error)?;
    Ok(())
}

/// Records a successful run (`on_demand`: asked for through the API, with the key that asked)
/// and returns its id.
async fn record_run(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    node_id: &str,
    started: DateTime<Utc>,
    summary: &BillingRunSummary,
    on_demand: Option<Option<i64>>,
) -> Result<Uuid, StoreError> {
    sqlx::query_scalar(
        "insert into billing_runs (customer_id, node_id, started_at, finished_at,
                invoices_touched, invoices_created, invoices_finalized, snapshots_billed,
                on_demand, requested_by_key)
         values ($1, $2, $3, clock_timestamp(), $4, $5, $6, $7, $8, $9)
         returning id",
    )
    .bind(customer_id)
    .bind(node_id)
    .bind(started)
    .bind(summary.invoices_touched as i32)
    .bind(summary.invoices_created as i32)
    .bind(summary.invoices_finalized as i32)
    .bind(summary.snapshots_billed as i32)
    .bind(on_demand.is_some())
    .bind(on_demand.flatten())
    .fetch_one(&mut **tx)
    .await
    .map_err(port_error)
}

/// Adds the plan's draft sums to the customer's draft invoices of those periods, creating the
/// drafts that do not exist yet and queueing `invoice.created` for each, in one statement.
/// Returns each period's invoice id and how many were created. Every period must be a draft: the run holds the existing invoices `for
/// update`, so one finalized since (the current period's, locked only here) is an error.
async fn upsert_drafts(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
    plan: &RunPlan,
    node_id: &str,
) -> Result<(HashMap<DateTime<Utc>, Uuid>, u32), StoreError> {
    let drafts = &plan.drafts;
    // The drafts this statement creates announce themselves (`invoice.created`, in period order)
    // in the same statement: one round trip per run, as the billing run is statement-bound.
    let rows: Vec<(Uuid, DateTime<Utc>, bool)> = sqlx::query_as(concat!(
        "with up as (
             insert into invoices (customer_id, period_start, period_end, created_by_node,
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
             returning id, period_start, period_end, status, xmax = 0 as created
         ), announced as (
             select gen_random_uuid() as event_id, id, period_start, period_end, status
               from up where created
         ), ev as (
             insert into events (id, customer_id, type, payload)
             select event_id, $1, $9, jsonb_build_object('invoice_id', id,
                        'period_start', period_start, 'period_end', period_end, 'status', status)
               from announced order by period_start
         ), queued as (
             insert into webhook_deliveries (endpoint_id, event_id, customer_id)
             select e.id, a.event_id, $1
               from announced a join webhook_endpoints e on e.customer_id = $1
              where ",
        super::outbox::subscribed!("e", "$9"),
        "
              order by a.period_start, e.id
         )
         select id, period_start, created from up",
    ))
    .bind(customer_id)
    .bind(drafts.iter().map(|d| d.period_start).collect::<Vec<_>>())
    .bind(drafts.iter().map(|d| d.period_end).collect::<Vec<_>>())
    .bind(node_id)
    .bind(
        drafts
            .iter()
            .map(|d| d.totals.subtotal_cents)
            .collect::<Vec<_>>(),
    )
    .bind(
        drafts
            .iter()
            .map(|d| d.totals.discount_cents)
            .collect::<Vec<_>>(),
    )
    .bind(
        drafts
            .iter()
            .map(|d| d.totals.total_cents)
            .collect::<Vec<_>>(),
    )
    .bind(drafts.iter().map(|d| d.lines).collect::<Vec<_>>())
    .bind(EventType::InvoiceCreated.as_str())
    .fetch_all(&mut **tx)
    .await
    .map_err(port_error)?;
    if rows.len() != drafts.len() {
        return Err(StoreError::Other(format!(
            "{} of {} invoices were finalized during the run",
            drafts.len() - rows.len(),
            drafts.len()
        )));
    }
    let created = rows.iter().filter(|r| r.2).count() as u32;
    Ok((
        rows.into_iter().map(|(id, s, _)| (s, id)).collect(),
        created,
    ))
}

async fn insert_lines(
    tx: &mut Transaction<'_, Postgres>,
    loaded: &LoadedRun,
    plan: &RunPlan,
    invoices: &[Uuid],
    settings: &BillingSettings,
) -> Result<(), StoreError> {
    let lines = &plan.lines;
    let snapshots = &loaded.inputs.snapshots;
    // One array per column.
    fn column<T>(plan: &RunPlan, f: impl Fn(&tranche_core::billing::PlannedLine) -> T) -> Vec<T> {
        plan.lines.iter().map(f).collect()
    }
    // Storm ids travel as one text array of comma-separated lists (Postgres arrays of arrays
    // must be rectangular).
    let no_storms = Vec::new();
    let storm_lists: Vec<String> = lines
        .iter()
        .map(|l| {
            let ids = loaded
                .storm_ids
                .get(&snapshots[l.snapshot].service_id)
                .unwrap_or(&no_storms);
            l.line
                .storms
                .iter()
                .map(|&i| ids[i].to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let usage = |l: &tranche_core::billing::PlannedLine| snapshots[l.snapshot].usage;
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
    .bind(invoices)
    .bind(column(plan, |l| loaded.snapshots[l.snapshot].0))
    .bind(column(plan, |l| snapshots[l.snapshot].service_id))
    .bind(column(plan, |l| usage(l).window_start))
    .bind(column(plan, |l| usage(l).window_end))
    .bind(column(plan, |l| loaded.snapshots[l.snapshot].1.clone()))
    .bind(column(plan, |l| l.adjustment))
    .bind(column(plan, |l| usage(l).primary_bytes))
    .bind(column(plan, |l| usage(l).backup_bytes))
    .bind(settings.rates.cents_per_gb)
    .bind(settings.rates.discount_rate)
    .bind(column(plan, |l| l.line.storm_overlap_seconds))
    .bind(column(plan, |l| l.line.max_coverage_factor))
    .bind(column(plan, |l| l.line.coverage))
    .bind(column(plan, |l| l.line.primary.exact))
    .bind(column(plan, |l| l.line.primary.cents))
    .bind(column(plan, |l| l.line.backup.exact))
    .bind(column(plan, |l| l.line.backup.cents))
    .bind(column(plan, |l| l.line.subtotal_cents))
    .bind(column(plan, |l| l.line.discount_exact))
    .bind(column(plan, |l| l.line.discount_cents))
    .bind(column(plan, |l| l.line.total_cents))
    .bind(storm_lists)
    .execute(&mut **tx)
    .await
    .map_err(port_error)?;
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
        .map_err(port_error)?;
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
        let outcomes = crate::postgres::usage::record(&self.pool, reports)
            .await
            .map_err(port_error)?;
        crate::metrics::METRICS.usage_ingested(outcomes.iter().map(|(o, _)| *o), "ingest");
        Ok(outcomes.iter().filter(|(o, _)| o.wrote()).count())
    }

    async fn report_ingestion(
        &self,
        customers: &[i64],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        node_id: &str,
    ) -> Result<(), StoreError> {
        let runs = tranche_core::usage::ingestion_reports(from, to);
        if customers.is_empty() || runs.is_empty() {
            return Ok(());
        }
        // Each (customer, date, status) once: the first pass that reached it, its time now.
        sqlx::query(
            "insert into job_status (customer_id, application, job, business_date, run_id,
                                     status, status_time, host)
             select c, 'tranche', 'usage-ingestion', r.d, r.d::text, r.s, now(), $4
               from unnest($1::int8[]) as c
               cross join unnest($2::date[], $3::text[]) as r(d, s)
             on conflict do nothing",
        )
        .bind(customers)
        .bind(runs.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(node_id)
        .execute(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(())
    }
}
