//! `/v1/services/{id}/storm-policies`: when a service's primary CDN is in a storm.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tranche_core::domain::{PolicyError, PolicyKind, PolicyParams, PolicyPatch};

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::{Deleted, service_not_found};
use super::{ApiContext, ApiTags, decimal_from_json, json_number};
use crate::postgres::policies::{self, PolicyRow};

/// A storm policy.
#[derive(Debug, Clone, Object)]
pub struct StormPolicy {
    pub id: i64,
    pub service_id: i64,
    /// What is measured: `http_availability`.
    pub kind: String,
    /// Storm when the primary's availability over the window is below this, in (0, 1].
    pub threshold_avail: f64,
    /// Sliding window availability is computed over, in seconds.
    pub window_seconds: i32,
    /// Seconds the primary must stay at or above the threshold before the storm ends.
    pub cooldown_seconds: i32,
    /// Cap on the storm coverage factor used for the billing discount (greater than 0, at most
    /// 10; below 1 a storm is covered only in part).
    pub max_coverage_factor: f64,
    /// Seconds between probes of each domain through each CDN.
    pub probe_interval_seconds: i32,
    /// Probes a window needs before its availability counts; fewer means "unknown".
    pub min_samples: i32,
    /// Failed probes of the primary in a row needed, on top of the window, before a storm
    /// opens: one blip never fails over. Worst-case detection time is
    /// `consecutive_failures × probe_interval_seconds` plus the domain's probe timeout.
    pub consecutive_failures: i32,
    /// Successful probes of the primary in a row needed, on top of the cooldown, before the
    /// ramp back to the primary starts.
    pub consecutive_successes: i32,
    /// How many of the vantages (regions) probing a domain must agree that a CDN is down (or
    /// healthy): `majority` (more than half of those with a known window), `any` or `all`.
    /// Vantages that know nothing yet never count as down.
    pub quorum: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<PolicyRow> for StormPolicy {
    fn from(r: PolicyRow) -> Self {
        Self {
            id: r.id,
            service_id: r.service_id,
            kind: r.kind,
            threshold_avail: json_number(r.threshold_avail),
            window_seconds: r.window_seconds,
            cooldown_seconds: r.cooldown_seconds,
            max_coverage_factor: json_number(r.max_coverage_factor),
            probe_interval_seconds: r.probe_interval_seconds,
            min_samples: r.min_samples,
            consecutive_failures: r.consecutive_failures,
            consecutive_successes: r.consecutive_successes,
            quorum: r.quorum,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `POST /v1/services/{id}/storm-policies`. Omitted fields take the customer's
/// defaults (`GET /v1/settings`; out of the box the values below).
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateStormPolicy {
    /// `http_availability` (default).
    #[oai(nullable)]
    pub kind: Option<String>,
    /// Default 0.90.
    #[oai(nullable)]
    pub threshold_avail: Option<f64>,
    /// Default 60.
    #[oai(nullable)]
    pub window_seconds: Option<i32>,
    /// Default 300.
    #[oai(nullable)]
    pub cooldown_seconds: Option<i32>,
    /// Default 1.5.
    #[oai(nullable)]
    pub max_coverage_factor: Option<f64>,
    /// Default 10; at least 1.
    #[oai(nullable)]
    pub probe_interval_seconds: Option<i32>,
    /// Default 3.
    #[oai(nullable)]
    pub min_samples: Option<i32>,
    /// Failed probes of the primary in a row before a storm opens, on top of the window
    /// (1–100, default 3; like Route53's failure threshold). Worst-case detection time:
    /// `consecutive_failures × probe_interval_seconds` + the probe timeout (default
    /// 3 × 10 s + 5 s = 35 s).
    #[oai(nullable)]
    pub consecutive_failures: Option<i32>,
    /// Successful probes of the primary in a row before the ramp back starts, on top of the
    /// cooldown (1–100, default 3).
    #[oai(nullable)]
    pub consecutive_successes: Option<i32>,
    /// `majority` (default), `any` or `all`: how many of the vantages probing a domain must
    /// agree (see the policy's `quorum`).
    #[oai(nullable)]
    pub quorum: Option<String>,
}

/// Body of `PATCH /v1/services/{id}/storm-policies/{policy_id}`: any non-empty subset. The kind
/// cannot change.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateStormPolicy {
    #[oai(nullable)]
    pub threshold_avail: Option<f64>,
    #[oai(nullable)]
    pub window_seconds: Option<i32>,
    #[oai(nullable)]
    pub cooldown_seconds: Option<i32>,
    #[oai(nullable)]
    pub max_coverage_factor: Option<f64>,
    #[oai(nullable)]
    pub probe_interval_seconds: Option<i32>,
    #[oai(nullable)]
    pub min_samples: Option<i32>,
    #[oai(nullable)]
    pub consecutive_failures: Option<i32>,
    #[oai(nullable)]
    pub consecutive_successes: Option<i32>,
    #[oai(nullable)]
    pub quorum: Option<String>,
}

impl UpdateStormPolicy {
    pub(crate) fn into_patch(self) -> ApiResult<PolicyPatch> {
        Ok(PolicyPatch {
            threshold_avail: self
                .threshold_avail
                .map(|v| decimal_from_json("threshold_avail", v))
                .transpose()?,
            window_seconds: self.window_seconds,
            cooldown_seconds: self.cooldown_seconds,
            max_coverage_factor: self
                .max_coverage_factor
                .map(|v| decimal_from_json("max_coverage_factor", v))
                .transpose()?,
            probe_interval_seconds: self.probe_interval_seconds,
            min_samples: self.min_samples,
            consecutive_failures: self.consecutive_failures,
            consecutive_successes: self.consecutive_successes,
            quorum: self
                .quorum
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(ApiError::field("quorum"))?,
        })
    }
}

#[derive(ApiResponse)]
pub enum CreatedPolicy {
    /// The policy was created.
    #[oai(status = 201)]
    Created(Json<StormPolicy>, #[oai(header = "Location")] String),
}

pub(crate) fn policy_error(e: PolicyError) -> ApiError {
    ApiError::invalid(e.field, format!("{}: {}", e.field, e.reason))
}

fn policy_not_found(service_id: i64, policy_id: i64) -> ApiError {
    ApiError::not_found(format!(
        "storm policy {policy_id} of service {service_id} not found"
    ))
}

pub struct PoliciesApi;

#[OpenApi(tag = "ApiTags::StormPolicies")]
impl PoliciesApi {
    /// List a service's storm policies.
    #[oai(
        path = "/v1/services/:id/storm-policies",
        method = "get",
        operation_id = "list_storm_policies"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<Vec<StormPolicy>>> {
        let rows = policies::list(&ctx.pool, tenant.customer_id, id.0).await?;
        if rows.is_empty()
            && !crate::postgres::services::exists(&ctx.pool, tenant.customer_id, id.0).await?
        {
            return Err(service_not_found(id.0));
        }
        Ok(Json(rows.into_iter().map(StormPolicy::from).collect()))
    }

    /// Add a storm policy (one per kind).
    #[oai(
        path = "/v1/services/:id/storm-policies",
        method = "post",
        operation_id = "create_storm_policy"
    )]
    async fn create(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<CreateStormPolicy>,
    ) -> ApiResult<CreatedPolicy> {
        let body = body.0;
        let kind = match body.kind.as_deref() {
            None => PolicyKind::HttpAvailability,
            Some(k) => k.parse().map_err(ApiError::field("kind"))?,
        };
        let patch = UpdateStormPolicy {
            threshold_avail: body.threshold_avail,
            window_seconds: body.window_seconds,
            cooldown_seconds: body.cooldown_seconds,
            max_coverage_factor: body.max_coverage_factor,
            probe_interval_seconds: body.probe_interval_seconds,
            min_samples: body.min_samples,
            consecutive_failures: body.consecutive_failures,
            consecutive_successes: body.consecutive_successes,
            quorum: body.quorum,
        }
        .into_patch()?;
        // Omitted fields take the customer's defaults (`/v1/settings`).
        let defaults =
            crate::postgres::settings::policy_defaults(&ctx.pool, tenant.customer_id, kind).await?;
        let params = defaults.apply(&patch).map_err(policy_error)?;
        let row = policies::create(&ctx.pool, tenant.customer_id, id.0, &params)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        let location = format!("/v1/services/{}/storm-policies/{}", id.0, row.id);
        Ok(CreatedPolicy::Created(Json(row.into()), location))
    }

    /// Update any subset of a policy's parameters. The result is validated as a whole (e.g. the
    /// window must hold `min_samples` probes).
    #[oai(
        path = "/v1/services/:id/storm-policies/:policy_id",
        method = "patch",
        operation_id = "update_storm_policy"
    )]
    async fn update(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        policy_id: Path<i64>,
        body: JsonBody<UpdateStormPolicy>,
    ) -> ApiResult<Json<StormPolicy>> {
        let patch = body.0.into_patch()?;
        if patch.is_empty() {
            return Err(ApiError::empty_patch(POLICY_FIELDS, None));
        }
        let mut tx = ctx.pool.begin().await?;
        let current = policies::get_for_update(&mut tx, tenant.customer_id, id.0, policy_id.0)
            .await?
            .ok_or_else(|| policy_not_found(id.0, policy_id.0))?;
        let params = params_of(&current)?.apply(&patch).map_err(policy_error)?;
        let row = policies::update(&mut tx, current.id, &params).await?;
        tx.commit().await?;
        Ok(Json(row.into()))
    }

    /// Delete a storm policy.
    #[oai(
        path = "/v1/services/:id/storm-policies/:policy_id",
        method = "delete",
        operation_id = "delete_storm_policy"
    )]
    async fn delete(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        policy_id: Path<i64>,
    ) -> ApiResult<Deleted> {
        if policies::delete(&ctx.pool, tenant.customer_id, id.0, policy_id.0).await? {
            Ok(Deleted::NoContent)
        } else {
            Err(policy_not_found(id.0, policy_id.0))
        }
    }
}

/// The parameters a policy PATCH may send.
pub const POLICY_FIELDS: &[&str] = &[
    "threshold_avail",
    "window_seconds",
    "cooldown_seconds",
    "max_coverage_factor",
    "probe_interval_seconds",
    "min_samples",
    "consecutive_failures",
    "consecutive_successes",
    "quorum",
];

/// The parameters stored in a row (valid by construction: the database checks them too).
fn params_of(row: &PolicyRow) -> ApiResult<PolicyParams> {
    let kind = row.kind.parse::<PolicyKind>().map_err(|e| {
        tracing::error!(policy.id = row.id, error = %e, "stored policy has an unknown kind");
        ApiError::internal()
    })?;
    Ok(PolicyParams {
        kind,
        threshold_avail: row.threshold_avail,
        window_seconds: row.window_seconds,
        cooldown_seconds: row.cooldown_seconds,
        max_coverage_factor: row.max_coverage_factor,
        probe_interval_seconds: row.probe_interval_seconds,
        min_samples: row.min_samples,
        consecutive_failures: row.consecutive_failures,
        consecutive_successes: row.consecutive_successes,
        quorum: row.quorum.parse().map_err(|e| {
            tracing::error!(policy.id = row.id, error = %e, "stored policy has an unknown quorum");
            ApiError::internal()
        })?,
    })
}
