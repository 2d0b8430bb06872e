//! `/v1/invoices` and `/v1/billing-runs`: what Tranche billed, line by line, with the storms
//! behind every discount. Money is whole US cents (and the unrounded amounts they come from),
//! always as decimal strings.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::storms::Storm;
use super::{ApiContext, ApiTags};
use crate::postgres::invoices::{self, BillingRunRow, InvoiceFilter, InvoiceRow, LineRow};
use crate::postgres::storms;

/// A decimal as the API writes it: exact, without trailing zeros.
fn money(d: Decimal) -> String {
    d.normalize().to_string()
}

/// An invoice: one customer, one billing period.
#[derive(Debug, Clone, Object)]
pub struct Invoice {
    pub id: Uuid,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// `draft` while the period can still receive late usage, then `finalized` (immutable).
    pub status: String,
    /// `USD`; amounts are in whole cents.
    pub currency: String,
    /// Sum of the lines' subtotals, in cents (decimal string).
    pub subtotal_cents: String,
    /// Sum of the lines' storm discounts, in cents.
    pub discount_cents: String,
    /// `subtotal_cents − discount_cents`.
    pub total_cents: String,
    pub line_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[oai(nullable)]
    pub finalized_at: Option<DateTime<Utc>>,
}

impl From<InvoiceRow> for Invoice {
    fn from(r: InvoiceRow) -> Self {
        Self {
            id: r.id,
            period_start: r.period_start,
            period_end: r.period_end,
            status: r.status,
            currency: r.currency,
            subtotal_cents: money(r.subtotal_cents),
            discount_cents: money(r.discount_cents),
            total_cents: money(r.total_cents),
            line_count: r.line_count,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finalized_at: r.finalized_at,
        }
    }
}

/// One billed usage snapshot. `charge(bytes) = round(bytes × rate / 2^30)`;
/// `coverage = min(storm_overlap × max_coverage_factor / window, max_coverage_factor)`;
/// `discount = min(round(backup_charge × discount_rate × coverage), subtotal)`; rounding half
/// away from zero.
#[derive(Debug, Clone, Object)]
pub struct LineItem {
    /// The usage snapshot billed (a snapshot is on one line only; this identifies the line).
    pub snapshot_id: Uuid,
    pub service_id: i64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub source: String,
    /// Usage of a window an earlier invoice already billed (late data).
    pub adjustment: bool,
    pub primary_bytes: i64,
    pub backup_bytes: i64,
    /// Rate in force, US cents per GB (2^30 bytes).
    pub rate_cents_per_gb: String,
    pub discount_rate: String,
    /// Seconds of the window inside the union of the service's storms.
    pub storm_overlap_seconds: String,
    /// Largest `max_coverage_factor` of the service's policies (1 without any).
    pub max_coverage_factor: String,
    /// Unrounded coverage.
    pub coverage: String,
    pub primary_charge_exact: String,
    pub primary_charge_cents: String,
    pub backup_charge_exact: String,
    pub backup_charge_cents: String,
    pub subtotal_cents: String,
    /// Unrounded, uncapped discount.
    pub discount_exact: String,
    pub discount_cents: String,
    pub total_cents: String,
    /// The storms (see `storms` on the invoice) that overlap the window.
    pub storm_ids: Vec<Uuid>,
}

impl From<LineRow> for LineItem {
    fn from(r: LineRow) -> Self {
        Self {
            snapshot_id: r.snapshot_id,
            service_id: r.service_id,
            window_start: r.window_start,
            window_end: r.window_end,
            source: r.source,
            adjustment: r.adjustment,
            primary_bytes: r.primary_bytes,
            backup_bytes: r.backup_bytes,
            rate_cents_per_gb: money(r.rate_cents_per_gb),
            discount_rate: money(r.discount_rate),
            storm_overlap_seconds: money(r.storm_overlap_seconds),
            max_coverage_factor: money(r.max_coverage_factor),
            coverage: money(r.coverage),
            primary_charge_exact: money(r.primary_charge_exact),
            primary_charge_cents: money(r.primary_charge_cents),
            backup_charge_exact: money(r.backup_charge_exact),
            backup_charge_cents: money(r.backup_charge_cents),
            subtotal_cents: money(r.subtotal_cents),
            discount_exact: money(r.discount_exact),
            discount_cents: money(r.discount_cents),
            total_cents: money(r.total_cents),
            storm_ids: r.storm_ids,
        }
    }
}

/// An invoice with its line items and the storms behind its discounts.
#[derive(Debug, Clone, Object)]
pub struct InvoiceDetail {
    #[oai(flatten)]
    pub invoice: Invoice,
    pub lines: Vec<LineItem>,
    /// The storms that produced the discounts.
    pub storms: Vec<Storm>,
}

/// One billing run of a customer (runs that found nothing to do are not recorded).
#[derive(Debug, Clone, Object)]
pub struct BillingRun {
    pub id: Uuid,
    pub node_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub invoices_touched: i32,
    pub invoices_created: i32,
    pub invoices_finalized: i32,
    pub snapshots_billed: i32,
    /// Why the run failed (it was rolled back whole; the next run retries).
    #[oai(nullable)]
    pub error: Option<String>,
    /// Asked for through `POST /v1/billing-runs` (scheduled runs that found nothing to do are
    /// not recorded; runs on demand always are).
    pub on_demand: bool,
    /// The API key that asked for it (null: scheduled, or dev mode).
    #[oai(nullable)]
    pub requested_by_key: Option<i64>,
}

impl From<BillingRunRow> for BillingRun {
    fn from(r: BillingRunRow) -> Self {
        Self {
            id: r.id,
            node_id: r.node_id,
            started_at: r.started_at,
            finished_at: r.finished_at,
            invoices_touched: r.invoices_touched,
            invoices_created: r.invoices_created,
            invoices_finalized: r.invoices_finalized,
            snapshots_billed: r.snapshots_billed,
            error: r.error,
            on_demand: r.on_demand,
            requested_by_key: r.requested_by_key,
        }
    }
}

#[derive(ApiResponse)]
pub enum CreatedRun {
    /// The run, committed.
    #[oai(status = 201)]
    Created(Json<BillingRun>),
}

pub struct InvoicesApi;

#[OpenApi(tag = "ApiTags::Billing")]
impl InvoicesApi {
    /// Your invoices, newest period first.
    #[oai(path = "/v1/invoices", method = "get", operation_id = "list_invoices")]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// `draft` or `finalized`.
        status: Query<Option<String>>,
        /// Invoices whose period starts before this time (RFC 3339), to page backwards.
        before: Query<Option<DateTime<Utc>>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<Invoice>>> {
        if let Some(s) = status.0.as_deref()
            && s != "draft"
            && s != "finalized"
        {
            return Err(ApiError::bad_request(
                "status must be draft or finalized",
                Some("status"),
            ));
        }
        let filter = InvoiceFilter {
            status: status.0,
            before: before.0,
            limit: super::page_limit(limit.0)?,
        };
        let rows = invoices::list(&ctx.pool, tenant.customer_id, &filter).await?;
        Ok(Json(rows.into_iter().map(Invoice::from).collect()))
    }

    /// One invoice with its line items and the storms that produced each discount.
    #[oai(
        path = "/v1/invoices/:id",
        method = "get",
        operation_id = "get_invoice"
    )]
    async fn get(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<Uuid>,
    ) -> ApiResult<Json<InvoiceDetail>> {
        let invoice = invoices::get(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("invoice {} not found", id.0)))?;
        let lines = invoices::lines(&ctx.pool, invoice.id).await?;
        let storms = storms::of_invoice(&ctx.pool, tenant.customer_id, invoice.id).await?;
        Ok(Json(InvoiceDetail {
            invoice: invoice.into(),
            lines: lines.into_iter().map(LineItem::from).collect(),
            storms: storms.into_iter().map(Storm::from).collect(),
        }))
    }

    /// Your billing runs, newest first: when invoicing ran, what it billed, and failures.
    #[oai(
        path = "/v1/billing-runs",
        method = "get",
        operation_id = "list_billing_runs"
    )]
    async fn runs(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<BillingRun>>> {
        let limit = super::page_limit(limit.0)?;
        let rows = invoices::runs(&ctx.pool, tenant.customer_id, limit).await?;
        Ok(Json(rows.into_iter().map(BillingRun::from).collect()))
    }

    /// Runs your invoicing now (admin scope) and returns the run: snapshots whose windows
    /// have settled are billed and drafts past their grace are finalized, exactly as the
    /// scheduled run would. Safe to repeat and to race the schedule: a snapshot is billed
    /// once. A run that fails is rolled back whole, recorded with its error, and answered 503.
    #[oai(
        path = "/v1/billing-runs",
        method = "post",
        operation_id = "create_billing_run"
    )]
    async fn run_now(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<CreatedRun> {
        let Some(billing) = &ctx.billing else {
            return Err(ApiError::conflict(
                "invoicing is disabled on this node (TRANCHE_BILLING=false)",
                None,
            ));
        };
        let store = crate::postgres::billing::PgBillingStore::new(ctx.pool.clone());
        let id = store
            .run_on_demand(
                tenant.customer_id,
                Utc::now(),
                billing,
                &ctx.node_id,
                tenant.key_id,
            )
            .await
            .map_err(|e| {
                tracing::warn!(customer.id = tenant.customer_id, error = %e, "billing run on demand failed");
                ApiError::unavailable(format!("the billing run failed and was rolled back: {e}"))
            })?;
        let run = invoices::run(&ctx.pool, tenant.customer_id, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("billing run {id} not found")))?;
        Ok(CreatedRun::Created(Json(run.into())))
    }
}
