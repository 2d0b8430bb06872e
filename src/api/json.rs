//! [`JsonBody`]: a JSON request body whose errors name the offending field.
//!
//! poem-openapi's own `Json<T>` reports a missing or mistyped property without naming it, which
//! fails the rule that every 4xx names its field. `JsonBody<T>` keeps `T`'s schema for the OpenAPI
//! document (`T: poem_openapi::types::Type`) but parses with serde (`T: DeserializeOwned`, with
//! `#[serde(deny_unknown_fields)]` on request types), and tracks the path to the failing value:
//!
//! * larger than [`MAX_BODY_BYTES`] → 413 `payload_too_large`, refused from `Content-Length` or
//!   while reading, so no more than the limit is ever buffered;
//! * not JSON at all (syntax error, empty body) → 400 `malformed_json`;
//! * missing, unknown or mistyped property → 422 `validation_failed` with `field` set;
//! * a NUL character in any string → 422 naming it (PostgreSQL cannot store one).

use poem::{Request, RequestBody};
use poem_openapi::impl_apirequest_for_payload;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorBody};

/// Largest request body accepted, in bytes. Bulk endpoints of later issues set their own.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A parsed JSON request body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: Type + Send> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(ct) if ct.type_() == "application"
            && (ct.subtype() == "json" || ct.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = read_limited(request, body, MAX_BODY_BYTES).await?;
        parse::<T>(&bytes).map(JsonBody).map_err(Into::into)
    }
}

impl_apirequest_for_payload!(JsonBody<T>, T: Type + DeserializeOwned + Send);

/// Reads the body, refusing it (413) as soon as it is known to exceed `limit` bytes: from its
/// `Content-Length`, or while reading a body of unannounced length.
pub async fn read_limited(
    request: &Request,
    body: &mut RequestBody,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    use tokio::io::AsyncReadExt;
    let announced = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let Ok(body) = body.take() else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::with_capacity(announced.unwrap_or(0).min(limit as u64) as usize);
    let mut reader = body.into_async_read().take(limit as u64 + 1);
    reader.read_to_end(&mut bytes).await.map_err(|e| {
        ApiError::bad_request(format!("could not read the request body: {e}"), None)
    })?;
    if bytes.len() > limit {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(bytes)
}

/// Parses `bytes` as `T`, describing a failure the way the API reports it.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
    }
    // A NUL can only arrive escaped (`\u0000`); only then is the body walked to name it.
    if bytes.windows(6).any(|w| w == b"\\u0000")
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(path) = super::input::nul_in_json(&value)
    {
        let field = if path.is_empty() {
            "body".to_owned()
        } else {
            path
        };
        let field = field.replace('\0', "");
        return Err(ApiError::invalid(
            &field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(malformed("request body is empty; send a JSON object"));
    }
    // serde would accept `[…]` for a struct (as a tuple); the API speaks objects only.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b == b'[') {
        return Err(ApiError::Unprocessable(poem_openapi::payload::Json(
            ErrorBody {
                code: "validation_failed".into(),
                message: "request body must be a JSON object, not an array".into(),
                field: None,
                quota: None,
            },
        )));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return malformed(format!("request body is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        // serde reports a missing property at the parent's path, naming the property in
        // backticks: lift it into the path. (An unknown property's path already ends with it.)
        let missing = message
            .starts_with("missing field")
            .then(|| message.split('`').nth(1))
            .flatten();
        let field = match (path.as_str(), missing) {
            ("." | "", Some(name)) => name.to_owned(),
            (parent, Some(name)) => format!("{parent}.{name}"),
            ("." | "", None) => String::new(),
            (path, None) => path.to_owned(),
        };
        let message = if message.starts_with("missing field") {
            "is required".to_owned()
        } else if message.starts_with("unknown field") {
            match message.split_once(", expected ") {
                Some((_, expected)) => format!("is not a known field (expected {expected})"),
                None => "is not a known field".to_owned(),
            }
        } else {
            strip_position(&message).to_owned()
        };
        let message = strip_position(&message);
        if field.is_empty() {
            ApiError::Unprocessable(poem_openapi::payload::Json(ErrorBody {
                code: "validation_failed".into(),
                message: format!("request body: {message}"),
                field: None,
                quota: None,
            }))
        } else {
            let sep = if message.starts_with("is ") {
                " "
            } else {
                ": "
            };
            ApiError::invalid(&field, format!("{field}{sep}{message}"))
        }
    })
}

fn malformed(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(poem_openapi::payload::Json(ErrorBody {
        code: "malformed_json".into(),
        message: message.into(),
        field: None,
        quota: None,
    }))
}

/// serde_json appends " at line 1 column 17" to data errors; the field name says more.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        window_seconds: Option<i32>,
        target: Option<Inner>,
    }

    fn err(json: &str) -> ErrorBody {
        match parse::<Sample>(json.as_bytes()).unwrap_err() {
            ApiError::BadRequest(b) | ApiError::Unprocessable(b) => b.0,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn names_missing_unknown_and_mistyped_fields() {
        assert_eq!(err("{}").field.as_deref(), Some("name"));
        assert_eq!(
            err(r#"{"name":"a","nmae":1}"#).field.as_deref(),
            Some("nmae")
        );
        let e = err(r#"{"name":"a","window_seconds":"60"}"#);
        assert_eq!(e.field.as_deref(), Some("window_seconds"));
        assert!(!e.message.contains("line"), "{}", e.message);
        assert_eq!(
            err(r#"{"name":"a","window_seconds":99999999999}"#)
                .field
                .as_deref(),
            Some("window_seconds")
        );
        assert_eq!(
            err(r#"{"name":"a","target":{"port":70000}}"#)
                .field
                .as_deref(),
            Some("target.port")
        );
        assert_eq!(
            err(r#"{"name":"a","target":{}}"#).field.as_deref(),
            Some("target.port")
        );
    }

    #[test]
    fn malformed_json_is_a_400() {
        for body in ["", "  ", "{", "{\"name\": }", "not json"] {
            let e = err(body);
            assert_eq!(e.code, "malformed_json", "{body:?}");
        }
        assert_eq!(err("[]").code, "validation_failed");
    }
}
