//! `/v1/services`: create, list, read (with domains and policies), update, soft-delete.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tranche_core::domain::{CdnName, ServiceName};

use super::auth::{Scope, Scoped, needs};
use super::domains::Domain;
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::policies::StormPolicy;
use super::resource::{Deleted, service_not_found};
use super::{ApiContext, ApiTags};
use crate::postgres::services;

/// A service: a unit of failover between a primary and a backup CDN.
#[derive(Debug, Clone, Object)]
pub struct Service {
    /// Identifier, unique across customers.
    pub id: i64,
    /// Owning customer.
    pub customer_id: i64,
    /// Display name, unique among the customer's live services.
    pub name: String,
    /// CDN that normally serves the traffic (lowercase).
    pub primary_cdn: String,
    /// CDN traffic moves to during a storm (lowercase).
    pub backup_cdn: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<services::ServiceRow> for Service {
    fn from(r: services::ServiceRow) -> Self {
        Self {
            id: r.id,
            customer_id: r.customer_id,
            name: r.name,
            primary_cdn: r.primary_cdn,
            backup_cdn: r.backup_cdn,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A service with its domains and storm policies.
#[derive(Debug, Clone, Object)]
pub struct ServiceDetail {
    #[oai(flatten)]
    pub service: Service,
    /// Live domains, oldest first.
    pub domains: Vec<Domain>,
    /// Storm policies, oldest first.
    pub storm_policies: Vec<StormPolicy>,
}

/// Body of `POST /v1/services`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    /// Display name (1–200 characters, unique among your live services).
    pub name: String,
    /// Primary CDN: one Tranche knows (`akamai`, `azure`, `bunny`, `cdn77`, `cloudflare`,
    /// `cloudfront`, `edgio`, `fastly`, `gcore`, `google`, `imperva`, `keycdn`, `limelight`,
    /// `medianova`, `stackpath`, `sucuri`) or one of your own written `custom-<name>`.
    pub primary_cdn: String,
    /// Backup CDN, the same way (e.g. `fastly`); must differ from the primary.
    pub backup_cdn: String,
}

/// Body of `PATCH /v1/services/{id}`: any non-empty subset of the fields.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateService {
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub primary_cdn: Option<String>,
    #[oai(nullable)]
    pub backup_cdn: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreatedService {
    /// The service was created.
    #[oai(status = 201)]
    Created(Json<Service>, #[oai(header = "Location")] String),
}

pub struct ServicesApi;

#[OpenApi(tag = "ApiTags::Services")]
impl ServicesApi {
    /// List your live services, oldest first.
    #[oai(path = "/v1/services", method = "get", operation_id = "list_services")]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Vec<Service>>> {
        let rows = services::list(&ctx.pool, tenant.customer_id).await?;
        Ok(Json(rows.into_iter().map(Service::from).collect()))
    }

    /// Create a service.
    #[oai(
        path = "/v1/services",
        method = "post",
        operation_id = "create_service"
    )]
    async fn create(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<CreateService>,
    ) -> ApiResult<CreatedService> {
        let body = body.0;
        let name = ServiceName::parse(&body.name).map_err(ApiError::field("name"))?;
        let primary = CdnName::parse(&body.primary_cdn).map_err(ApiError::field("primary_cdn"))?;
        let backup = CdnName::parse(&body.backup_cdn).map_err(ApiError::field("backup_cdn"))?;
        if primary == backup {
            return Err(ApiError::invalid(
                "backup_cdn",
                "backup_cdn must differ from primary_cdn",
            ));
        }
        let row = services::create(
            &ctx.pool,
            tenant.customer_id,
            name.as_str(),
            primary.as_str(),
            backup.as_str(),
        )
        .await?;
        tracing::info!(
            customer.id = tenant.customer_id,
            service.id = row.id,
            "service created"
        );
        let location = format!("/v1/services/{}", row.id);
        Ok(CreatedService::Created(Json(row.into()), location))
    }

    /// Fetch a service with its domains and storm policies.
    #[oai(
        path = "/v1/services/:id",
        method = "get",
        operation_id = "get_service"
    )]
    async fn get(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<ServiceDetail>> {
        let detail = ctx
            .service_reads
            .get_detail(tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        let detail = std::sync::Arc::unwrap_or_clone(detail);
        Ok(Json(ServiceDetail {
            service: detail.service.into(),
            domains: detail.domains.0.into_iter().map(Domain::from).collect(),
            storm_policies: detail
                .policies
                .0
                .into_iter()
                .map(StormPolicy::from)
                .collect(),
        }))
    }

    /// Update any subset of `name`, `primary_cdn`, `backup_cdn`.
    #[oai(
        path = "/v1/services/:id",
        method = "patch",
        operation_id = "update_service"
    )]
    async fn update(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<UpdateService>,
    ) -> ApiResult<Json<Service>> {
        let body = body.0;
        if body.name.is_none() && body.primary_cdn.is_none() && body.backup_cdn.is_none() {
            return Err(ApiError::empty_patch(
                &["name", "primary_cdn", "backup_cdn"],
                None,
            ));
        }
        let name = body
            .name
            .as_deref()
            .map(ServiceName::parse)
            .transpose()
            .map_err(ApiError::field("name"))?;
        let primary = body
            .primary_cdn
            .as_deref()
            .map(CdnName::parse)
            .transpose()
            .map_err(ApiError::field("primary_cdn"))?;
        let backup = body
            .backup_cdn
            .as_deref()
            .map(CdnName::parse)
            .transpose()
            .map_err(ApiError::field("backup_cdn"))?;
        let patch = services::ServicePatch {
            name: name.as_ref().map(ServiceName::as_str),
            primary_cdn: primary.as_ref().map(CdnName::as_str),
            backup_cdn: backup.as_ref().map(CdnName::as_str),
        };
        let row = services::update(&ctx.pool, tenant.customer_id, id.0, &patch)
            .await
            .map_err(|e| distinct_cdn_field(e, &patch))?
            .ok_or_else(|| service_not_found(id.0))?;
        Ok(Json(row.into()))
    }

    /// Soft-delete a service: it disappears from reads and its domains stop being probed and
    /// steered; its storm and billing history is kept.
    #[oai(
        path = "/v1/services/:id",
        method = "delete",
        operation_id = "delete_service"
    )]
    async fn delete(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Deleted> {
        if services::soft_delete(&ctx.pool, tenant.customer_id, id.0).await? {
            tracing::info!(
                customer.id = tenant.customer_id,
                service.id = id.0,
                "service deleted"
            );
            Ok(Deleted::NoContent)
        } else {
            Err(service_not_found(id.0))
        }
    }
}

/// A PATCH that makes primary and backup equal is blamed on the field it sent.
fn distinct_cdn_field(err: sqlx::Error, patch: &services::ServicePatch<'_>) -> ApiError {
    let err = ApiError::from(err);
    if patch.backup_cdn.is_none() {
        err.blame(
            "backup_cdn",
            "primary_cdn",
            "primary_cdn must differ from backup_cdn",
        )
    } else {
        err
    }
}
