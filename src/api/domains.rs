//! `/v1/services/{id}/domains`: the hostnames of a service.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use rand::RngCore;
use serde::Deserialize;
use tranche_actors::domain::{
    ExpectedStatuses, Hostname, ProbePath, ProbeScheme, ProbeTarget, default_zone, shard_of,
};

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::services::{Deleted, service_not_found};
use super::{ApiContext, ApiTags};
use crate::engine::verification;
use crate::store::domains;
use tranche_actors::verify::{challenge_name, evaluate};

/// A customer hostname, probed through each of the service's CDNs.
#[derive(Debug, Clone, Object)]
pub struct Domain {
    pub id: i64,
    pub service_id: i64,
    /// The hostname, canonical: lowercase, no trailing dot.
    pub name: String,
    /// Where this hostname is reached through the primary CDN (edge hostname or IP); null until
    /// configured.
    pub primary_target: Option<String>,
    /// Where this hostname is reached through the backup CDN (edge hostname or IP).
    pub backup_target: Option<String>,
    /// Path probes request.
    pub probe_path: String,
    /// `https` (default) or `http`.
    pub probe_scheme: String,
    /// HTTP statuses that count as up, e.g. `200-399`.
    pub expected_statuses: String,
    /// Probe timeout in milliseconds (connect + TLS + response headers).
    pub probe_timeout_ms: i32,
    /// DNS zone the hostname is steered in (default: its last two labels).
    pub dns_zone: String,
    /// Ownership verification: Tranche steers DNS only for verified hostnames.
    pub verification: Verification,
    /// Whether Tranche may rewrite this hostname's weighted DNS records: set when the domain
    /// is verified (dev mode verifies at once). Unverified domains are never steered.
    pub steering_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The TXT challenge proving the customer controls a hostname.
#[derive(Debug, Clone, Object)]
pub struct Verification {
    /// `pending`, `verified` or `failed`.
    pub status: String,
    /// Name of the TXT record to publish.
    pub record_name: String,
    /// Value the TXT record must hold.
    pub record_value: String,
    pub verified_at: Option<DateTime<Utc>>,
    /// When the challenge was last looked up.
    pub last_checked_at: Option<DateTime<Utc>>,
    /// Why the last lookup did not verify (null once verified and found).
    pub last_error: Option<String>,
    /// Lookups so far without success.
    pub attempts: i32,
    /// A verified domain whose challenge record has since disappeared: it stays verified and
    /// steered, but publish the record again.
    pub lost_at: Option<DateTime<Utc>>,
}

impl From<domains::DomainRow> for Domain {
    fn from(r: domains::DomainRow) -> Self {
        Self {
            verification: Verification {
                status: r.verification_status,
                record_name: challenge_name(&r.hostname),
                record_value: r.verification_token,
                verified_at: r.verified_at,
                last_checked_at: r.verification_checked_at,
                last_error: r.verification_error,
                attempts: r.verification_attempts,
                lost_at: r.verification_lost_at,
            },
            id: r.id,
            service_id: r.service_id,
            name: r.hostname,
            primary_target: r.primary_target,
            backup_target: r.backup_target,
            probe_path: r.probe_path,
            probe_scheme: r.probe_scheme,
            expected_statuses: r.expected_statuses,
            probe_timeout_ms: r.probe_timeout_ms,
            steering_enabled: r.steering_enabled,
            dns_zone: r.dns_zone.unwrap_or_default(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `POST /v1/services/{id}/domains`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    /// The hostname, e.g. `app.example.com` (no scheme, path or port).
    pub name: String,
    /// Edge hostname or IP that reaches this hostname through the primary CDN.
    pub primary_target: Option<String>,
    /// Edge hostname or IP that reaches this hostname through the backup CDN.
    pub backup_target: Option<String>,
    /// Path to probe (default `/`).
    pub probe_path: Option<String>,
    /// `https` (default) or `http`.
    pub probe_scheme: Option<String>,
    /// Statuses that count as up: codes and ranges, e.g. `200-299,301` (default `200-399`).
    pub expected_statuses: Option<String>,
    /// Probe timeout in milliseconds, 100–60000 (default 5000).
    pub probe_timeout_ms: Option<i32>,
    /// DNS zone the hostname is steered in (default: its last two labels).
    pub dns_zone: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreatedDomain {
    /// The domain was added.
    #[oai(status = 201)]
    Created(Json<Domain>, #[oai(header = "Location")] String),
}

pub struct DomainsApi;

#[OpenApi(tag = "ApiTags::Domains")]
impl DomainsApi {
    /// List a service's domains, oldest first.
    #[oai(
        path = "/v1/services/:id/domains",
        method = "get",
        operation_id = "list_domains"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<Vec<Domain>>> {
        let rows = domains::list(&ctx.pool, tenant.customer_id, id.0).await?;
        if rows.is_empty()
            && !crate::store::services::exists(&ctx.pool, tenant.customer_id, id.0).await?
        {
            return Err(service_not_found(id.0));
        }
        Ok(Json(rows.into_iter().map(Domain::from).collect()))
    }

    /// Add a hostname to a service. The response carries the TXT challenge that proves
    /// ownership.
    #[oai(
        path = "/v1/services/:id/domains",
        method = "post",
        operation_id = "create_domain"
    )]
    async fn create(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<CreateDomain>,
    ) -> ApiResult<CreatedDomain> {
        let body = body.0;
        let hostname = Hostname::parse(&body.name).map_err(ApiError::field("name"))?;
        let target = |field: &'static str, value: Option<String>| {
            value
                .as_deref()
                .map(ProbeTarget::parse)
                .transpose()
                .map(|t| t.map(|t| t.to_string()))
                .map_err(ApiError::field(field))
        };
        let primary_target = target("primary_target", body.primary_target)?;
        let backup_target = target("backup_target", body.backup_target)?;
        let probe_path = ProbePath::parse(body.probe_path.as_deref().unwrap_or(ProbePath::DEFAULT))
            .map_err(ApiError::field("probe_path"))?;
        let scheme = ProbeScheme::parse(body.probe_scheme.as_deref().unwrap_or("https"))
            .map_err(ApiError::field("probe_scheme"))?;
        let statuses = ExpectedStatuses::parse(
            body.expected_statuses
                .as_deref()
                .unwrap_or(ExpectedStatuses::DEFAULT),
        )
        .map_err(ApiError::field("expected_statuses"))?;
        let timeout_ms = body.probe_timeout_ms.unwrap_or(5000);
        if !(100..=60_000).contains(&timeout_ms) {
            return Err(ApiError::invalid(
                "probe_timeout_ms",
                format!("probe_timeout_ms must be between 100 and 60000 (got {timeout_ms})"),
            ));
        }
        let zone = match body.dns_zone.as_deref() {
            Some(z) => Hostname::parse(z)
                .map_err(ApiError::field("dns_zone"))?
                .to_string(),
            None => default_zone(&hostname),
        };
        if hostname.as_str() != zone && !hostname.as_str().ends_with(&format!(".{zone}")) {
            return Err(ApiError::invalid(
                "dns_zone",
                format!("dns_zone {zone} does not contain {hostname}"),
            ));
        }
        let token = verification_token();
        let new = domains::NewDomain {
            hostname: hostname.as_str(),
            primary_target,
            backup_target,
            probe_path: probe_path.as_str(),
            probe_scheme: scheme.as_str(),
            expected_statuses: statuses.to_string(),
            probe_timeout_ms: timeout_ms,
            shard: shard_of(&zone) as i16,
            dns_zone: Some(zone),
            verification_token: &token,
            steering_enabled: ctx.dev,
            verified: ctx.dev,
        };
        let row = domains::create(&ctx.pool, tenant.customer_id, id.0, &new)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        tracing::info!(service.id = id.0, domain.id = row.id, domain.name = %row.hostname, "domain added");
        if ctx.dev {
            tracing::warn!(domain.name = %row.hostname, "DEV MODE: domain auto-verified without a TXT challenge; Tranche will steer its DNS");
        }
        let location = format!("/v1/services/{}/domains/{}", id.0, row.id);
        Ok(CreatedDomain::Created(Json(row.into()), location))
    }

    /// Remove a hostname from a service. It stops being probed and steered; its storm history
    /// is kept.
    #[oai(
        path = "/v1/services/:id/domains/:domain_id",
        method = "delete",
        operation_id = "delete_domain"
    )]
    async fn delete(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
    ) -> ApiResult<Deleted> {
        if domains::soft_delete(&ctx.pool, tenant.customer_id, id.0, domain_id.0).await? {
            Ok(Deleted::NoContent)
        } else {
            Err(ApiError::not_found(format!(
                "domain {} of service {} not found",
                domain_id.0, id.0
            )))
        }
    }

    /// Check the domain's TXT challenge now (`_tranche-challenge.<hostname>` holding the
    /// token): verifies it when the record is there, and says why not otherwise. Also the way
    /// to retry a `failed` domain.
    #[oai(
        path = "/v1/services/:id/domains/:domain_id/verify",
        method = "post",
        operation_id = "verify_domain"
    )]
    async fn verify(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
    ) -> ApiResult<Json<Domain>> {
        let not_found = || {
            ApiError::not_found(format!(
                "domain {} of service {} not found",
                domain_id.0, id.0
            ))
        };
        domains::get(&ctx.pool, tenant.customer_id, id.0, domain_id.0)
            .await?
            .ok_or_else(not_found)?;
        let check = verification::check_for(&ctx.pool, domain_id.0)
            .await?
            .ok_or_else(not_found)?;
        // The lookup happens outside any transaction; the result is written only if the
        // domain is still in the state it was checked for.
        let lookup = ctx.verifier.txt(&challenge_name(&check.hostname)).await;
        let now = Utc::now();
        let outcome = evaluate(&check, &lookup, now, &ctx.verify_policy);
        if verification::record(&ctx.pool, &check, &outcome, now).await? && outcome.newly_verified {
            tracing::info!(domain.id = check.domain_id, domain.name = %check.hostname, "domain verified");
        }
        let row = domains::get(&ctx.pool, tenant.customer_id, id.0, domain_id.0)
            .await?
            .ok_or_else(not_found)?;
        Ok(Json(row.into()))
    }
}

/// 128 random bits, hex: the value of the TXT challenge record.
fn verification_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("tranche-verify={}", hex::encode(bytes))
}
