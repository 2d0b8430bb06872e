//! `/v1/webhooks`: where Tranche sends notifications, their delivery log, test pings and
//! replays. See [`crate::webhook`] for the body and the signature.
//!
//! Event types and their `data` are typed in [`super::events`] (the OpenAPI `Event` schema).

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use rand::RngCore;
use serde::Deserialize;
use uuid::Uuid;

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::events::EventJson;
use super::json::JsonBody;
use super::resource::Deleted;
use super::{ApiContext, ApiTags};
use crate::postgres::webhooks::{self, DeliveryRow, EndpointFields, EndpointRow};

/// Event types an endpoint can subscribe to.
pub const EVENT_TYPES: [&str; 17] = [
    "storm.started",
    "storm.ended",
    "storm.backup_unhealthy",
    "domain.health_unknown",
    "dns.change_applied",
    "dns.change_failed",
    "invoice.created",
    "domain.verified",
    "domain.verification_failed",
    "certificate.expiring",
    "vantage.disagrees",
    "drill.started",
    "drill.ended",
    "quota.threshold_crossed",
    "slo.not_started",
    "slo.late",
    "slo.breached",
];

/// A webhook endpoint (the secret is shown only when created or rotated).
#[derive(Debug, Clone, Object)]
pub struct WebhookEndpoint {
    pub id: i64,
    pub url: String,
    /// Subscribed event types; empty: all of them.
    pub event_types: Vec<String>,
    /// `json` (the signed event envelope) or `slack` (`{"text": …}` for Slack-compatible
    /// incoming webhooks).
    pub format: String,
    pub enabled: bool,
    /// The signing secret: present only in the response that created or changed it.
    #[oai(skip_serializing_if_is_none)]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    /// The endpoint as shown, with `secret` (in plain) when the request created or changed it.
    fn of(r: EndpointRow, secret: Option<String>) -> Self {
        Self {
            id: r.id,
            url: r.url,
            event_types: r.event_types,
            format: r.format,
            enabled: r.enabled,
            secret,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `POST /v1/webhooks` and `PATCH /v1/webhooks/{id}`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// `https://…` (or `http://`), at most 2,000 characters. Private and loopback destinations
    /// are refused unless the operator allows them.
    #[oai(nullable)]
    pub url: Option<String>,
    /// Signing secret, 16–200 characters (default: generated, returned once).
    #[oai(nullable)]
    pub secret: Option<String>,
    /// Event types to receive (default: all).
    #[oai(nullable)]
    pub event_types: Option<Vec<String>>,
    /// `json` (default) or `slack`.
    #[oai(nullable)]
    pub format: Option<String>,
    #[oai(nullable)]
    pub enabled: Option<bool>,
}

/// One delivery of an event to an endpoint.
#[derive(Debug, Clone, Object)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// `pending` (queued or retrying), `delivered`, or `failed` (gave up after 24 h).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    #[oai(nullable)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub last_status_code: Option<i32>,
    #[oai(nullable)]
    pub last_error: Option<String>,
    #[oai(nullable)]
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<DeliveryRow> for WebhookDelivery {
    fn from(r: DeliveryRow) -> Self {
        Self {
            id: r.id,
            event_id: r.event_id,
            event_type: r.event_type,
            occurred_at: r.occurred_at,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_attempt_at: r.last_attempt_at,
            last_status_code: r.last_status_code,
            last_error: r.last_error,
            delivered_at: r.delivered_at,
            created_at: r.created_at,
        }
    }
}

/// A queued test event.
#[derive(Debug, Clone, Object)]
pub struct QueuedPing {
    pub event_id: Uuid,
}

#[derive(ApiResponse)]
pub enum CreatedEndpoint {
    /// Created; the body holds the secret, shown this once.
    #[oai(status = 201)]
    Created(Json<WebhookEndpoint>),
}

#[derive(ApiResponse)]
pub enum Queued {
    /// Queued for delivery.
    #[oai(status = 202)]
    Accepted(Json<QueuedPing>),
}

#[derive(ApiResponse)]
pub enum Replayed {
    /// A new delivery of the same event, at the end of the endpoint's queue.
    #[oai(status = 202)]
    Accepted(Json<WebhookDelivery>),
}

fn endpoint_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("webhook endpoint {id} not found"))
}

fn check_url(url: &str, allow_private: bool) -> ApiResult<String> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| ApiError::invalid("url", format!("url is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(ApiError::invalid("url", "url must be http:// or https://"));
    }
    let Some(host) = parsed.host_str() else {
        return Err(ApiError::invalid("url", "url needs a host"));
    };
    if !allow_private {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let private = tranche_core::address_policy::is_local_name(host)
            || bare
                .parse::<IpAddr>()
                .is_ok_and(|ip| !tranche_core::address_policy::is_public(ip));
        if private {
            return Err(ApiError::invalid(
                "url",
                "url points at a private or loopback address, which is refused",
            ));
        }
    }
    let url = parsed.to_string();
    if url.len() > MAX_URL_CHARS {
        return Err(ApiError::invalid(
            "url",
            format!("url must be at most {MAX_URL_CHARS} characters"),
        ));
    }
    Ok(url)
}

/// Longest webhook URL (the database's `webhook_endpoints_url_check`).
const MAX_URL_CHARS: usize = 2000;

fn fields(input: WebhookInput, allow_private: bool) -> ApiResult<EndpointFields> {
    let url = input
        .url
        .as_deref()
        .map(|u| check_url(u, allow_private))
        .transpose()?;
    if let Some(s) = &input.secret
        && !(16..=200).contains(&s.chars().count())
    {
        return Err(ApiError::invalid(
            "secret",
            "secret must be 16 to 200 characters",
        ));
    }
    if let Some(types) = &input.event_types {
        for (i, t) in types.iter().enumerate() {
            if !EVENT_TYPES.contains(&t.as_str()) {
                let f = format!("event_types[{i}]");
                return Err(ApiError::invalid(
                    &f,
                    format!(
                        "{f}: unknown event type {t:?}; known: {}",
                        EVENT_TYPES.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(f) = &input.format
        && tranche_core::webhook::Format::parse(f).is_none()
    {
        return Err(ApiError::invalid("format", "format must be json or slack"));
    }
    Ok(EndpointFields {
        url,
        secret: input.secret,
        event_types: input.event_types,
        format: input.format,
        enabled: input.enabled,
    })
}

pub struct WebhooksApi;

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Your webhook endpoints.
    #[oai(path = "/v1/webhooks", method = "get", operation_id = "list_webhooks")]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Vec<WebhookEndpoint>>> {
        let rows = webhooks::list(&ctx.pool, tenant.customer_id).await?;
        Ok(Json(
            rows.into_iter()
                .map(|r| WebhookEndpoint::of(r, None))
                .collect(),
        ))
    }

    /// Add an endpoint. Events are signed with its secret (generated unless given; returned
    /// here only).
    #[oai(
        path = "/v1/webhooks",
        method = "post",
        operation_id = "create_webhook"
    )]
    async fn create(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<WebhookInput>,
    ) -> ApiResult<CreatedEndpoint> {
        if body.0.url.is_none() {
            return Err(ApiError::invalid("url", "url is required"));
        }
        let mut f = fields(body.0, ctx.webhook_allow_private)?;
        // Generated secrets are Standard Webhooks secrets: `whsec_` and base64 of 24 bytes.
        let secret = f.secret.take().unwrap_or_else(|| {
            use base64::Engine as _;
            let mut bytes = [0u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        });
        f.secret = Some(ctx.secrets.seal(tenant.customer_id, &secret));
        let row = webhooks::create(&ctx.pool, tenant.customer_id, &f).await?;
        Ok(CreatedEndpoint::Created(Json(WebhookEndpoint::of(
            row,
            Some(secret),
        ))))
    }

    /// One endpoint.
    #[oai(
        path = "/v1/webhooks/:id",
        method = "get",
        operation_id = "get_webhook"
    )]
    async fn get(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<WebhookEndpoint>> {
        webhooks::get(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .map(|r| Json(WebhookEndpoint::of(r, None)))
            .ok_or_else(|| endpoint_not_found(id.0))
    }

    /// Change an endpoint (URL, subscriptions, format, enabled, secret).
    #[oai(
        path = "/v1/webhooks/:id",
        method = "patch",
        operation_id = "update_webhook"
    )]
    async fn update(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<WebhookInput>,
    ) -> ApiResult<Json<WebhookEndpoint>> {
        let mut f = fields(body.0, ctx.webhook_allow_private)?;
        let rotated = f.secret.take();
        f.secret = rotated
            .as_deref()
            .map(|s| ctx.secrets.seal(tenant.customer_id, s));
        webhooks::update(&ctx.pool, tenant.customer_id, id.0, &f)
            .await?
            .map(|r| Json(WebhookEndpoint::of(r, rotated)))
            .ok_or_else(|| endpoint_not_found(id.0))
    }

    /// Remove an endpoint (and its pending deliveries).
    #[oai(
        path = "/v1/webhooks/:id",
        method = "delete",
        operation_id = "delete_webhook"
    )]
    async fn delete(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Deleted> {
        if webhooks::delete(&ctx.pool, tenant.customer_id, id.0).await? {
            Ok(Deleted::NoContent)
        } else {
            Err(endpoint_not_found(id.0))
        }
    }

    /// Send a `ping` event to this endpoint (queued like any event; see its deliveries).
    #[oai(
        path = "/v1/webhooks/:id/test",
        method = "post",
        operation_id = "test_webhook"
    )]
    async fn test(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Queued> {
        webhooks::get(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        let event_id = webhooks::ping(&ctx.pool, tenant.customer_id, id.0).await?;
        Ok(Queued::Accepted(Json(QueuedPing { event_id })))
    }

    /// The endpoint's deliveries, newest first.
    #[oai(
        path = "/v1/webhooks/:id/deliveries",
        method = "get",
        operation_id = "list_webhook_deliveries"
    )]
    async fn deliveries(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<WebhookDelivery>>> {
        let limit = super::page_limit(limit.0)?;
        webhooks::get(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        let rows = webhooks::deliveries(&ctx.pool, id.0, limit).await?;
        Ok(Json(rows.into_iter().map(WebhookDelivery::from).collect()))
    }

    /// Your events (what webhooks deliver), newest first.
    #[oai(path = "/v1/events", method = "get", operation_id = "list_events")]
    async fn events(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// Only this event type.
        #[oai(name = "type")]
        event_type: Query<Option<String>>,
        /// Events before this time (RFC 3339), to page backwards.
        before: Query<Option<DateTime<Utc>>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<EventJson>>> {
        let limit = super::page_limit(limit.0)?;
        let rows = webhooks::events(
            &ctx.pool,
            tenant.customer_id,
            event_type.0.as_deref(),
            before.0,
            limit,
        )
        .await?;
        Ok(Json(
            rows.into_iter()
                .map(|r| {
                    EventJson(crate::webhook::envelope(
                        r.id,
                        &r.r#type,
                        r.occurred_at,
                        r.customer_id,
                        r.payload,
                    ))
                })
                .collect(),
        ))
    }

    /// Deliver an event again (e.g. after fixing a receiver that gave up).
    #[oai(
        path = "/v1/webhooks/:id/deliveries/:delivery_id/replay",
        method = "post",
        operation_id = "replay_webhook_delivery"
    )]
    async fn replay(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        delivery_id: Path<Uuid>,
    ) -> ApiResult<Replayed> {
        webhooks::get(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        webhooks::replay(&ctx.pool, id.0, delivery_id.0)
            .await?
            .map(|r| Replayed::Accepted(Json(r.into())))
            .ok_or_else(|| ApiError::not_found(format!("delivery {} not found", delivery_id.0)))
    }
}
