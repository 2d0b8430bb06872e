//! `/v1/admin/*`: operator endpoints, authenticated by `TRANCHE_ADMIN_TOKEN`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::auth::Admin;
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::Deleted;
use super::{ApiContext, ApiTags};
use crate::postgres::customers::{self, CustomerRow};

impl From<CustomerRow> for Customer {
    fn from(c: CustomerRow) -> Self {
        Self {
            id: c.id,
            name: c.name,
            status: c.status,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// Body of `PATCH /v1/admin/customers/{id}`: any non-empty subset.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomer {
    #[oai(nullable)]
    pub name: Option<String>,
    /// `active` or `suspended`. A suspended customer's keys answer 401 from the next request
    /// (on other nodes within milliseconds); its engine work (probing, DNS, billing) continues.
    #[oai(nullable)]
    pub status: Option<String>,
}

fn customer_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("customer {id} not found"))
}

fn valid_name(field: &str, name: &str) -> ApiResult<()> {
    if name.is_empty() || name.chars().count() > 200 {
        Err(ApiError::invalid(
            field,
            format!("{field} must be 1 to 200 characters"),
        ))
    } else {
        Ok(())
    }
}

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
    /// The applications a `job-status` key reports for (empty for other keys).
    pub applications: Vec<String>,
    /// The whole key, for `Authorization: Bearer …`. Store it now: Tranche keeps only a hash.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

impl CreatedApiKey {
    /// A stored key with the secret generated for it (shown this once).
    pub fn of(
        key: crate::postgres::api_keys::KeyRow,
        generated: crate::postgres::api_keys::GeneratedKey,
    ) -> Self {
        Self {
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            scopes: key.scopes,
            applications: key.applications,
            secret: generated.secret,
            created_at: key.created_at,
        }
    }
}

/// Body of `POST /v1/admin/customers`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    /// The customer's name (1–200 characters).
    pub name: String,
    /// Name of the first API key (default `default`).
    #[oai(nullable)]
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
        valid_name("name", name)?;
        let key_name = body.key_name.as_deref().map(str::trim).unwrap_or("default");
        valid_name("key_name", key_name)?;
        let (customer, key, generated) =
            customers::create_with_key(&ctx.pool, name, key_name).await?;
        tracing::info!(customer.id = customer.id, api_key.prefix = %key.prefix, "customer provisioned");
        Ok(CreatedCustomer::Created(Json(ProvisionedCustomer {
            customer: customer.into(),
            api_key: CreatedApiKey::of(key, generated),
        })))
    }

    /// Customers, by id (page with `after`).
    #[oai(
        path = "/v1/admin/customers",
        method = "get",
        operation_id = "list_customers"
    )]
    async fn list_customers(
        &self,
        _admin: Admin,
        ctx: Data<&Arc<ApiContext>>,
        /// Customers with an id greater than this (the last id of the previous page).
        after: Query<Option<i64>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<Customer>>> {
        let limit = super::page_limit(limit.0)?;
        let rows = customers::list(&ctx.pool, after.0.unwrap_or(0), limit).await?;
        Ok(Json(rows.into_iter().map(Customer::from).collect()))
    }

    /// One customer.
    #[oai(
        path = "/v1/admin/customers/:id",
        method = "get",
        operation_id = "get_customer"
    )]
    async fn get_customer(
        &self,
        _admin: Admin,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<Customer>> {
        customers::get(&ctx.pool, id.0)
            .await?
            .map(|c| Json(c.into()))
            .ok_or_else(|| customer_not_found(id.0))
    }

    /// Rename, suspend or reactivate a customer.
    #[oai(
        path = "/v1/admin/customers/:id",
        method = "patch",
        operation_id = "update_customer"
    )]
    async fn update_customer(
        &self,
        _admin: Admin,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<UpdateCustomer>,
    ) -> ApiResult<Json<Customer>> {
        let body = body.0;
        let name = body.name.as_deref().map(str::trim);
        if let Some(name) = name {
            valid_name("name", name)?;
        }
        let status = body.status.as_deref();
        if let Some(s) = status
            && s != "active"
            && s != "suspended"
        {
            return Err(ApiError::invalid(
                "status",
                "status must be active or suspended",
            ));
        }
        if name.is_none() && status.is_none() {
            return Err(ApiError::invalid(
                "name",
                "send name and/or status to change",
            ));
        }
        let row = customers::update(&ctx.pool, id.0, name, status)
            .await?
            .ok_or_else(|| customer_not_found(id.0))?;
        ctx.key_lookups.forget_customer(row.id);
        tracing::info!(customer.id = row.id, customer.status = %row.status, "customer updated");
        Ok(Json(row.into()))
    }

    /// Delete a customer and everything it owns. Refused (409) once it has invoices: billing
    /// records are kept; suspend the customer instead.
    #[oai(
        path = "/v1/admin/customers/:id",
        method = "delete",
        operation_id = "delete_customer"
    )]
    async fn delete_customer(
        &self,
        _admin: Admin,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Deleted> {
        match customers::delete(&ctx.pool, id.0).await? {
            customers::Deleted::Deleted => {
                ctx.key_lookups.forget_customer(id.0);
                tracing::info!(customer.id = id.0, "customer deleted");
                Ok(Deleted::NoContent)
            }
            customers::Deleted::NotFound => Err(customer_not_found(id.0)),
            customers::Deleted::HasInvoices => Err(ApiError::conflict(
                format!(
                    "customer {} has invoices, which are kept; suspend it instead",
                    id.0
                ),
                None,
            )),
        }
    }
}
