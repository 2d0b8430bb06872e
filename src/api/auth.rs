//! Who is calling: API keys, dev-mode customer headers, the admin token.
//!
//! [`Scoped`] (a [`Tenant`] with a required scope) is the extractor every customer operation
//! takes; the scope also appears in the operation's security requirement in the OpenAPI
//! document. It runs one decision procedure
//! (below) and is declared in the OpenAPI document as the `ApiKey` bearer scheme or, in dev mode,
//! the `DevCustomerHeader` / `DevCustomerQuery` schemes:
//!
//! 1. `Authorization: Bearer <key>` — the key identifies the customer. A key that is unknown,
//!    revoked, or whose customer is suspended → 401. If `X-Customer-ID` (or `customer_id`) is also
//!    sent it must name the same customer → otherwise 403.
//! 2. No key, but `X-Customer-ID` / `customer_id` — accepted only in dev mode (`serve --dev`),
//!    for an existing active customer; outside dev mode → 401.
//! 3. Neither → 401.
//!
//! An authenticated caller then takes a token from its rate-limit bucket (per key; per customer
//! for dev-mode requests): over the limit → 429 with `Retry-After`.
//!
//! [`Admin`] guards `/v1/admin/*`: `Authorization: Bearer <TRANCHE_ADMIN_TOKEN>`, rate-limited
//! like a key.
//!
//! Failed authentications (an unknown, wrong or revoked key or admin token) are counted per
//! client address: past [`FAILED_AUTH_BURST`] at once (then [`FAILED_AUTH_PER_SECOND`]), that
//! address gets 429 before any key is even looked up, so guessing keys costs neither the
//! database nor much time. Two `Authorization` headers are a 400.

use std::sync::Arc;

use chrono::{Duration, Utc};
use poem::Request;
use poem::http::header::AUTHORIZATION;
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::registry::Registry;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme};
use subtle::ConstantTimeEq;

use super::ApiContext;
use super::error::ApiError;
use super::rate_limit::Caller;
use crate::postgres::{api_keys, customers};

/// Failed authentications a client address may make at once…
pub const FAILED_AUTH_BURST: u32 = 20;
/// …and per second after that.
pub const FAILED_AUTH_PER_SECOND: f64 = 2.0;

/// Refuses (429) a client address that has failed to authenticate too often.
fn throttle_failures(req: &Request, ctx: &ApiContext) -> Result<(), ApiError> {
    match client_ip(req).and_then(|ip| ctx.auth_failures.exhausted(Caller::FailedAuth(ip))) {
        Some(wait) => Err(ApiError::too_many_requests(wait)),
        None => Ok(()),
    }
}

/// Counts a failed authentication against the client's address and returns `err`.
fn failed(req: &Request, ctx: &ApiContext, err: ApiError) -> ApiError {
    if let Some(ip) = client_ip(req) {
        let _ = ctx.auth_failures.check(Caller::FailedAuth(ip));
    }
    err
}

fn client_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.remote_addr().as_socket_addr().map(|a| a.ip())
}

/// Header naming the customer (the seed API's tenant context).
pub const CUSTOMER_HEADER: &str = "X-Customer-ID";
/// Query parameter alternative to [`CUSTOMER_HEADER`].
pub const CUSTOMER_QUERY: &str = "customer_id";

/// What a key may do. Every customer operation declares the scope it needs in the OpenAPI
/// document (the `ApiKey` security requirement) and enforces it in its extractor
/// ([`Scoped`]), before the request body is even read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::OAuthScopes)]
#[oai(rename_all = "lowercase")]
pub enum Scope {
    /// Read your resources.
    Read,
    /// Create, change and delete them.
    Write,
    /// Manage your API keys.
    Admin,
    /// Report job status (`POST /v1/job-status`) for the applications the key names, and
    /// nothing else. Scheduler keys hold only this.
    #[oai(rename = "job-status")]
    JobStatus,
}

/// Type-level scopes for [`Scoped`].
pub mod needs {
    use super::Scope;

    pub trait Needs: Send + Sync + 'static {
        const SCOPE: Scope;
    }
    pub struct Read;
    pub struct Write;
    pub struct Admin;
    pub struct JobStatus;
    impl Needs for Read {
        const SCOPE: Scope = Scope::Read;
    }
    impl Needs for Write {
        const SCOPE: Scope = Scope::Write;
    }
    impl Needs for Admin {
        const SCOPE: Scope = Scope::Admin;
    }
    impl Needs for JobStatus {
        const SCOPE: Scope = Scope::JobStatus;
    }
}

/// An authenticated customer whose credentials carry scope `N` (else 403, before the handler
/// or its body parser runs). Dereferences to [`Tenant`].
pub struct Scoped<N: needs::Needs>(Tenant, std::marker::PhantomData<N>);

impl<N: needs::Needs> std::ops::Deref for Scoped<N> {
    type Target = Tenant;

    fn deref(&self) -> &Tenant {
        &self.0
    }
}

impl<'a, N: needs::Needs> ApiExtractor<'a> for Scoped<N> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Tenant as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <Tenant as ApiExtractor>::security_schemes()
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut poem::RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let tenant = authenticate(req).await?;
        tenant.require(N::SCOPE)?;
        Ok(Scoped(tenant, std::marker::PhantomData))
    }
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
            Self::JobStatus => api_keys::JOB_STATUS,
        }
    }
}

/// An authenticated customer.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub customer_id: i64,
    /// The key used, `None` for a dev-mode header.
    pub key_id: Option<i64>,
    /// The key's scopes (all of them in dev mode).
    scopes: Vec<String>,
    /// The applications a `job-status` key reports for; `None` (dev mode): any.
    applications: Option<Vec<String>>,
}

impl Tenant {
    /// Whether the credentials carry the scope named `scope`.
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Fails with 403 unless the credentials carry `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s == scope.as_str()) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                format!("this API key lacks the `{}` scope", scope.as_str()),
                None,
            ))
        }
    }

    /// Fails with 403 (naming `field`) unless the credentials may report job status for
    /// `application`.
    pub fn may_report_for(&self, application: &str, field: &str) -> Result<(), ApiError> {
        self.require(Scope::JobStatus)?;
        match &self.applications {
            Some(apps) if !apps.iter().any(|a| a == application) => Err(ApiError::forbidden(
                format!(
                    "this API key reports job status for {} only, not {application:?}",
                    apps.join(", ")
                ),
                Some(field),
            )),
            _ => Ok(()),
        }
    }
}

/// A customer API key: `Authorization: Bearer tr_…`. Create the first one with
/// `POST /v1/admin/customers`.
#[derive(SecurityScheme)]
#[oai(
    rename = "ApiKey",
    ty = "bearer",
    bearer_format = "tr_<prefix>_<secret>"
)]
#[allow(dead_code)] // declared for the OpenAPI document; `Tenant` does the checking
struct ApiKeyScheme(Bearer);

/// Dev mode only (`tranche serve --dev`, insecure): the customer id, trusted without a key.
#[derive(SecurityScheme)]
#[oai(
    rename = "DevCustomerHeader",
    ty = "api_key",
    key_in = "header",
    key_name = "X-Customer-ID"
)]
#[allow(dead_code)]
struct DevHeaderScheme(ApiKey);

/// Dev mode only: the customer id as a query parameter.
#[derive(SecurityScheme)]
#[oai(
    rename = "DevCustomerQuery",
    ty = "api_key",
    key_in = "query",
    key_name = "customer_id"
)]
#[allow(dead_code)]
struct DevQueryScheme(ApiKey);

/// The operator's token (`TRANCHE_ADMIN_TOKEN`) for `/v1/admin/*`.
#[derive(SecurityScheme)]
#[oai(rename = "AdminToken", ty = "bearer")]
#[allow(dead_code)]
struct AdminScheme(Bearer);

impl<'a> ApiExtractor<'a> for Tenant {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <ApiKeyScheme as ApiExtractor>::register(registry);
        <DevHeaderScheme as ApiExtractor>::register(registry);
        <DevQueryScheme as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec!["ApiKey", "DevCustomerHeader", "DevCustomerQuery"]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut poem::RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        authenticate(req).await.map_err(Into::into)
    }
}

/// The operator, authenticated by the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<'a> ApiExtractor<'a> for Admin {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <AdminScheme as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec!["AdminToken"]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut poem::RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let ctx = context(req)?;
        let Some(expected) = &ctx.admin_token else {
            return Err(ApiError::unauthorized(
                "the admin API is disabled: start Tranche with TRANCHE_ADMIN_TOKEN set",
            )
            .into());
        };
        throttle_failures(req, ctx)?;
        match bearer(req)? {
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) => {
                ctx.limiter
                    .check(Caller::Admin)
                    .map_err(ApiError::too_many_requests)?;
                Ok(Admin)
            }
            Some(_) => Err(failed(req, ctx, ApiError::unauthorized("invalid admin token")).into()),
            None => Err(ApiError::unauthorized(
                "missing credentials: send `Authorization: Bearer <admin token>`",
            )
            .into()),
        }
    }
}

fn context(req: &Request) -> Result<&Arc<ApiContext>, ApiError> {
    req.data::<Arc<ApiContext>>().ok_or_else(|| {
        tracing::error!("ApiContext missing from request data");
        ApiError::internal()
    })
}

/// The bearer token, if an `Authorization` header is present (401 if it is not a bearer).
fn bearer(req: &Request) -> Result<Option<&str>, ApiError> {
    if req.headers().get_all(AUTHORIZATION).iter().count() > 1 {
        return Err(ApiError::bad_request(
            "send one Authorization header, not several",
            Some("Authorization"),
        ));
    }
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or_default().trim();
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <api key>`",
        )),
    }
}

/// The customer id claimed by header or query parameter, if any.
fn claimed_customer(req: &Request) -> Result<Option<i64>, ApiError> {
    let header = req
        .headers()
        .get(CUSTOMER_HEADER)
        .map(|v| (CUSTOMER_HEADER, v.to_str().unwrap_or("\u{fffd}").to_owned()));
    let query = req
        .uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                .find(|(k, _)| *k == CUSTOMER_QUERY)
                .map(|(_, v)| v.to_owned())
        })
        .map(|v| (CUSTOMER_QUERY, v));
    let parse = |(field, raw): (&str, String)| -> Result<i64, ApiError> {
        raw.trim()
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                ApiError::bad_request(
                    format!("{field} must be a positive integer customer id (got {raw:?})"),
                    Some(field),
                )
            })
    };
    match (
        header.map(parse).transpose()?,
        query.map(parse).transpose()?,
    ) {
        (Some(h), Some(q)) if h != q => Err(ApiError::bad_request(
            format!("{CUSTOMER_HEADER} ({h}) and {CUSTOMER_QUERY} ({q}) disagree"),
            Some(CUSTOMER_QUERY),
        )),
        (h, q) => Ok(h.or(q)),
    }
}

/// Authenticates an API key (`claimed`: the customer the request names, if it does): throttled
/// per client address after failures, rate-limited per key. Also used by the status page's
/// sign-in form.
pub(crate) async fn key_tenant(
    req: &Request,
    ctx: &ApiContext,
    token: &str,
    claimed: Option<i64>,
) -> Result<Tenant, ApiError> {
    throttle_failures(req, ctx)?;
    let invalid = || failed(req, ctx, ApiError::unauthorized("invalid API key"));
    let prefix = api_keys::prefix_of(token).ok_or_else(invalid)?;
    let key = ctx.key_lookups.find(prefix).await?.ok_or_else(invalid)?;
    if !api_keys::matches(token, &key.secret_hash) {
        return Err(invalid());
    }
    if key.customer_status != "active" {
        return Err(failed(
            req,
            ctx,
            ApiError::unauthorized("this customer is suspended"),
        ));
    }
    if let Some(claimed) = claimed
        && claimed != key.customer_id
    {
        return Err(ApiError::forbidden(
            format!("{CUSTOMER_HEADER} {claimed} does not match the API key's customer"),
            Some(CUSTOMER_HEADER),
        ));
    }
    if key
        .last_used_at
        .is_none_or(|t| Utc::now() - t > TOUCH_EVERY)
    {
        // Bookkeeping only: a failure here must not fail the request.
        match api_keys::touch(&ctx.pool, key.id).await {
            Ok(()) => ctx.key_lookups.touched(prefix, Utc::now()),
            Err(e) => tracing::warn!(api_key.id = key.id, error = %e, "could not record key use"),
        }
    }
    ctx.limiter
        .check(Caller::Key(key.id))
        .map_err(ApiError::too_many_requests)?;
    Ok(Tenant {
        customer_id: key.customer_id,
        key_id: Some(key.id),
        scopes: key.scopes,
        applications: Some(key.applications),
    })
}

/// How often `last_used_at` is refreshed; keeps authenticated reads from writing every time.
const TOUCH_EVERY: Duration = Duration::seconds(60);

async fn authenticate(req: &Request) -> Result<Tenant, ApiError> {
    let ctx = context(req)?;
    let claimed = claimed_customer(req)?;
    if let Some(token) = bearer(req)? {
        return key_tenant(req, ctx, token, claimed).await;
    }
    let Some(customer_id) = claimed else {
        return Err(ApiError::unauthorized(
            "missing credentials: send `Authorization: Bearer <api key>`",
        ));
    };
    if !ctx.dev {
        return Err(ApiError::unauthorized(format!(
            "{CUSTOMER_HEADER} alone is accepted only in dev mode; send `Authorization: Bearer <api key>`"
        )));
    }
    match customers::status(&ctx.pool, customer_id).await?.as_deref() {
        Some("active") => ctx
            .limiter
            .check(Caller::Customer(customer_id))
            .map_err(ApiError::too_many_requests)
            .map(|()| Tenant {
                customer_id,
                key_id: None,
                scopes: api_keys::KNOWN_SCOPES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                applications: None,
            }),
        Some(_) => Err(ApiError::unauthorized("this customer is suspended")),
        None => Err(ApiError::unauthorized(format!(
            "unknown customer {customer_id}"
        ))),
    }
}
