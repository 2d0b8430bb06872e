//! One error type for the whole API, one JSON body shape for every error.
//!
//! Every failure a client can see is an [`ApiError`]: a status and an [`ErrorBody`] with a
//! stable machine-readable `code`, a sentence for humans and, when one input field is to blame,
//! its name in `field`. Errors raised by the framework before a handler runs (malformed paths,
//! wrong content type, unknown routes) are rewritten into the same shape by [`json_errors`].
//! Internal errors are logged once, here, with their cause; the client sees only a generic
//! message, never database text.

use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use tranche_core::domain::Invalid;

/// The body of every error response.
#[derive(Debug, Clone, Object, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `validation_failed`, `not_found`, `conflict`.
    pub code: String,
    /// What went wrong, in a sentence meant for a human.
    pub message: String,
    /// The request field (body property, path or query parameter, header) at fault, if one is.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
    /// Only with `over_quota` (429 from `POST /v1/usage-events`): the quota that refused it.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default)]
    pub quota: Option<Box<QuotaExceeded>>,
}

/// The quota an event would have exceeded.
#[derive(Debug, Clone, Object, serde::Deserialize, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub metric: String,
    /// The quota (exact decimal string).
    pub quota: String,
    /// Used this period before the refused event (exact decimal string).
    pub used: String,
    pub period_start: chrono::DateTime<chrono::Utc>,
    /// When the period ends and the quota starts over.
    pub period_end: chrono::DateTime<chrono::Utc>,
}

/// Every error status an operation can answer with.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed (e.g. the body is not JSON, a path parameter is not a number).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid credentials: missing, unknown, revoked or suspended.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// Credentials are valid but not for this: `X-Customer-ID` differs from the key's customer,
    /// or the key lacks the scope.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such object for this customer (another customer's objects are reported the same way).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with existing state (e.g. a duplicate name).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body is larger than the operation accepts (1 MiB unless documented
    /// otherwise); it was refused before more than that was read.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is well-formed JSON but a field is missing, unknown or invalid.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// This API key (or dev-mode customer) sent more requests than its rate limit allows;
    /// retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// Something failed on Tranche's side; it has been logged.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database is unreachable or overloaded; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

pub type ApiResult<T> = Result<T, ApiError>;

fn body(code: &str, message: impl Into<String>, field: Option<&str>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.to_owned(),
        message: message.into(),
        field: field.map(str::to_owned),
        quota: None,
    })
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, field: Option<&str>) -> Self {
        Self::BadRequest(body("bad_request", message, field))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(body("unauthorized", message, None))
    }

    pub fn forbidden(message: impl Into<String>, field: Option<&str>) -> Self {
        Self::Forbidden(body("forbidden", message, field))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(body("not_found", message, None))
    }

    pub fn conflict(message: impl Into<String>, field: Option<&str>) -> Self {
        Self::Conflict(body("conflict", message, field))
    }

    /// The body is over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::PayloadTooLarge(body(
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
            None,
        ))
    }

    /// A field failed validation.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Unprocessable(body("validation_failed", message, Some(field)))
    }

    /// A PATCH that sends nothing to change: names the fields it may send (`field`: the object
    /// that was empty, when it is nested).
    pub fn empty_patch(fields: &[&str], field: Option<&str>) -> Self {
        Self::Unprocessable(body(
            "validation_failed",
            format!("send at least one of {}", fields.join(", ")),
            field,
        ))
    }

    /// The same error blamed on another field (`to`, with `message`) when it names `from`: for
    /// a constraint over two fields, blame the one the request sent.
    pub fn blame(self, from: &str, to: &str, message: impl Into<String>) -> Self {
        match self {
            Self::Unprocessable(Json(b)) if b.field.as_deref() == Some(from) => {
                Self::invalid(to, message)
            }
            other => other,
        }
    }

    /// Adapter for the domain parsers: `Hostname::parse(s).map_err(ApiError::field("name"))`.
    pub fn field(field: &'static str) -> impl Fn(Invalid) -> Self {
        move |e| Self::invalid(field, format!("{field} {}", e.0))
    }

    /// Rate limited: retry after `retry_after` (rounded up to whole seconds).
    pub fn too_many_requests(retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self::TooManyRequests(
            body(
                "rate_limited",
                format!("rate limit exceeded; retry in {secs} s"),
                None,
            ),
            secs.max(1),
        )
    }

    /// Something Tranche depends on failed for now; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(body("unavailable", message, None))
    }

    pub fn internal() -> Self {
        Self::Internal(body(
            "internal",
            "internal error; it has been logged on the server",
            None,
        ))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Named constraints that a client can violate, and what to tell it. Every other database error
/// is internal. Keep in step with `migrations/`.
const CONSTRAINTS: &[(&str, StatusCode, &str, &str)] = &[
    (
        "calendars_customer_id_name_key",
        StatusCode::CONFLICT,
        "name",
        "a calendar with this name already exists",
    ),
    (
        "slos_customer_id_name_key",
        StatusCode::CONFLICT,
        "name",
        "an SLO with this name already exists",
    ),
    (
        "slos_calendar_id_fkey",
        StatusCode::CONFLICT,
        "id",
        "the calendar is used by an SLO; delete the SLO first",
    ),
    (
        "applications_customer_id_name_key",
        StatusCode::CONFLICT,
        "name",
        "an application with this name already exists",
    ),
    (
        "services_customer_id_name_key",
        StatusCode::CONFLICT,
        "name",
        "a service with this name already exists",
    ),
    (
        "services_distinct_cdns_check",
        StatusCode::UNPROCESSABLE_ENTITY,
        "backup_cdn",
        "backup_cdn must differ from primary_cdn",
    ),
    (
        "service_domains_service_id_hostname_key",
        StatusCode::CONFLICT,
        "name",
        "this hostname is already a domain of the service",
    ),
    (
        "storm_policies_service_id_kind_key",
        StatusCode::CONFLICT,
        "kind",
        "the service already has a policy of this kind; PATCH it instead",
    ),
    (
        "customers_name_check",
        StatusCode::UNPROCESSABLE_ENTITY,
        "name",
        "name must be 1 to 200 characters",
    ),
];

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        let violated = err
            .as_database_error()
            .and_then(|db| db.constraint())
            .and_then(|name| CONSTRAINTS.iter().find(|(c, ..)| *c == name));
        if let Some((_, status, field, message)) = violated {
            return if *status == StatusCode::CONFLICT {
                Self::conflict(*message, Some(field))
            } else {
                Self::invalid(field, *message)
            };
        }
        // Values PostgreSQL cannot store (a NUL in text, a time beyond its range) that slipped
        // past validation are the client's input, not a server fault.
        let refused_value = err
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| matches!(code.as_ref(), "22021" | "22P05" | "22008" | "22003"));
        if refused_value {
            tracing::warn!(error = %err, "the database refused a value from a request");
            return Self::bad_request(
                "a value in the request is out of the range the database accepts",
                None,
            );
        }
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::error!(error = %err, "database unavailable");
                Self::Unavailable(body(
                    "unavailable",
                    "the database is unavailable; retry shortly",
                    None,
                ))
            }
            err => {
                tracing::error!(error = %err, "database error");
                Self::internal()
            }
        }
    }
}

/// Middleware that turns every error the framework produces into an [`ErrorBody`] response.
/// Errors that already carry one (an [`ApiError`] returned by a handler) pass unchanged.
pub struct JsonErrors;

pub fn json_errors() -> JsonErrors {
    JsonErrors
}

impl<E: Endpoint> Middleware<E> for JsonErrors {
    type Output = JsonErrorsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        JsonErrorsEndpoint(ep)
    }
}

pub struct JsonErrorsEndpoint<E>(E);

impl<E: Endpoint> Endpoint for JsonErrorsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let path = req.uri().path().to_owned();
        match self.0.call(req).await {
            Ok(resp) => Ok(resp.into_response()),
            Err(err) => Ok(error_response(err, &path)),
        }
    }
}

fn error_response(err: poem::Error, path: &str) -> Response {
    use poem_openapi::error as oe;
    if let Some(e) = err.downcast_ref::<oe::ParsePathError>() {
        // poem-openapi names path parameters `param0`, `param1`…: the document says which.
        let index: usize = e
            .name
            .strip_prefix("param")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let (field, kind) = route_of(path)
            .and_then(|r| r.params.get(index).cloned())
            .unwrap_or_else(|| (e.name.to_owned(), "an integer"));
        return ApiError::bad_request(
            format!("path parameter `{field}` must be {kind}"),
            Some(&field),
        )
        .into_response();
    }
    let field = err
        .downcast_ref::<oe::ParseParamError>()
        .map(|e| e.name.to_owned());
    let auth = err.is::<oe::AuthorizationError>();
    let message = err.to_string();
    let status = err.status();
    let resp = err.into_response();
    let is_json = resp
        .headers()
        .get(poem::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let error = if auth {
        ApiError::unauthorized(
            "missing credentials: send `Authorization: Bearer <api key>` (or, in dev mode, `X-Customer-ID`)",
        )
    } else {
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        let message = if status.is_server_error() {
            tracing::error!(error = %message, "unhandled error");
            "internal error; it has been logged on the server".to_owned()
        } else if status == StatusCode::NOT_FOUND {
            format!("no route matches {path}; see /docs for the API")
        } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            "send the request body as JSON with `Content-Type: application/json`".to_owned()
        } else {
            message
        };
        let body = ErrorBody {
            code: code.into(),
            message,
            field,
            quota: None,
        };
        let mut resp = poem::web::Json(body_json(&body))
            .with_status(status)
            .into_response();
        if status == StatusCode::METHOD_NOT_ALLOWED
            && let Some(allow) = allowed_methods(path)
            && let Ok(value) = poem::http::HeaderValue::from_str(&allow)
        {
            resp.headers_mut().insert(poem::http::header::ALLOW, value);
        }
        return resp;
    };
    error.into_response()
}

/// A path of the OpenAPI document: its segments, methods and path parameters.
struct RouteInfo {
    segments: Vec<String>,
    /// `GET, POST`…
    methods: String,
    /// Path parameters in order: name, and what it must be (`an integer`, `a UUID`).
    params: Vec<(String, &'static str)>,
}

/// The document's path that `path` matches (literal segments equal, `{…}` matching any).
fn route_of(path: &str) -> Option<&'static RouteInfo> {
    static ROUTES: std::sync::OnceLock<Vec<RouteInfo>> = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let spec: serde_json::Value = serde_json::from_str(&super::spec_json()).unwrap_or_default();
        let Some(paths) = spec["paths"].as_object() else {
            return Vec::new();
        };
        paths
            .iter()
            .map(|(template, item)| {
                let ops = item.as_object();
                let mut methods: Vec<String> = ops
                    .map(|m| m.keys().map(|k| k.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                methods.sort();
                let declared: Vec<&serde_json::Value> = ops
                    .into_iter()
                    .flat_map(|m| m.values())
                    .flat_map(|op| op["parameters"].as_array().into_iter().flatten())
                    .filter(|p| p["in"] == "path")
                    .collect();
                let params = template
                    .split('/')
                    .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                    .map(|name| {
                        let uuid = declared
                            .iter()
                            .find(|p| p["name"] == name)
                            .is_some_and(|p| p["schema"]["format"] == "uuid");
                        (name.to_owned(), if uuid { "a UUID" } else { "an integer" })
                    })
                    .collect();
                RouteInfo {
                    segments: template.split('/').map(str::to_owned).collect(),
                    methods: methods.join(", "),
                    params,
                }
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    routes.iter().find(|r| {
        r.segments.len() == segments.len()
            && r.segments
                .iter()
                .zip(&segments)
                .all(|(t, s)| t.starts_with('{') || t == s)
    })
}

/// The methods the API serves at `path` (for `Allow` on a 405), from the OpenAPI document.
fn allowed_methods(path: &str) -> Option<String> {
    route_of(path).map(|r| r.methods.clone())
}

fn body_json(body: &ErrorBody) -> serde_json::Value {
    use poem_openapi::types::ToJSON;
    body.to_json().unwrap_or_default()
}
