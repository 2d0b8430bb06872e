//! `/v1/services/{id}/usage-snapshots`: usage pushed by metering pipelines, and the snapshots
//! a service's bill is computed from (pushed or pulled from CDN analytics).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;
use tranche_actors::ports::UsageReport;
use uuid::Uuid;

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::service_not_found;
use super::{ApiContext, ApiTags};
use crate::postgres::usage::{self, SnapshotFilter, SnapshotRow};

/// Most snapshots one request may carry.
pub const MAX_SNAPSHOTS_PER_REQUEST: usize = 1000;
/// Longest window a snapshot may cover.
const MAX_WINDOW: TimeDelta = TimeDelta::days(31);

/// A usage snapshot: bytes served through each CDN in one window, as one source reported them.
#[derive(Debug, Clone, Object)]
pub struct UsageSnapshot {
    pub id: Uuid,
    pub service_id: i64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// Bytes served through the primary CDN.
    pub primary_bytes: i64,
    /// Bytes served through the backup CDN.
    pub backup_bytes: i64,
    /// Who reported it (`cloudflare`, `api`, a pipeline's name).
    pub source: String,
    /// 0 for the report itself; n > 0 for an adjustment: usage reported for the window after
    /// revisions 0..n-1 were invoiced (those are never changed).
    pub revision: i32,
    /// Whether this is an adjustment (revision > 0), billed on a later invoice.
    pub adjustment: bool,
    /// The invoice it is billed on (null until billed).
    #[oai(nullable)]
    pub invoice_id: Option<Uuid>,
    #[oai(nullable)]
    pub billed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<SnapshotRow> for UsageSnapshot {
    fn from(r: SnapshotRow) -> Self {
        Self {
            id: r.id,
            service_id: r.service_id,
            window_start: r.window_start,
            window_end: r.window_end,
            primary_bytes: r.primary_bytes,
            backup_bytes: r.backup_bytes,
            source: r.source,
            adjustment: r.revision > 0,
            revision: r.revision,
            invoice_id: r.invoice_id,
            billed_at: r.billed_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// One window's usage as the source sees it now (cumulative for the window: re-send the whole
/// amount, not a delta).
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInput {
    /// Not before 2000-01-01, not in the future.
    pub window_start: DateTime<Utc>,
    /// After `window_start`, at most 31 days later.
    pub window_end: DateTime<Utc>,
    /// Bytes served through the primary CDN (0 to 2^63 − 1).
    pub primary_bytes: i64,
    /// Bytes served through the backup CDN (0 to 2^63 − 1).
    pub backup_bytes: i64,
    /// Who reports it: 1–64 of `a-z 0-9 . _ -` (default `api`). Together with the service and
    /// window, the idempotency key.
    #[oai(nullable)]
    pub source: Option<String>,
}

/// Body of `POST /v1/services/{id}/usage-snapshots`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RecordSnapshots {
    /// 1 to 1000 windows; each (window, source) at most once.
    pub snapshots: Vec<SnapshotInput>,
}

/// What happened to one submitted window.
#[derive(Debug, Clone, Object)]
pub struct RecordedSnapshot {
    /// `created`, `updated` (an unbilled snapshot took the new amounts), `unchanged` (a
    /// replay), `adjusted` (the window was already invoiced: the difference became a new
    /// adjustment snapshot) or `below_billed` (less than what was already invoiced for the
    /// window: nothing recorded; invoiced usage is never reduced).
    pub outcome: String,
    pub snapshot: UsageSnapshot,
}

/// Response of `POST /v1/services/{id}/usage-snapshots`, in request order.
#[derive(Debug, Clone, Object)]
pub struct RecordedSnapshots {
    pub results: Vec<RecordedSnapshot>,
}

fn validate_source(i: usize, source: Option<&str>) -> ApiResult<String> {
    let source = source.unwrap_or("api");
    let ok = (1..=64).contains(&source.len())
        && source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(source.to_owned())
    } else {
        let field = format!("snapshots[{i}].source");
        Err(ApiError::invalid(
            &field,
            format!("{field} must be 1-64 characters of a-z, 0-9, '.', '_' or '-'"),
        ))
    }
}

fn reports(
    body: RecordSnapshots,
    service_id: i64,
    customer_id: i64,
    now: DateTime<Utc>,
) -> ApiResult<Vec<UsageReport>> {
    let n = body.snapshots.len();
    if n == 0 || n > MAX_SNAPSHOTS_PER_REQUEST {
        return Err(ApiError::invalid(
            "snapshots",
            format!("snapshots must hold 1 to {MAX_SNAPSHOTS_PER_REQUEST} windows, not {n}"),
        ));
    }
    let mut seen: HashMap<(DateTime<Utc>, DateTime<Utc>, String), usize> = HashMap::new();
    let mut out = Vec::with_capacity(n);
    for (i, s) in body.snapshots.into_iter().enumerate() {
        let field = |f: &str| format!("snapshots[{i}].{f}");
        let earliest = super::input::earliest_fact_time();
        super::input::check_time(&field("window_start"), s.window_start, earliest)?;
        super::input::check_time(&field("window_end"), s.window_end, earliest)?;
        if s.window_end <= s.window_start {
            let f = field("window_end");
            return Err(ApiError::invalid(
                &f,
                format!("{f} must be after window_start"),
            ));
        }
        if s.window_end - s.window_start > MAX_WINDOW {
            let f = field("window_end");
            return Err(ApiError::invalid(
                &f,
                format!("{f} must be at most 31 days after window_start"),
            ));
        }
        if s.window_start > now {
            let f = field("window_start");
            return Err(ApiError::invalid(&f, format!("{f} is in the future")));
        }
        for (name, value) in [
            ("primary_bytes", s.primary_bytes),
            ("backup_bytes", s.backup_bytes),
        ] {
            if value < 0 {
                let f = field(name);
                return Err(ApiError::invalid(&f, format!("{f} must not be negative")));
            }
        }
        let source = validate_source(i, s.source.as_deref())?;
        if let Some(first) = seen.insert((s.window_start, s.window_end, source.clone()), i) {
            let f = format!("snapshots[{i}]");
            return Err(ApiError::invalid(
                &f,
                format!("{f} repeats the window and source of snapshots[{first}]"),
            ));
        }
        out.push(UsageReport {
            service_id,
            customer_id,
            window_start: s.window_start,
            window_end: s.window_end,
            primary_bytes: s.primary_bytes,
            backup_bytes: s.backup_bytes,
            source,
        });
    }
    Ok(out)
}

pub struct UsageApi;

#[OpenApi(tag = "ApiTags::Usage")]
impl UsageApi {
    /// Record usage windows (bulk, idempotent). Re-sending a window replaces an unbilled
    /// snapshot's amounts; a window already invoiced is never changed — usage above what was
    /// billed becomes an adjustment snapshot on the next invoice.
    #[oai(
        path = "/v1/services/:id/usage-snapshots",
        method = "post",
        operation_id = "record_usage_snapshots"
    )]
    async fn record(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<RecordSnapshots>,
    ) -> ApiResult<Json<RecordedSnapshots>> {
        if !crate::postgres::services::exists(&ctx.pool, tenant.customer_id, id.0).await? {
            return Err(service_not_found(id.0));
        }
        let reports = reports(body.0, id.0, tenant.customer_id, Utc::now())?;
        let recorded = usage::record(&ctx.pool, &reports).await?;
        crate::metrics::METRICS.usage_ingested(recorded.iter().map(|(o, _)| *o), "api");
        Ok(Json(RecordedSnapshots {
            results: recorded
                .into_iter()
                .map(|(outcome, row)| RecordedSnapshot {
                    outcome: outcome.as_str().to_owned(),
                    snapshot: row.into(),
                })
                .collect(),
        }))
    }

    /// A service's usage snapshots, newest window first.
    #[allow(clippy::too_many_arguments)] // one argument per documented query parameter
    #[oai(
        path = "/v1/services/:id/usage-snapshots",
        method = "get",
        operation_id = "list_usage_snapshots"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        /// Windows starting at or after this time (RFC 3339).
        from: Query<Option<DateTime<Utc>>>,
        /// Windows starting before this time (RFC 3339).
        to: Query<Option<DateTime<Utc>>>,
        /// `true`: only snapshots not yet invoiced; `false`: only invoiced ones.
        unbilled: Query<Option<bool>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<UsageSnapshot>>> {
        let filter = SnapshotFilter {
            from: from.0,
            to: to.0,
            unbilled: unbilled.0,
            limit: super::page_limit(limit.0)?,
        };
        let rows = usage::list(&ctx.pool, tenant.customer_id, id.0, &filter)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        Ok(Json(rows.into_iter().map(UsageSnapshot::from).collect()))
    }
}
