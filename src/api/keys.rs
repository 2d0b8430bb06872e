//! `/v1/api-keys`: a customer's API keys. Managing keys needs the `admin` scope; a new key's
//! scopes must be among the caller's.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::admin::CreatedApiKey;
use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::{ApiContext, ApiTags};
use crate::postgres::api_keys::{self, JOB_STATUS, KNOWN_SCOPES, KeyListRow};

/// Most applications one `job-status` key may name.
const MAX_APPLICATIONS: usize = 100;

/// Whether `name` is a valid application name: 1–100 of `A-Z a-z 0-9 . _ -` (the
/// `job_status_application_check` constraint).
pub fn valid_application(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The `applications` of a new key: required with `job-status`, refused without it.
fn applications(job_status: bool, requested: Option<Vec<String>>) -> ApiResult<Vec<String>> {
    let Some(requested) = requested else {
        return if job_status {
            Err(ApiError::invalid(
                "applications",
                "a job-status key needs applications: the applications it reports for",
            ))
        } else {
            Ok(Vec::new())
        };
    };
    if !job_status {
        return Err(ApiError::invalid(
            "applications",
            "applications apply to the job-status scope only",
        ));
    }
    if requested.is_empty() || requested.len() > MAX_APPLICATIONS {
        return Err(ApiError::invalid(
            "applications",
            format!("applications must name 1 to {MAX_APPLICATIONS} applications"),
        ));
    }
    for (i, app) in requested.iter().enumerate() {
        let field = format!("applications[{i}]");
        if !valid_application(app) {
            return Err(ApiError::invalid(
                &field,
                format!("{field} must be 1-100 characters of A-Z, a-z, 0-9, '.', '_' or '-'"),
            ));
        }
        if requested[..i].contains(app) {
            return Err(ApiError::invalid(
                &field,
                format!("{field} repeats {app:?}"),
            ));
        }
    }
    Ok(requested)
}

/// An API key as listed (the secret is never shown again).
#[derive(Debug, Clone, Object)]
pub struct ApiKeyInfo {
    pub id: i64,
    pub name: String,
    /// The visible part of the key (`tr_…`), to recognise it.
    pub prefix: String,
    /// `read`, `write`, `admin`, `job-status`.
    pub scopes: Vec<String>,
    /// The applications a `job-status` key reports for (empty for other keys).
    pub applications: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Last authenticated use (refreshed at most once a minute).
    #[oai(nullable)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set once revoked: the key answers 401 from then on.
    #[oai(nullable)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<KeyListRow> for ApiKeyInfo {
    fn from(k: KeyListRow) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            applications: k.applications,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What the key is for (1–200 characters).
    pub name: String,
    /// Some of `read`, `write`, `admin`, `job-status`, each at most once (default
    /// `["read"]`). `read`, `write` and `admin` must be held by the calling key; any key
    /// managing keys (`admin`) may grant `job-status`, which only reports job status.
    #[oai(nullable)]
    pub scopes: Option<Vec<String>>,
    /// With `job-status` (and only then): the 1–100 applications the key may report job
    /// status for, each 1–100 of `A-Z a-z 0-9 . _ -`.
    #[oai(nullable)]
    pub applications: Option<Vec<String>>,
}

#[derive(ApiResponse)]
pub enum CreatedKey {
    /// The key was created; its secret is in the body and nowhere else.
    #[oai(status = 201)]
    Created(Json<CreatedApiKey>),
}

#[derive(ApiResponse)]
pub enum Revoked {
    /// The key is revoked (or already was).
    #[oai(status = 200)]
    Ok(Json<ApiKeyInfo>),
}

pub struct KeysApi;

#[OpenApi(tag = "ApiTags::ApiKeys")]
impl KeysApi {
    /// Your API keys, newest first, revoked ones included.
    #[oai(path = "/v1/api-keys", method = "get", operation_id = "list_api_keys")]
    async fn list(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Vec<ApiKeyInfo>>> {
        let rows = api_keys::list(&ctx.pool, tenant.customer_id).await?;
        Ok(Json(rows.into_iter().map(ApiKeyInfo::from).collect()))
    }

    /// Create an API key. The secret (≥ 128 random bits; 256 in fact) is shown in this response
    /// only; Tranche stores a hash.
    #[oai(
        path = "/v1/api-keys",
        method = "post",
        operation_id = "create_api_key"
    )]
    async fn create(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<CreateApiKey>,
    ) -> ApiResult<CreatedKey> {
        let body = body.0;
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid(
                "name",
                "name must be 1 to 200 characters",
            ));
        }
        let requested = body.scopes.unwrap_or_else(|| vec!["read".into()]);
        if requested.is_empty() {
            return Err(ApiError::invalid(
                "scopes",
                "scopes must name at least one scope",
            ));
        }
        let mut scopes: Vec<&str> = Vec::with_capacity(requested.len());
        for (i, s) in requested.iter().enumerate() {
            let field = format!("scopes[{i}]");
            let Some(known) = KNOWN_SCOPES.iter().find(|k| **k == s.as_str()) else {
                return Err(ApiError::invalid(
                    &field,
                    format!("{field} must be read, write, admin or job-status (got {s:?})"),
                ));
            };
            if scopes.contains(known) {
                return Err(ApiError::invalid(&field, format!("{field} repeats {s:?}")));
            }
            if *known != JOB_STATUS && !tenant.has(known) {
                return Err(ApiError::forbidden(
                    format!("a key cannot grant the `{s}` scope it does not hold"),
                    Some(&field),
                ));
            }
            scopes.push(known);
        }
        let applications = applications(scopes.contains(&JOB_STATUS), body.applications)?;
        let (key, generated) =
            api_keys::create(&ctx.pool, tenant.customer_id, name, &scopes, &applications).await?;
        tracing::info!(customer.id = tenant.customer_id, api_key.prefix = %key.prefix, "API key created");
        Ok(CreatedKey::Created(Json(CreatedApiKey::of(key, generated))))
    }

    /// Revoke an API key: from the next request on it answers 401 — at once on the node that
    /// revoked it, and within PostgreSQL's notification latency (milliseconds) on the others.
    #[oai(
        path = "/v1/api-keys/:id",
        method = "delete",
        operation_id = "revoke_api_key"
    )]
    async fn revoke(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Revoked> {
        let row = api_keys::revoke(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("API key {} not found", id.0)))?;
        ctx.key_lookups.forget_key(&row.prefix);
        tracing::info!(customer.id = tenant.customer_id, api_key.prefix = %row.prefix, "API key revoked");
        Ok(Revoked::Ok(Json(row.into())))
    }
}
