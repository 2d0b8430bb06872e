//! Read side of billing for the API: invoices, their line items and storms, billing runs.
//! (Invoices are written only by the billing run, `engine::billing`.)

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow)]
pub struct InvoiceRow {
    pub id: Uuid,
    pub customer_id: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub status: String,
    pub currency: String,
    pub subtotal_cents: Decimal,
    pub discount_cents: Decimal,
    pub total_cents: Decimal,
    pub line_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
}

macro_rules! columns {
    () => {
        "id, customer_id, period_start, period_end, status, currency, subtotal_cents,
         discount_cents, total_cents, line_count, created_at, updated_at, finalized_at"
    };
}

#[derive(Debug, Default)]
pub struct InvoiceFilter {
    pub status: Option<String>,
    /// Invoices whose period starts before this (paging backwards).
    pub before: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// The customer's invoices, newest period first.
pub async fn list(
    pool: &PgPool,
    customer_id: i64,
    filter: &InvoiceFilter,
) -> sqlx::Result<Vec<InvoiceRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from invoices
          where customer_id = $1
            and ($2::text is null or status = $2)
            and ($3::timestamptz is null or period_start < $3)
          order by period_start desc
          limit $4"
    ))
    .bind(customer_id)
    .bind(&filter.status)
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, customer_id: i64, id: Uuid) -> sqlx::Result<Option<InvoiceRow>> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from invoices where id = $1 and customer_id = $2"
    ))
    .bind(id)
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct LineRow {
    pub snapshot_id: Uuid,
    pub service_id: i64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub source: String,
    pub adjustment: bool,
    pub primary_bytes: i64,
    pub backup_bytes: i64,
    pub rate_cents_per_gb: Decimal,
    pub discount_rate: Decimal,
    pub storm_overlap_seconds: Decimal,
    pub max_coverage_factor: Decimal,
    pub coverage: Decimal,
    pub primary_charge_exact: Decimal,
    pub primary_charge_cents: Decimal,
    pub backup_charge_exact: Decimal,
    pub backup_charge_cents: Decimal,
    pub subtotal_cents: Decimal,
    pub discount_exact: Decimal,
    pub discount_cents: Decimal,
    pub total_cents: Decimal,
    pub storm_ids: Vec<Uuid>,
}

/// An invoice's line items, by window.
pub async fn lines(pool: &PgPool, invoice_id: Uuid) -> sqlx::Result<Vec<LineRow>> {
    sqlx::query_as(
        "select snapshot_id, service_id, window_start, window_end, source, adjustment,
                primary_bytes, backup_bytes, rate_cents_per_gb, discount_rate,
                storm_overlap_seconds, max_coverage_factor, coverage, primary_charge_exact,
                primary_charge_cents, backup_charge_exact, backup_charge_cents, subtotal_cents,
                discount_exact, discount_cents, total_cents, storm_ids
           from invoice_line_items
          where invoice_id = $1
          order by window_start, service_id, source, snapshot_id",
    )
    .bind(invoice_id)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct BillingRunRow {
    pub id: Uuid,
    pub node_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub invoices_touched: i32,
    pub invoices_created: i32,
    pub invoices_finalized: i32,
    pub snapshots_billed: i32,
    pub error: Option<String>,
    pub on_demand: bool,
    pub requested_by_key: Option<i64>,
}

const RUN_COLUMNS: &str = "id, node_id, started_at, finished_at, invoices_touched,
    invoices_created, invoices_finalized, snapshots_billed, error, on_demand, requested_by_key";

/// One of the customer's billing runs.
pub async fn run(pool: &PgPool, customer_id: i64, id: Uuid) -> sqlx::Result<Option<BillingRunRow>> {
    // The query is built from a constant.
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from billing_runs where customer_id = $1 and id = $2"
    )))
    .bind(customer_id)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The customer's billing runs, newest first.
pub async fn runs(pool: &PgPool, customer_id: i64, limit: i64) -> sqlx::Result<Vec<BillingRunRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {RUN_COLUMNS} from billing_runs
          where customer_id = $1
          order by started_at desc
          limit $2"
    )))
    .bind(customer_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
