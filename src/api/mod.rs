//! The HTTP API: poem + poem-openapi.
//!
//! One module per resource ([`services`], [`domains`], [`policies`], [`storms`], [`dns`],
//! [`usage`], [`invoices`], [`keys`], [`settings`], [`jobs`], [`webhooks`], [`admin`],
//! [`health`]), each
//! an `#[OpenApi]` struct; [`openapi`] combines them into the document served at `/openapi.json`
//! (Swagger UI at `/docs`) and committed under `openapi/`. Shared pieces: [`ApiContext`] (what
//! handlers need), [`auth`] (who is calling), [`error`] (the one error type and body shape) and
//! [`json`] (request bodies whose errors name the field).

pub mod admin;
pub mod auth;
pub mod calendars;
pub mod dns;
pub mod domains;
pub mod drills;
pub mod error;
pub mod events;
pub mod guard;
pub mod health;
pub mod input;
pub mod invoices;
pub mod jobs;
pub mod json;
pub mod keys;
pub mod metering;
pub mod policies;
pub mod rate_limit;
pub mod resource;
pub mod services;
pub mod settings;
pub mod slos;
pub mod status_links;
pub mod storms;
pub mod usage;
pub mod webhooks;

use std::str::FromStr;
use std::sync::Arc;

use poem::middleware::CatchPanic;
use poem::{Endpoint, EndpointExt, IntoResponse, Route};
use poem_openapi::{OpenApiService, Tags};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use sqlx::PgPool;

use crate::config::Secret;
use error::ApiError;

/// What every handler can reach, shared by all requests.
pub struct ApiContext {
    pub pool: PgPool,
    /// Insecure dev mode: trust `X-Customer-ID` without a key.
    pub dev: bool,
    /// Token for `/v1/admin/*`; `None` disables the admin API.
    pub admin_token: Option<Secret>,
    /// Per-key request rate limit (and the admin token's).
    pub limiter: rate_limit::RateLimiter,
    /// Failed authentications per client address: over it, 429 before any key is looked up.
    pub auth_failures: rate_limit::RateLimiter,
    /// TXT lookups for `POST …/verify`.
    pub verifier: Arc<dyn tranche_actors::ports::TxtLookup>,
    pub verify_policy: tranche_core::verify::Policy,
    /// Whether webhook URLs may point at private addresses.
    pub webhook_allow_private: bool,
    /// Whether probe targets may be private addresses.
    pub probe_allow_private: bool,
    /// What `/readyz` reports besides readiness (e.g. a noop DNS provider in production).
    pub readiness_warnings: Vec<String>,
    /// Seals webhook signing secrets at rest.
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// Invoicing settings for runs on demand (`None`: invoicing is off on this node).
    pub billing: Option<tranche_core::billing::BillingSettings>,
    /// This node's id, recorded on the runs it makes.
    pub node_id: String,
    /// Export per-domain metric series.
    pub metrics_per_domain: bool,
    /// API-key lookups: cached per node (kept exact by notification), else shared between
    /// concurrent requests.
    pub key_lookups: Arc<crate::postgres::api_keys::KeyLookups>,
    /// `GET /v1/services/{id}`, cached (emptied after every write request).
    pub service_reads: Arc<crate::postgres::services::ServiceReads>,
    /// This node's group commit of usage events.
    pub metering: ractor::ActorRef<tranche_actors::metering_batcher::BatcherMsg>,
}

#[derive(Tags)]
pub enum ApiTags {
    /// A service is a unit of failover: one primary CDN, one backup CDN.
    Services,
    /// Customer hostnames of a service, probed through each CDN and steered by DNS.
    Domains,
    /// When a service's primary CDN counts as being in a storm.
    StormPolicies,
    /// DNS steering: weighted records, desired vs applied, and the change audit log.
    Dns,
    /// Storms: when a primary CDN was below its policy and traffic moved to the backup.
    Storms,
    /// Usage snapshots: bytes through each CDN per window, pushed or pulled from CDN analytics.
    Usage,
    /// Metering: usage events (JSON or CloudEvents, exactly once), this period's usage and its
    /// time series, monthly quotas and their 80 %/100 % alerts.
    Metering,
    /// Invoices with storm-time discounts, and the billing runs that produce them.
    Billing,
    /// Your API keys (the `admin` scope).
    ApiKeys,
    /// Your account's settings: the defaults of new storm policies.
    Settings,
    /// SLO tracking: business calendars with holidays, the applications that own jobs, and
    /// SLOs with their performance per business date.
    Slo,
    /// Job status: schedulers report runs of their jobs (`job-status` keys, limited to named
    /// applications), the input of SLO tracking.
    Jobs,
    /// Webhook notifications: endpoints, deliveries, test pings, replays, and the events
    /// themselves. Each event type's body is a schema of its own: see `Event` (discriminated
    /// by `type`: `storm.started`, `storm.ended`, `storm.backup_unhealthy`,
    /// `domain.health_unknown`, `dns.change_applied`, `dns.change_failed`, `invoice.created`, `domain.verified`,
    /// `domain.verification_failed`, `certificate.expiring`, `vantage.disagrees`, `drill.started`,
    /// `drill.ended`, `quota.threshold_crossed`, `slo.not_started`, `slo.late`, `slo.breached`,
    /// `ping`). Deliveries are signed:
    /// `Tranche-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
    Webhooks,
    /// Operator endpoints (admin token).
    Admin,
    /// Liveness and readiness.
    Operations,
}

pub type Api = (
    services::ServicesApi,
    domains::DomainsApi,
    policies::PoliciesApi,
    storms::StormsApi,
    dns::DnsApi,
    drills::DrillsApi,
    (usage::UsageApi, metering::MeteringApi),
    invoices::InvoicesApi,
    keys::KeysApi,
    settings::SettingsApi,
    status_links::StatusLinksApi,
    (jobs::JobsApi, calendars::CalendarsApi, slos::SlosApi),
    webhooks::WebhooksApi,
    admin::AdminApi,
    health::HealthApi,
);

/// The OpenAPI service (document + dispatch) for the whole API.
pub fn openapi() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (
            services::ServicesApi,
            domains::DomainsApi,
            policies::PoliciesApi,
            storms::StormsApi,
            dns::DnsApi,
            drills::DrillsApi,
            (usage::UsageApi, metering::MeteringApi),
            invoices::InvoicesApi,
            keys::KeysApi,
            settings::SettingsApi,
            status_links::StatusLinksApi,
            (jobs::JobsApi, calendars::CalendarsApi, slos::SlosApi),
            webhooks::WebhooksApi,
            admin::AdminApi,
            health::HealthApi,
        ),
        "Tranche",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Multi-CDN storm insurance: Tranche probes each customer hostname through its primary \
         and backup CDN, declares a storm when the primary's availability falls below the \
         service's policy, and steers traffic with weighted DNS.\n\n\
         Every error has the body `{\"code\", \"message\", \"field\"?}`.",
    )
}

/// The OpenAPI document as pretty JSON, exactly as committed in `openapi/openapi.json`: the
/// production document (see [`document`]).
pub fn spec_json() -> String {
    spec_json_for(false)
}

/// The document a server in this mode serves, as pretty JSON.
pub fn spec_json_for(dev: bool) -> String {
    let mut json = serde_json::to_string_pretty(&document(dev)).unwrap_or_default();
    json.push('\n');
    json
}

/// The OpenAPI document, completed where the generator leaves it short of the truth:
///
/// * the dev-mode credentials (`X-Customer-ID` header, `customer_id` query) are listed only by
///   a server in dev mode — a production server does not accept them;
/// * request bodies refuse unknown properties, so their object schemas (and the objects nested
///   in them) say `additionalProperties: false`;
/// * an operation with a body can answer 415 (a body that is not JSON), so it says so;
/// * a PATCH body must change something: `minProperties: 1`.
pub fn document(dev: bool) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut spec: Value = serde_json::from_str(&openapi().spec()).unwrap_or_default();
    const DEV_SCHEMES: [&str; 2] = ["DevCustomerHeader", "DevCustomerQuery"];
    if !dev && let Some(schemes) = spec["components"]["securitySchemes"].as_object_mut() {
        for s in DEV_SCHEMES {
            schemes.remove(s);
        }
    }
    let mut request_refs = Vec::new();
    let mut patch_bodies = Vec::new();
    if let Some(paths) = spec["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(ops) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in ops.iter_mut() {
                if !dev && let Some(security) = op.get_mut("security").and_then(Value::as_array_mut)
                {
                    security.retain(|req| {
                        !req.as_object()
                            .is_some_and(|o| o.keys().any(|k| DEV_SCHEMES.contains(&k.as_str())))
                    });
                }
                if op.get("requestBody").is_none() {
                    continue;
                }
                if method == "patch" {
                    let mut patched = Vec::new();
                    collect_refs(&op["requestBody"], &mut patched);
                    patch_bodies.extend(patched);
                }
                collect_refs(&op["requestBody"], &mut request_refs);
                op["responses"]["415"] = json!({
                    "description": "The body is not JSON: send it with `Content-Type: application/json`.",
                    "content": { "application/json; charset=utf-8": {
                        "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
                });
            }
        }
    }
    for name in patch_bodies {
        spec["components"]["schemas"][&name]["minProperties"] = json!(1);
    }
    // Close every object schema reachable from a request body.
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = request_refs.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let schema = &mut spec["components"]["schemas"][&name];
        if schema.get("properties").is_some() {
            schema["additionalProperties"] = Value::Bool(false);
        }
        let nested = schema.clone();
        collect_refs(&nested, &mut request_refs);
    }
    spec
}

/// Names of the component schemas `value` refers to.
fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => {
                        if let Some(name) = r.strip_prefix("#/components/schemas/") {
                            out.push(name.to_owned());
                        }
                    }
                    _ => collect_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Header carrying a request's id, on every response (and taken from the request when a proxy
/// set a sane one), and in every log line written while serving it.
pub const REQUEST_ID: &str = "x-request-id";

/// The request's id: the caller's `X-Request-Id` when it is 1–128 visible ASCII characters,
/// else a new UUID.
fn request_id(req: &poem::Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The complete HTTP application: API, `/openapi.json`, `/docs`, JSON errors everywhere.
/// The `metrics_listen` server: `GET /metrics` only, without a token.
pub fn metrics_app(ctx: Arc<ApiContext>) -> impl Endpoint {
    Route::new().at(
        "/metrics",
        poem::get(poem::endpoint::make(move |_| {
            let ctx = ctx.clone();
            async move {
                match crate::metrics::refresh(&ctx.pool, ctx.metrics_per_domain).await {
                    Ok(()) => poem::Response::builder()
                        .content_type("text/plain; version=0.0.4; charset=utf-8")
                        .body(crate::metrics::METRICS.render()),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not refresh the metrics");
                        poem::Response::builder()
                            .status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
                            .body("database unavailable")
                    }
                }
            }
        })),
    )
}

/// Write routes that never change a service, its domains or its policies: the high-rate
/// feeds (usage events, job reports), which must not keep emptying the service cache.
const FEEDS: [&str; 2] = ["/v1/usage-events", "/v1/job-status"];

/// Whether serving `req` may change what the service cache holds: any write but the feeds.
fn may_change_services(req: &poem::Request) -> bool {
    use poem::http::Method;
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    !read && !FEEDS.contains(&req.uri().path())
}

pub fn app(ctx: Arc<ApiContext>) -> impl Endpoint {
    let api = openapi();
    // Swagger UI shows the document this server serves (the generator's is replaced in it).
    let served = spec_json_for(ctx.dev);
    let docs = api.swagger_ui_html().replace(&api.spec(), &served);
    let reads = ctx.service_reads.clone();
    Route::new()
        .nest("/", api)
        .at(
            "/docs",
            poem::endpoint::make_sync(move |_| poem::web::Html(docs.clone())),
        )
        .at(
            "/openapi.json",
            poem::endpoint::make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json; charset=utf-8")
                    .body(served.clone())
            }),
        )
        .nest("/status", crate::status::routes())
        .with(input::input_guard())
        .around(move |ep, req| {
            let reads = reads.clone();
            async move {
                let method = req.method().to_string();
                let status_page = req.uri().path().starts_with("/status");
                let started = std::time::Instant::now();
                let writes = may_change_services(&req);
                let res = ep.call(req).await;
                if writes {
                    // This node's clients read their own writes from the next request; other
                    // nodes hear of them by notification.
                    reads.forget_all();
                }
                let (status, route) = match &res {
                    Ok(r) => (r.status(), r.data::<poem_openapi::OperationId>().map(|o| o.0)),
                    Err(e) => (e.status(), e.data::<poem_openapi::OperationId>().map(|o| o.0)),
                };
                let took = started.elapsed();
                let route = route.unwrap_or(if status_page { "status_page" } else { "unmatched" });
                crate::metrics::METRICS.http(&method, route, status.as_u16(), took);
                res
            }
        })
        .with(error::json_errors())
        // Outside the JSON errors, so that every response — errors too — carries its id.
        .around(|ep, req| async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let request_id = request_id(&req);
            let span = tracing::info_span!("request", request_id = %request_id);
            let started = std::time::Instant::now();
            let res = tracing::Instrument::instrument(ep.call(req), span.clone()).await;
            let mut resp = res.map(IntoResponse::into_response)?;
            span.in_scope(|| {
                tracing::info!(target: "tranche::access", %method, %path, status = resp.status().as_u16(), ms = started.elapsed().as_secs_f64() * 1000.0, "request");
            });
            if let Ok(value) = poem::http::HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert(REQUEST_ID, value);
            }
            Ok::<_, poem::Error>(resp)
        })
        // Responses carry secrets (new keys, webhook secrets) and tenant data: never cached.
        .with(
            poem::middleware::SetHeader::new()
                .overriding(poem::http::header::CACHE_CONTROL, "no-store"),
        )
        .with(CatchPanic::new().with_handler(|_| {
            tracing::error!("request handler panicked");
            ApiError::internal().into_response()
        }))
        .data(ctx)
}

/// A JSON number as an exact decimal: the shortest representation that round-trips to the same
/// `f64`, which is the number the client wrote (`0.95` stays `0.95`, not 0.9499999…).
pub fn decimal_from_json(field: &str, value: f64) -> Result<Decimal, ApiError> {
    if !value.is_finite() {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be a finite number"),
        ));
    }
    Decimal::from_str(&value.to_string())
        .map_err(|_| ApiError::invalid(field, format!("{field} is out of range")))
}

/// Largest page a list endpoint returns.
pub const MAX_PAGE: i64 = 1000;

/// The `limit` query parameter of list endpoints: default 100, 1 to [`MAX_PAGE`].
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(100);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            format!("limit must be between 1 and {MAX_PAGE}"),
            Some("limit"),
        ))
    }
}

/// A decimal for a JSON number field of a response.
pub fn json_number(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_become_the_decimal_the_client_wrote() {
        assert_eq!(decimal_from_json("x", 0.95).unwrap().to_string(), "0.95");
        assert_eq!(decimal_from_json("x", 1.25).unwrap().to_string(), "1.25");
        assert_eq!(decimal_from_json("x", 1.0).unwrap().to_string(), "1");
        assert_eq!(
            decimal_from_json("x", 1e-7).unwrap().to_string(),
            "0.0000001"
        );
        assert!(decimal_from_json("x", 1e300).is_err());
        assert_eq!(json_number(Decimal::new(95, 2)), 0.95);
    }
}
