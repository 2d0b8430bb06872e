//! `/v1/settings`: a customer's account settings, created with the customer. For now, the
//! defaults a new storm policy takes for the fields its request leaves out. Reading needs
//! `read`; changing them is customer administration (`admin`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;
use tranche_core::domain::{PolicyKind, PolicyParams};

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::policies::{UpdateStormPolicy, policy_error};
use super::{ApiContext, ApiTags, json_number};
use crate::postgres::settings;

/// What a new storm policy takes for each field its request leaves out.
#[derive(Debug, Clone, Object)]
pub struct StormPolicyDefaults {
    pub threshold_avail: f64,
    pub window_seconds: i32,
    pub cooldown_seconds: i32,
    pub max_coverage_factor: f64,
    pub probe_interval_seconds: i32,
    pub min_samples: i32,
    pub consecutive_failures: i32,
    pub consecutive_successes: i32,
}

impl From<&PolicyParams> for StormPolicyDefaults {
    fn from(p: &PolicyParams) -> Self {
        Self {
            threshold_avail: json_number(p.threshold_avail),
            window_seconds: p.window_seconds,
            cooldown_seconds: p.cooldown_seconds,
            max_coverage_factor: json_number(p.max_coverage_factor),
            probe_interval_seconds: p.probe_interval_seconds,
            min_samples: p.min_samples,
            consecutive_failures: p.consecutive_failures,
            consecutive_successes: p.consecutive_successes,
        }
    }
}

/// Your account settings.
#[derive(Debug, Clone, Object)]
pub struct CustomerSettings {
    pub storm_policy_defaults: StormPolicyDefaults,
    /// Last change (null: never changed since the product defaults).
    #[oai(nullable)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// Body of `PATCH /v1/settings`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// Any subset; the result is validated as a whole, as a policy would be.
    #[oai(nullable)]
    pub storm_policy_defaults: Option<UpdateStormPolicy>,
}

fn view(policy: &PolicyParams, updated_at: Option<DateTime<Utc>>) -> CustomerSettings {
    CustomerSettings {
        storm_policy_defaults: policy.into(),
        updated_at,
    }
}

pub struct SettingsApi;

#[OpenApi(tag = "ApiTags::Settings")]
impl SettingsApi {
    /// Your account settings.
    #[oai(path = "/v1/settings", method = "get", operation_id = "get_settings")]
    async fn get(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<CustomerSettings>> {
        let kind = PolicyKind::HttpAvailability;
        Ok(Json(
            match settings::get(&ctx.pool, tenant.customer_id).await? {
                Some(row) => view(&row.policy(kind), Some(row.updated_at)),
                None => view(&PolicyParams::defaults(kind), None),
            },
        ))
    }

    /// Change your account settings. New storm policies take the new defaults; existing
    /// policies keep their values.
    #[oai(
        path = "/v1/settings",
        method = "patch",
        operation_id = "update_settings"
    )]
    async fn update(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<UpdateSettings>,
    ) -> ApiResult<Json<CustomerSettings>> {
        let patch = body
            .0
            .storm_policy_defaults
            .map(UpdateStormPolicy::into_patch)
            .transpose()?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ApiError::empty_patch(
                    super::policies::POLICY_FIELDS,
                    Some("storm_policy_defaults"),
                )
            })?;
        let kind = PolicyKind::HttpAvailability;
        let row = settings::change_policy_defaults(&ctx.pool, tenant.customer_id, kind, |p| {
            p.apply(&patch)
        })
        .await?
        .map_err(|e| {
            let field = format!("storm_policy_defaults.{}", e.field);
            match policy_error(e) {
                ApiError::Unprocessable(Json(body)) => ApiError::invalid(&field, body.message),
                other => other,
            }
        })?;
        tracing::info!(customer.id = tenant.customer_id, "settings changed");
        Ok(Json(view(&row.policy(kind), Some(row.updated_at))))
    }
}
