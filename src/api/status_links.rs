//! Read-only links to the live status page: `POST /v1/status-links` gives a URL to share
//! (per service, or for every service of the customer); revoking one stops it at once.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use uuid::Uuid;

use super::auth::{Scope, Scoped, needs};
use super::dns::actor;
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::service_not_found;
use super::{ApiContext, ApiTags};
use crate::postgres::status::{self, LinkRow, NewLink};

/// A read-only status-page link (the token itself is shown only when created).
#[derive(Debug, Clone, Object)]
pub struct StatusLink {
    pub id: Uuid,
    /// The service it shows (null: every service of the customer, and this period's invoice).
    #[oai(nullable)]
    pub service_id: Option<i64>,
    pub label: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<LinkRow> for StatusLink {
    fn from(r: LinkRow) -> Self {
        Self {
            id: r.id,
            service_id: r.service_id,
            label: r.label,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// A link just created, with the path to share (shown once).
#[derive(Debug, Clone, Object)]
pub struct CreatedStatusLink {
    #[oai(flatten)]
    pub link: StatusLink,
    /// `/status/<token>`: anyone with it sees the page, read-only, until it is revoked or expires.
    pub path: String,
}

/// Body of `POST /v1/status-links`.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewStatusLink {
    /// The service to show (default: every service, and this period's invoice).
    #[oai(nullable)]
    pub service_id: Option<i64>,
    /// A name for the link (e.g. who it was given to), 1–200 characters.
    pub label: String,
    /// Seconds until it expires (60 s–1 year; default: never).
    #[oai(nullable)]
    pub expires_in_seconds: Option<i64>,
}

#[derive(ApiResponse)]
pub enum CreatedLink {
    #[oai(status = 201)]
    Created(Json<CreatedStatusLink>),
}

pub struct StatusLinksApi;

#[OpenApi(tag = "ApiTags::Services")]
impl StatusLinksApi {
    /// Creates a read-only link to the live status page (`admin` scope: whoever has the link
    /// sees the page).
    #[oai(
        path = "/v1/status-links",
        method = "post",
        operation_id = "create_status_link"
    )]
    async fn create(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<NewStatusLink>,
    ) -> ApiResult<CreatedLink> {
        let body = body.0;
        let label = body.label.trim();
        if label.is_empty() || label.chars().count() > 200 {
            return Err(ApiError::invalid(
                "label",
                "label must be 1 to 200 characters",
            ));
        }
        let expires_at = match body.expires_in_seconds {
            Some(s) if !(60..=366 * 86_400).contains(&s) => {
                return Err(ApiError::invalid(
                    "expires_in_seconds",
                    "expires_in_seconds must be between 60 and 31622400",
                ));
            }
            Some(s) => Some(Utc::now() + Duration::seconds(s)),
            None => None,
        };
        let (row, token) = status::create(
            &ctx.pool,
            tenant.customer_id,
            NewLink {
                service_id: body.service_id,
                label,
                session: false,
                created_by: &actor(&tenant),
                expires_at,
            },
        )
        .await?
        .ok_or_else(|| match body.service_id {
            Some(id) => service_not_found(id),
            None => ApiError::internal(),
        })?;
        Ok(CreatedLink::Created(Json(CreatedStatusLink {
            link: row.into(),
            path: format!("/status/{token}"),
        })))
    }

    /// Your status-page links (without their tokens), newest first.
    #[oai(
        path = "/v1/status-links",
        method = "get",
        operation_id = "list_status_links"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Vec<StatusLink>>> {
        let rows = status::list(&ctx.pool, tenant.customer_id).await?;
        Ok(Json(rows.into_iter().map(StatusLink::from).collect()))
    }

    /// Revokes a link: its page stops updating and answers 404 from now on.
    #[oai(
        path = "/v1/status-links/:id",
        method = "delete",
        operation_id = "revoke_status_link"
    )]
    async fn revoke(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<Uuid>,
    ) -> ApiResult<Json<StatusLink>> {
        let row = status::revoke(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("status link {} not found", id.0)))?;
        Ok(Json(row.into()))
    }
}
