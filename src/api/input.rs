//! Input the database must never see: NUL characters and times outside what the product means.
//!
//! PostgreSQL refuses a NUL in `text` and times outside its range; before this guard both
//! surfaced as 500s. [`input_guard`] refuses them at the edge with a 400 naming the parameter:
//! a NUL in any query parameter or path segment, and a time in a time-valued query parameter
//! outside [1970-01-01, 9999-12-31]. JSON bodies are checked by [`nul_in_json`] (called by
//! `JsonBody`), and body times that mean something (usage windows, job runs) by [`check_time`]
//! and [`check_date`] in their handlers, with the bounds documented in the OpenAPI document.

use chrono::{DateTime, NaiveDate, Utc};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use super::error::ApiError;

/// Query parameters that carry times or dates.
const TIME_PARAMETERS: [&str; 6] = ["since", "until", "before", "from", "to", "business_date"];

/// The earliest time a filter may name.
pub fn earliest_filter_time() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

/// The earliest time a usage window or a job run may have: nothing Tranche meters or tracks
/// happened before 2000.
pub fn earliest_fact_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// The latest time anything may name (RFC 3339 has four-digit years).
pub fn latest_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `value` of `field` is between `earliest` and 9999-12-31.
pub fn check_time(
    field: &str,
    value: DateTime<Utc>,
    earliest: DateTime<Utc>,
) -> Result<(), ApiError> {
    if value < earliest || value > latest_time() {
        return Err(ApiError::invalid(
            field,
            format!(
                "{field} must be between {} and 9999-12-31 (got {value})",
                earliest.format("%Y-%m-%d")
            ),
        ));
    }
    Ok(())
}

/// Like [`check_time`] for a date.
pub fn check_date(field: &str, value: NaiveDate, earliest: DateTime<Utc>) -> Result<(), ApiError> {
    check_time(
        field,
        value
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
        earliest,
    )
}

/// The path (`a.b[2].c`) of the first string in `value` — a property name or a value — that
/// contains a NUL character.
pub fn nul_in_json(value: &serde_json::Value) -> Option<String> {
    fn walk(v: &serde_json::Value, path: &str) -> Option<String> {
        match v {
            serde_json::Value::String(s) => s.contains('\0').then(|| path.to_owned()),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, &format!("{path}[{i}]"))),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, item)| {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains('\0') {
                    Some(here)
                } else {
                    walk(item, &here)
                }
            }),
            _ => None,
        }
    }
    walk(value, "")
}

/// What is wrong with a request's path or query, if anything.
fn check_request(req: &Request) -> Result<(), ApiError> {
    let decoded = percent_decode(req.uri().path());
    if decoded.contains(&0) {
        return Err(ApiError::bad_request(
            "the path must not contain NUL characters",
            None,
        ));
    }
    let Some(query) = req.uri().query() else {
        return Ok(());
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = String::from_utf8_lossy(&percent_decode(&key.replace('+', " "))).into_owned();
        let value = percent_decode(&value.replace('+', " "));
        if value.contains(&0) || key.contains('\0') {
            let key = key.replace('\0', "");
            return Err(ApiError::bad_request(
                format!("query parameter `{key}` must not contain NUL characters"),
                Some(&key),
            ));
        }
        if TIME_PARAMETERS.contains(&key.as_str()) {
            let text = String::from_utf8_lossy(&value);
            let earliest = earliest_filter_time();
            if let Ok(t) = text.parse::<DateTime<Utc>>() {
                check_time(&key, t, earliest).map_err(as_bad_request(&key))?;
            } else if let Ok(d) = text.parse::<NaiveDate>() {
                check_date(&key, d, earliest).map_err(as_bad_request(&key))?;
            }
        }
    }
    Ok(())
}

/// Query parameters answer 400 (as the framework's own parse errors do), not 422.
fn as_bad_request(field: &str) -> impl Fn(ApiError) -> ApiError + '_ {
    move |e| match e {
        ApiError::Unprocessable(body) => ApiError::bad_request(body.0.message, Some(field)),
        other => other,
    }
}

/// `%XX` decoding (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Middleware refusing NULs in paths and queries and times out of range in time parameters.
pub struct InputGuard;

pub fn input_guard() -> InputGuard {
    InputGuard
}

impl<E: Endpoint> Middleware<E> for InputGuard {
    type Output = InputGuardEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        InputGuardEndpoint(ep)
    }
}

pub struct InputGuardEndpoint<E>(E);

impl<E: Endpoint> Endpoint for InputGuardEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        if let Err(e) = check_request(&req) {
            return Ok(e.into_response());
        }
        self.0.call(req).await.map(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nul_anywhere_in_json() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a": {"b": ["ok", "x\u0000y"]}, "c": 1}"#).unwrap();
        assert_eq!(nul_in_json(&v).as_deref(), Some("a.b[1]"));
        let v: serde_json::Value = serde_json::from_str(r#"{"k\u0000": 1}"#).unwrap();
        assert_eq!(nul_in_json(&v).as_deref(), Some("k\0"));
        let v: serde_json::Value = serde_json::from_str(r#"{"name": "fine"}"#).unwrap();
        assert_eq!(nul_in_json(&v), None);
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%00b"), b"a\0b");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(percent_decode("%41%42"), b"AB");
    }

    #[test]
    fn times_are_bounded() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert!(check_time("since", t("1999-12-31T23:59:59Z"), earliest_fact_time()).is_err());
        assert!(check_time("since", t("2000-01-01T00:00:00Z"), earliest_fact_time()).is_ok());
        let far = "-200000-01-01T00:00:00Z".parse::<DateTime<Utc>>();
        if let Ok(far) = far {
            assert!(check_time("before", far, earliest_filter_time()).is_err());
        }
    }
}
