//! Failover drills (`…/domains/{domain_id}/drills`) and maintenance windows
//! (`…/maintenance-windows`): an operator moves a domain's traffic to its backup on purpose, or
//! tells Tranche that trouble is expected. Both are audited (who, when, why) and shown in
//! `/state`; the engine acts on them (see `core/src/storm/machine.rs`).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use uuid::Uuid;

use super::auth::{Scope, Scoped, needs};
use super::dns::actor;
use super::domains::domain_not_found;
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::service_not_found;
use super::{ApiContext, ApiTags};
use crate::postgres::drills::{self, DrillRow, NewWindow, StartRefused, WindowRow};

/// Shortest and longest drill.
const DRILL_SECONDS: std::ops::RangeInclusive<i64> = 10..=86_400;
/// Longest maintenance window.
const WINDOW_DAYS: i64 = 7;

/// A failover drill of one domain.
#[derive(Debug, Clone, Object)]
pub struct Drill {
    pub id: Uuid,
    pub service_id: i64,
    pub domain_id: i64,
    pub reason: String,
    /// `api_key:<id>` or `dev`.
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// When the drill stops holding traffic on the backup; the ramp back follows.
    pub ends_at: DateTime<Utc>,
    /// `pending` (waiting for the engine, or for a healthy backup), `active` (traffic on the
    /// backup), `ramping_back`, `finished`, or `expired` (it never began: the backup was never
    /// healthy during its time).
    pub status: String,
    /// When traffic moved to the backup.
    #[oai(nullable)]
    pub began_at: Option<DateTime<Utc>>,
    /// When the domain left the drill.
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended: `completed`, `cancelled`, `storm` (a real outage took over),
    /// `backup_unhealthy` (the backup failed: traffic went straight back), `expired`.
    #[oai(nullable)]
    pub outcome: Option<String>,
    #[oai(nullable)]
    pub cancelled_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub cancelled_by: Option<String>,
}

impl From<DrillRow> for Drill {
    fn from(r: DrillRow) -> Self {
        let status = match (r.began_at, r.finished_at) {
            (_, Some(_)) => "finished",
            (Some(_), None) if r.ends_at > r.now => "active",
            (Some(_), None) => "ramping_back",
            (None, None) if r.ends_at > r.now => "pending",
            (None, None) => "expired",
        };
        Self {
            id: r.id,
            service_id: r.service_id,
            domain_id: r.domain_id,
            reason: r.reason,
            requested_by: r.requested_by,
            requested_at: r.requested_at,
            ends_at: r.ends_at,
            status: status.to_owned(),
            began_at: r.began_at,
            finished_at: r.finished_at,
            outcome: r
                .outcome
                .or_else(|| (status == "expired").then(|| "expired".to_owned())),
            cancelled_at: r.cancelled_at,
            cancelled_by: r.cancelled_by,
        }
    }
}

/// Body of `POST …/drills`.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewDrill {
    /// How long traffic stays on the backup, 10–86,400 seconds; then it ramps back as after a
    /// storm.
    pub duration_seconds: i64,
    /// Why (kept in the audit trail and sent with the events), 1–500 characters.
    pub reason: String,
}

/// A maintenance window: while it lasts, the domains it covers are probed and shown, but no
/// storm opens and nothing is alerted on.
#[derive(Debug, Clone, Object)]
pub struct MaintenanceWindow {
    pub id: Uuid,
    pub service_id: i64,
    /// The one domain it covers (null: every domain of the service).
    #[oai(nullable)]
    pub domain_id: Option<i64>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// `scheduled`, `active`, `ended` or `cancelled`.
    pub status: String,
    #[oai(nullable)]
    pub cancelled_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub cancelled_by: Option<String>,
}

impl From<WindowRow> for MaintenanceWindow {
    fn from(r: WindowRow) -> Self {
        let status = if r.cancelled_at.is_some() {
            "cancelled"
        } else if r.ends_at <= r.now {
            "ended"
        } else if r.starts_at <= r.now {
            "active"
        } else {
            "scheduled"
        };
        Self {
            id: r.id,
            service_id: r.service_id,
            domain_id: r.domain_id,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            reason: r.reason,
            created_by: r.created_by,
            created_at: r.created_at,
            status: status.to_owned(),
            cancelled_at: r.cancelled_at,
            cancelled_by: r.cancelled_by,
        }
    }
}

/// Body of `POST …/maintenance-windows`.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewMaintenanceWindow {
    /// Only this domain of the service (default: every domain of the service).
    #[oai(nullable)]
    pub domain_id: Option<i64>,
    /// When it starts (RFC 3339; default: now).
    #[oai(nullable)]
    pub starts_at: Option<DateTime<Utc>>,
    /// When it ends (RFC 3339): after `starts_at` and in the future, at most 7 days after it
    /// starts.
    pub ends_at: DateTime<Utc>,
    /// Why (kept in the audit trail), 1–500 characters.
    pub reason: String,
}

#[derive(ApiResponse)]
pub enum CreatedDrill {
    /// The drill is recorded; the engine moves traffic within a probe interval (once the
    /// backup is healthy).
    #[oai(status = 201)]
    Created(Json<Drill>),
}

#[derive(ApiResponse)]
pub enum CreatedWindow {
    #[oai(status = 201)]
    Created(Json<MaintenanceWindow>),
}

fn reason(text: &str) -> ApiResult<&str> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 500 {
        return Err(ApiError::invalid(
            "reason",
            "reason must be 1 to 500 characters",
        ));
    }
    Ok(text)
}

pub struct DrillsApi;

#[OpenApi(tag = "ApiTags::Domains")]
impl DrillsApi {
    /// Starts a failover drill: the domain's traffic moves to its backup for
    /// `duration_seconds`, then ramps back through the normal ramp. No storm is opened, so a
    /// drill is never billed as storm time; a real outage during the drill opens a real storm,
    /// and a backup that fails ends the drill at once. Announced by `drill.started` and
    /// `drill.ended`; one drill at a time per domain (409).
    #[oai(
        path = "/v1/services/:id/domains/:domain_id/drills",
        method = "post",
        operation_id = "create_drill"
    )]
    async fn start(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
        body: JsonBody<NewDrill>,
    ) -> ApiResult<CreatedDrill> {
        let body = body.0;
        if !DRILL_SECONDS.contains(&body.duration_seconds) {
            return Err(ApiError::invalid(
                "duration_seconds",
                "duration_seconds must be between 10 and 86400",
            ));
        }
        let reason = reason(&body.reason)?;
        let row = drills::start(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            domain_id.0,
            body.duration_seconds,
            reason,
            &actor(&tenant),
        )
        .await?
        .map_err(|refused| match refused {
            StartRefused::NotFound => domain_not_found(id.0, domain_id.0),
            StartRefused::NoBackup => {
                ApiError::conflict("the domain has no backup target to move traffic to", None)
            }
            StartRefused::Running(drill) => ApiError::conflict(
                format!("drill {drill} of this domain is still under way; cancel it first"),
                None,
            ),
        })?;
        tracing::info!(domain.id = row.domain_id, drill.id = %row.id, ends_at = %row.ends_at, "drill requested");
        Ok(CreatedDrill::Created(Json(row.into())))
    }

    /// A domain's drills, newest first.
    #[oai(
        path = "/v1/services/:id/domains/:domain_id/drills",
        method = "get",
        operation_id = "list_drills"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<Drill>>> {
        let limit = super::page_limit(limit.0)?;
        let rows = drills::list(&ctx.pool, tenant.customer_id, id.0, domain_id.0, limit)
            .await?
            .ok_or_else(|| domain_not_found(id.0, domain_id.0))?;
        Ok(Json(rows.into_iter().map(Drill::from).collect()))
    }

    /// Cancels a drill: traffic stops being held on the backup now and ramps back. 409 when
    /// the drill is already over.
    #[oai(
        path = "/v1/services/:id/domains/:domain_id/drills/:drill_id",
        method = "delete",
        operation_id = "cancel_drill"
    )]
    async fn cancel(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
        drill_id: Path<Uuid>,
    ) -> ApiResult<Json<Drill>> {
        match drills::cancel(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            domain_id.0,
            drill_id.0,
            &actor(&tenant),
        )
        .await?
        {
            Some(Ok(row)) => {
                tracing::info!(domain.id = row.domain_id, drill.id = %row.id, "drill cancelled");
                Ok(Json(row.into()))
            }
            Some(Err(_)) => Err(ApiError::conflict(
                format!("drill {} is already over", drill_id.0),
                None,
            )),
            None => Err(ApiError::not_found(format!(
                "drill {} of domain {} not found",
                drill_id.0, domain_id.0
            ))),
        }
    }

    /// Declares a maintenance window over the service, or one of its domains: probes still
    /// run and are shown, but no storm opens and nothing is alerted on (no `storm.*`,
    /// `domain.health_unknown` or `vantage.disagrees`). A storm already open carries on.
    #[oai(
        path = "/v1/services/:id/maintenance-windows",
        method = "post",
        operation_id = "create_maintenance_window"
    )]
    async fn declare(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<NewMaintenanceWindow>,
    ) -> ApiResult<CreatedWindow> {
        let body = body.0;
        let now = Utc::now();
        let starts_at = body.starts_at.unwrap_or(now);
        let earliest = DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
            .map(|t| t.to_utc())
            .unwrap_or(now);
        if starts_at < earliest {
            return Err(ApiError::invalid(
                "starts_at",
                "starts_at must be after 2000-01-01",
            ));
        }
        if body.ends_at <= starts_at {
            return Err(ApiError::invalid(
                "ends_at",
                "ends_at must be after starts_at",
            ));
        }
        if body.ends_at <= now {
            return Err(ApiError::invalid(
                "ends_at",
                "ends_at must be in the future",
            ));
        }
        if body.ends_at - starts_at > Duration::days(WINDOW_DAYS) {
            return Err(ApiError::invalid(
                "ends_at",
                "a maintenance window lasts at most 7 days",
            ));
        }
        let reason = reason(&body.reason)?;
        let row = drills::declare(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            NewWindow {
                domain_id: body.domain_id,
                starts_at,
                ends_at: body.ends_at,
                reason,
                created_by: &actor(&tenant),
            },
        )
        .await?
        .ok_or_else(|| service_not_found(id.0))?
        .map_err(|()| {
            ApiError::invalid("domain_id", "domain_id is not a domain of this service")
        })?;
        tracing::info!(service.id = row.service_id, window.id = %row.id, "maintenance window declared");
        Ok(CreatedWindow::Created(Json(row.into())))
    }

    /// A service's maintenance windows, latest ending first.
    #[oai(
        path = "/v1/services/:id/maintenance-windows",
        method = "get",
        operation_id = "list_maintenance_windows"
    )]
    async fn windows(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<MaintenanceWindow>>> {
        let limit = super::page_limit(limit.0)?;
        let rows = drills::windows(&ctx.pool, tenant.customer_id, id.0, limit)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        Ok(Json(
            rows.into_iter().map(MaintenanceWindow::from).collect(),
        ))
    }

    /// Cancels a maintenance window that has not ended (409 when it has).
    #[oai(
        path = "/v1/services/:id/maintenance-windows/:window_id",
        method = "delete",
        operation_id = "cancel_maintenance_window"
    )]
    async fn cancel_window(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        window_id: Path<Uuid>,
    ) -> ApiResult<Json<MaintenanceWindow>> {
        match drills::cancel_window(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            window_id.0,
            &actor(&tenant),
        )
        .await?
        {
            Some(Ok(row)) => Ok(Json(row.into())),
            Some(Err(_)) => Err(ApiError::conflict(
                format!("maintenance window {} is already over", window_id.0),
                None,
            )),
            None => Err(ApiError::not_found(format!(
                "maintenance window {} of service {} not found",
                window_id.0, id.0
            ))),
        }
    }
}
