//! DNS steering, read-only: desired vs applied weights per domain, and the change audit log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

use super::auth::{Scope, Tenant};
use super::engine::DnsWeights;
use super::error::{ApiError, ApiResult};
use super::services::service_not_found;
use super::{ApiContext, ApiTags};
use crate::store::dns::{self, ChangeFilter, DnsChangeRow, DnsDomainRow};

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
    pub zone: Option<String>,
    /// Whether Tranche steers this hostname.
    pub steering_enabled: bool,
    /// Weights the storm machine wants.
    pub desired_weights: DnsWeights,
    /// Weights the provider last confirmed (null: never applied).
    pub applied_weights: Option<DnsWeights>,
    pub applied_at: Option<DateTime<Utc>>,
    /// Whether applied equals desired.
    pub converged: bool,
    /// Provider that applied them (`route53`, `noop`).
    pub provider: Option<String>,
    /// A permanent failure for this domain, until its next decision.
    pub last_error: Option<String>,
    pub failed_at: Option<DateTime<Utc>>,
    pub last_change_id: Option<Uuid>,
    /// `submitted`, `insync` or `failed`.
    pub last_change_status: Option<String>,
    pub last_change_at: Option<DateTime<Utc>>,
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
    /// `submitted`, `insync` or `failed`.
    pub status: String,
    /// Attempt number (retries after throttling or errors count up).
    pub attempt: i32,
    pub provider_change_id: Option<String>,
    pub error: Option<String>,
    pub submitted_at: DateTime<Utc>,
    pub insync_at: Option<DateTime<Utc>>,
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
            provider_change_id: r.provider_change_id,
            error: r.error,
            submitted_at: r.submitted_at,
            insync_at: r.insync_at,
            failed_at: r.failed_at,
        }
    }
}

pub struct DnsApi;

const STATUSES: [&str; 3] = ["submitted", "insync", "failed"];

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
        tenant: Tenant,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<ServiceDns>> {
        tenant.require(Scope::Read)?;
        let rows = dns::service_dns(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        Ok(Json(ServiceDns {
            service_id: id.0,
            domains: rows.into_iter().map(DomainDns::from).collect(),
        }))
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
        tenant: Tenant,
        ctx: Data<&Arc<ApiContext>>,
        /// Only changes to this service's domains.
        service_id: Query<Option<i64>>,
        /// Only changes to this domain.
        domain_id: Query<Option<i64>>,
        /// `submitted`, `insync` or `failed`.
        status: Query<Option<String>>,
        /// Submitted at or after (RFC 3339).
        since: Query<Option<DateTime<Utc>>>,
        /// Submitted before (RFC 3339).
        until: Query<Option<DateTime<Utc>>>,
        /// At most this many (1–1000, default 100).
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<DnsChange>>> {
        tenant.require(Scope::Read)?;
        let limit = limit.0.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request(
                "limit must be between 1 and 1000",
                Some("limit"),
            ));
        }
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
