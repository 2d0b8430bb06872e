//! `/v1/admin/*`: operator endpoints, authenticated by `TRANCHE_ADMIN_TOKEN`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::auth::Admin;
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::{ApiContext, ApiTags};
use crate::store::customers;

/// A customer (tenant).
#[derive(Debug, Clone, Object)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An API key as created: the only time its secret is ever shown.
#[derive(Debug, Clone, Object)]
pub struct CreatedApiKey {
    pub id: i64,
    pub name: String,
    /// The visible part of the key, shown in listings.
    pub prefix: String,
    pub scopes: Vec<String>,
    /// The whole key, for `Authorization: Bearer …`. Store it now: Tranche keeps only a hash.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/admin/customers`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    /// The customer's name (1–200 characters).
    pub name: String,
    /// Name of the first API key (default `default`).
    pub key_name: Option<String>,
}

/// A new customer and its first key.
#[derive(Debug, Clone, Object)]
pub struct ProvisionedCustomer {
    pub customer: Customer,
    pub api_key: CreatedApiKey,
}

#[derive(ApiResponse)]
pub enum CreatedCustomer {
    /// The customer and its first API key were created together.
    #[oai(status = 201)]
    Created(Json<ProvisionedCustomer>),
}

pub struct AdminApi;

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Create a customer and its first API key in one transaction. The key's secret is in the
    /// response and nowhere else.
    #[oai(
        path = "/v1/admin/customers",
        method = "post",
        operation_id = "create_customer"
    )]
    async fn create_customer(
        &self,
        _admin: Admin,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<CreateCustomer>,
    ) -> ApiResult<CreatedCustomer> {
        let body = body.0;
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid(
                "name",
                "name must be 1 to 200 characters",
            ));
        }
        let key_name = body.key_name.as_deref().map(str::trim).unwrap_or("default");
        if key_name.is_empty() || key_name.chars().count() > 200 {
            return Err(ApiError::invalid(
                "key_name",
                "key_name must be 1 to 200 characters",
            ));
        }
        let (customer, key, generated) =
            customers::create_with_key(&ctx.pool, name, key_name).await?;
        tracing::info!(customer.id = customer.id, api_key.prefix = %key.prefix, "customer provisioned");
        Ok(CreatedCustomer::Created(Json(ProvisionedCustomer {
            customer: Customer {
                id: customer.id,
                name: customer.name,
                status: customer.status,
                created_at: customer.created_at,
                updated_at: customer.updated_at,
            },
            api_key: CreatedApiKey {
                id: key.id,
                name: key.name,
                prefix: key.prefix,
                scopes: key.scopes,
                secret: generated.secret,
                created_at: key.created_at,
            },
        })))
    }
}
