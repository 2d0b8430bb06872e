//! DNS steering, read-only: desired vs applied weights per domain, and the change audit log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

use super::auth::{Scope, Scoped, Tenant, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::service_not_found;
use super::storms::DnsWeights;
use super::{ApiContext, ApiTags};
use crate::postgres::dns::{self, ChangeFilter, DnsChangeRow, DnsDomainRow};

/// DNS steering of a service's domains.
#[derive(Debug, Clone, Object)]
pub struct ServiceDns {
    pub service_id: i64,
    pub domains: Vec<DomainDns>,
}

/// One domain's weighted records.
#[derive(Debug, Clone, Object)]
pub struct DomainDns {
    pub domain_id: i64,
    pub name: String,
    /// The DNS zone the records live in.
    #[oai(nullable)]
    pub zone: Option<String>,
    /// Whether Tranche steers this hostname.
    pub steering_enabled: bool,
    /// Weights the storm machine wants.
    pub desired_weights: DnsWeights,
    /// Weights the provider last confirmed (null: never applied).
    #[oai(nullable)]
    pub applied_weights: Option<DnsWeights>,
    #[oai(nullable)]
    pub applied_at: Option<DateTime<Utc>>,
    /// Whether applied equals desired.
    pub converged: bool,
    /// Provider that applied them (`route53`, `noop`).
    #[oai(nullable)]
    pub provider: Option<String>,
    /// A permanent failure for this domain, until its next decision.
    #[oai(nullable)]
    pub last_error: Option<String>,
    #[oai(nullable)]
    pub failed_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub last_change_id: Option<Uuid>,
    /// `submitted`, `insync` or `failed`.
    #[oai(nullable)]
    pub last_change_status: Option<String>,
    #[oai(nullable)]
    pub last_change_at: Option<DateTime<Utc>>,
    /// An operator's pin: while set, these weights are applied instead of the storm machine's.
    #[oai(nullable)]
    pub pin: Option<DnsPin>,
}

/// Fixed weights set by an operator.
#[derive(Debug, Clone, Object)]
pub struct DnsPin {
    pub weights: DnsWeights,
    pub reason: String,
    /// Who pinned: `api_key:<id>` or `dev`.
    pub pinned_by: String,
    pub pinned_at: DateTime<Utc>,
}

/// Body of `PUT …/dns-pin`.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// Weight of the primary record, 0–100 (the backup gets the rest).
    pub primary_weight: i32,
    /// Why (shown in the audit log), 1–500 characters.
    pub reason: String,
}

fn weights(primary: i16) -> DnsWeights {
    DnsWeights {
        primary: primary.into(),
        backup: (100 - primary).into(),
    }
}

impl From<DnsDomainRow> for DomainDns {
    fn from(r: DnsDomainRow) -> Self {
        Self {
            domain_id: r.domain_id,
            name: r.hostname,
            zone: r.zone,
            steering_enabled: r.steering_enabled,
            desired_weights: weights(r.desired_primary),
            applied_weights: r.applied_primary.map(weights),
            applied_at: r.applied_at,
            converged: r.applied_primary == Some(r.desired_primary),
            provider: r.provider,
            last_error: r.last_error,
            failed_at: r.failed_at,
            last_change_id: r.last_change_id,
            last_change_status: r.last_change_status,
            last_change_at: r.last_change_at,
            pin: match (r.pin_primary, r.pin_reason, r.pinned_by, r.pinned_at) {
                (Some(p), Some(reason), Some(pinned_by), Some(pinned_at)) => Some(DnsPin {
                    weights: weights(p),
                    reason,
                    pinned_by,
                    pinned_at,
                }),
                _ => None,
            },
        }
    }
}

/// One attempt to change a zone's records.
#[derive(Debug, Clone, Object)]
pub struct DnsChange {
    pub id: Uuid,
    pub zone: String,
    pub provider: String,
    /// Per domain: `domain_id`, `name`, `type`, `from`, `to` weights, `reason` (`initial`,
    /// `failover`, `ramp`) and the `storm_id` behind a failover.
    pub changes: serde_json::Value,
    /// `submitted`, `insync`, `failed`, or `superseded` (the node that submitted it stopped
    /// before the provider answered; the zone's next owner re-planned it — `error` says who).
    pub status: String,
    /// Attempt number (retries after throttling or errors count up).
    pub attempt: i32,
    /// For a failed attempt: Tranche retries it (throttling, a provider error, a batch being
    /// bisected) rather than marking the domains failed.
    pub will_retry: bool,
    #[oai(nullable)]
    pub provider_change_id: Option<String>,
    #[oai(nullable)]
    pub error: Option<String>,
    pub submitted_at: DateTime<Utc>,
    #[oai(nullable)]
    pub insync_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub failed_at: Option<DateTime<Utc>>,
}

impl From<DnsChangeRow> for DnsChange {
    fn from(r: DnsChangeRow) -> Self {
        Self {
            id: r.id,
            zone: r.zone,
            provider: r.provider,
            changes: r.changes,
            status: r.status,
            attempt: r.attempt,
            will_retry: r.will_retry,
            provider_change_id: r.provider_change_id,
            error: r.error,
            submitted_at: r.submitted_at,
            insync_at: r.insync_at,
            failed_at: r.failed_at,
        }
    }
}

#[derive(poem_openapi::ApiResponse)]
pub enum Released {
    /// The pin was released; the storm machine's weights apply again.
    #[oai(status = 204)]
    NoContent,
}

pub(crate) fn actor(tenant: &Tenant) -> String {
    tenant
        .key_id
        .map_or_else(|| "dev".to_owned(), |id| format!("api_key:{id}"))
}

pub struct DnsApi;

const STATUSES: [&str; 4] = ["submitted", "insync", "failed", "superseded"];

#[OpenApi(tag = "ApiTags::Dns")]
impl DnsApi {
    /// Per domain of a service: desired vs applied DNS weights, last change, provider.
    #[oai(
        path = "/v1/services/:id/dns",
        method = "get",
        operation_id = "get_service_dns"
    )]
    async fn service(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<ServiceDns>> {
        let rows = dns::service_dns(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        Ok(Json(ServiceDns {
            service_id: id.0,
            domains: rows.into_iter().map(DomainDns::from).collect(),
        }))
    }

    /// Pin a domain's DNS weights (e.g. during a migration). The pin wins over the storm
    /// machine until released; pins and releases are audited.
    #[oai(
        path = "/v1/services/:id/domains/:domain_id/dns-pin",
        method = "put",
        operation_id = "pin_domain_dns"
    )]
    async fn pin(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
        body: JsonBody<PinRequest>,
    ) -> ApiResult<Json<DnsPin>> {
        let body = body.0;
        if !(0..=100).contains(&body.primary_weight) {
            return Err(ApiError::invalid(
                "primary_weight",
                "primary_weight must be between 0 and 100",
            ));
        }
        let reason = body.reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(ApiError::invalid(
                "reason",
                "reason must be 1 to 500 characters",
            ));
        }
        let row = dns::pin(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            domain_id.0,
            body.primary_weight as i16,
            reason,
            &actor(&tenant),
        )
        .await?
        .ok_or_else(|| super::domains::domain_not_found(id.0, domain_id.0))?;
        tracing::info!(
            domain.id = row.domain_id,
            weight = row.primary_weight,
            "DNS weights pinned"
        );
        Ok(Json(DnsPin {
            weights: weights(row.primary_weight),
            reason: row.reason,
            pinned_by: row.pinned_by,
            pinned_at: row.pinned_at,
        }))
    }

    /// Release a domain's pin: its DNS follows the storm machine again.
    #[oai(
        path = "/v1/services/:id/domains/:domain_id/dns-pin",
        method = "delete",
        operation_id = "release_domain_dns_pin"
    )]
    async fn release(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
    ) -> ApiResult<Released> {
        if dns::release(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            domain_id.0,
            &actor(&tenant),
        )
        .await?
        {
            Ok(Released::NoContent)
        } else {
            Err(ApiError::not_found(format!(
                "domain {} of service {} has no DNS pin",
                domain_id.0, id.0
            )))
        }
    }

    /// The DNS change audit log for your domains, newest first.
    #[allow(clippy::too_many_arguments)] // one argument per documented query parameter
    #[oai(
        path = "/v1/dns/changes",
        method = "get",
        operation_id = "list_dns_changes"
    )]
    async fn changes(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// Only changes to this service's domains.
        service_id: Query<Option<i64>>,
        /// Only changes to this domain.
        domain_id: Query<Option<i64>>,
        /// `submitted`, `insync`, `failed` or `superseded`.
        status: Query<Option<String>>,
        /// Submitted at or after (RFC 3339).
        since: Query<Option<DateTime<Utc>>>,
        /// Submitted before (RFC 3339).
        until: Query<Option<DateTime<Utc>>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<DnsChange>>> {
        let limit = super::page_limit(limit.0)?;
        if let Some(s) = status.0.as_deref()
            && !STATUSES.contains(&s)
        {
            return Err(ApiError::bad_request(
                format!("status must be one of {}", STATUSES.join(", ")),
                Some("status"),
            ));
        }
        let filter = ChangeFilter {
            service_id: service_id.0,
            domain_id: domain_id.0,
            status: status.0,
            since: since.0,
            until: until.0,
            limit,
        };
        let rows = dns::changes(&ctx.pool, tenant.customer_id, &filter).await?;
        Ok(Json(rows.into_iter().map(DnsChange::from).collect()))
    }
}
