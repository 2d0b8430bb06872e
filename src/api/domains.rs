//! `/v1/services/{id}/domains`: the hostnames of a service.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use rand::RngCore;
use serde::Deserialize;
use tranche_core::domain::{
    ExpectedStatuses, Hostname, ProbePath, ProbeScheme, ProbeTarget, TargetHost, default_zone,
    shard_of,
};

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::{Deleted, service_not_found};
use super::{ApiContext, ApiTags};
use crate::postgres::domains;
use crate::postgres::verification;
use tranche_core::verify::{challenge_name, evaluate};

/// A customer hostname, probed through each of the service's CDNs.
#[derive(Debug, Clone, Object)]
pub struct Domain {
    pub id: i64,
    pub service_id: i64,
    /// The hostname, canonical: lowercase, no trailing dot.
    pub name: String,
    /// Where this hostname is reached through the primary CDN (edge hostname or IP); null until
    /// configured.
    #[oai(nullable)]
    pub primary_target: Option<String>,
    /// Where this hostname is reached through the backup CDN (edge hostname or IP).
    #[oai(nullable)]
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
    #[oai(nullable)]
    pub verified_at: Option<DateTime<Utc>>,
    /// When the challenge was last looked up.
    #[oai(nullable)]
    pub last_checked_at: Option<DateTime<Utc>>,
    /// Why the last lookup did not verify (null once verified and found).
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// Lookups so far without success.
    pub attempts: i32,
    /// A verified domain whose challenge record has since disappeared: it stays verified and
    /// steered, but publish the record again.
    #[oai(nullable)]
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
    #[oai(nullable)]
    pub primary_target: Option<String>,
    /// Edge hostname or IP that reaches this hostname through the backup CDN.
    #[oai(nullable)]
    pub backup_target: Option<String>,
    /// Path to probe (default `/`).
    #[oai(nullable)]
    pub probe_path: Option<String>,
    /// `https` (default) or `http`.
    #[oai(nullable)]
    pub probe_scheme: Option<String>,
    /// Statuses that count as up: codes and ranges, e.g. `200-299,301` (default `200-399`).
    #[oai(nullable)]
    pub expected_statuses: Option<String>,
    /// Probe timeout in milliseconds, 100–60000 (default 5000).
    #[oai(nullable)]
    pub probe_timeout_ms: Option<i32>,
    /// DNS zone the hostname is steered in (default: its last two labels).
    #[oai(nullable)]
    pub dns_zone: Option<String>,
}

/// Body of `PATCH /v1/services/{id}/domains/{domain_id}`: any subset of the probe settings.
/// The hostname and its zone are the domain's identity (its ownership challenge and DNS
/// records): to change them, add a new domain.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateDomain {
    #[oai(nullable)]
    pub primary_target: Option<String>,
    #[oai(nullable)]
    pub backup_target: Option<String>,
    #[oai(nullable)]
    pub probe_path: Option<String>,
    /// `https` or `http`.
    #[oai(nullable)]
    pub probe_scheme: Option<String>,
    /// Statuses that count as up: codes and ranges, e.g. `200-299,301`.
    #[oai(nullable)]
    pub expected_statuses: Option<String>,
    /// Probe timeout in milliseconds, 100–60000.
    #[oai(nullable)]
    pub probe_timeout_ms: Option<i32>,
}

/// The probe settings of a create or update request, validated (each `None` when absent).
struct ProbeSettings {
    primary_target: Option<String>,
    backup_target: Option<String>,
    probe_path: Option<ProbePath>,
    probe_scheme: Option<ProbeScheme>,
    expected_statuses: Option<ExpectedStatuses>,
    probe_timeout_ms: Option<i32>,
}

impl ProbeSettings {
    /// Validates each present field, naming it when it is wrong. Unless the operator allows
    /// private targets, a target must be a public address or a name that is not `localhost`
    /// (names are checked again, resolved, at every probe).
    #[allow(clippy::too_many_arguments)] // one argument per request field
    fn parse(
        allow_private: bool,
        primary_target: Option<String>,
        backup_target: Option<String>,
        probe_path: Option<String>,
        probe_scheme: Option<String>,
        expected_statuses: Option<String>,
        probe_timeout_ms: Option<i32>,
    ) -> ApiResult<Self> {
        let target = |field: &'static str, value: Option<String>| {
            let parsed = value
                .as_deref()
                .map(ProbeTarget::parse)
                .transpose()
                .map_err(ApiError::field(field))?;
            if let Some(t) = &parsed
                && !allow_private
            {
                let private = match &t.host {
                    TargetHost::Ip(ip) => !tranche_core::address_policy::is_public(*ip),
                    TargetHost::Name(name) => {
                        tranche_core::address_policy::is_local_name(name.as_str())
                    }
                };
                if private {
                    return Err(ApiError::invalid(
                        field,
                        format!(
                            "{field} points at a private or loopback address, which probes may not reach (the operator can allow it: probe_allow_private)"
                        ),
                    ));
                }
            }
            Ok(parsed.map(|t| t.to_string()))
        };
        if let Some(ms) = probe_timeout_ms
            && !(100..=60_000).contains(&ms)
        {
            return Err(ApiError::invalid(
                "probe_timeout_ms",
                format!("probe_timeout_ms must be between 100 and 60000 (got {ms})"),
            ));
        }
        Ok(Self {
            primary_target: target("primary_target", primary_target)?,
            backup_target: target("backup_target", backup_target)?,
            probe_path: probe_path
                .as_deref()
                .map(ProbePath::parse)
                .transpose()
                .map_err(ApiError::field("probe_path"))?,
            probe_scheme: probe_scheme
                .as_deref()
                .map(ProbeScheme::parse)
                .transpose()
                .map_err(ApiError::field("probe_scheme"))?,
            expected_statuses: expected_statuses
                .as_deref()
                .map(ExpectedStatuses::parse)
                .transpose()
                .map_err(ApiError::field("expected_statuses"))?,
            probe_timeout_ms,
        })
    }
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
            && !crate::postgres::services::exists(&ctx.pool, tenant.customer_id, id.0).await?
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
        let settings = ProbeSettings::parse(
            ctx.probe_allow_private,
            body.primary_target,
            body.backup_target,
            body.probe_path,
            body.probe_scheme,
            body.expected_statuses,
            body.probe_timeout_ms,
        )?;
        let probe_path = settings
            .probe_path
            .as_ref()
            .map_or(ProbePath::DEFAULT, ProbePath::as_str);
        let scheme = settings.probe_scheme.unwrap_or(ProbeScheme::Https);
        let statuses = settings.expected_statuses.unwrap_or_default();
        let timeout_ms = settings.probe_timeout_ms.unwrap_or(5000);
        let (primary_target, backup_target) = (settings.primary_target, settings.backup_target);
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
            probe_path,
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

    /// Change a domain's probe settings (any subset). The running engine picks them up at
    /// once; the window's samples so far are kept.
    #[oai(
        path = "/v1/services/:id/domains/:domain_id",
        method = "patch",
        operation_id = "update_domain"
    )]
    async fn update(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        domain_id: Path<i64>,
        body: JsonBody<UpdateDomain>,
    ) -> ApiResult<Json<Domain>> {
        let b = body.0;
        let s = ProbeSettings::parse(
            ctx.probe_allow_private,
            b.primary_target,
            b.backup_target,
            b.probe_path,
            b.probe_scheme,
            b.expected_statuses,
            b.probe_timeout_ms,
        )?;
        let patch = domains::DomainPatch {
            primary_target: s.primary_target.as_deref(),
            backup_target: s.backup_target.as_deref(),
            probe_path: s.probe_path.as_ref().map(ProbePath::as_str),
            probe_scheme: s.probe_scheme.map(ProbeScheme::as_str),
            expected_statuses: s.expected_statuses.as_ref().map(ToString::to_string),
            probe_timeout_ms: s.probe_timeout_ms,
        };
        if patch.is_empty() {
            return Err(ApiError::empty_patch(
                &[
                    "primary_target",
                    "backup_target",
                    "probe_path",
                    "probe_scheme",
                    "expected_statuses",
                    "probe_timeout_ms",
                ],
                None,
            ));
        }
        let row = domains::update(&ctx.pool, tenant.customer_id, id.0, domain_id.0, &patch)
            .await?
            .ok_or_else(|| domain_not_found(id.0, domain_id.0))?;
        tracing::info!(service.id = id.0, domain.id = row.id, "domain updated");
        Ok(Json(row.into()))
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
            Err(domain_not_found(id.0, domain_id.0))
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
        let not_found = || domain_not_found(id.0, domain_id.0);
        domains::get(&ctx.pool, tenant.customer_id, id.0, domain_id.0)
            .await?
            .ok_or_else(not_found)?;
        let check = verification::check_for(&ctx.pool, tenant.customer_id, domain_id.0)
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

/// 404 for a domain that is not a live domain of the caller's live service.
pub fn domain_not_found(service_id: i64, domain_id: i64) -> ApiError {
    ApiError::not_found(format!(
        "domain {domain_id} of service {service_id} not found"
    ))
}

/// 128 random bits, hex: the value of the TXT challenge record.
fn verification_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("tranche-verify={}", hex::encode(bytes))
}
