//! Cloudflare's GraphQL Analytics API as a [`UsageSource`].
//!
//! One query per page, at account level:
//!
//! ```graphql
//! viewer { accounts(filter: {accountTag: $accountTag}) {
//!   httpRequestsAdaptiveGroups(limit: $limit, filter: $filter,
//!                              orderBy: [datetimeHour_ASC, clientRequestHTTPHost_ASC]) {
//!     sum { edgeResponseBytes }
//!     dimensions { datetimeHour clientRequestHTTPHost }
//! } } }
//! ```
//!
//! filtered to the window span and the hostnames (`clientRequestHTTPHost_in`, eyeball traffic).
//! The bytes are `sum.edgeResponseBytes` — the name this dataset gives the bytes served
//! (`sum.bytes` is the name in the deprecated `httpRequests1hGroups`). The window's dimension
//! follows the configured window: 1 min `datetimeMinute`, 5 min `datetimeFiveMinutes`, 15 min
//! `datetimeFifteenMinutes`, 1 h `datetimeHour`, 1 d `date`.
//!
//! The API has no cursors: a page that comes back full (`limit` rows) is followed by a query
//! for the rows after its last (time, hostname) key, until a page comes back short. Errors:
//! HTTP 429 (with `Retry-After`) and rate-limit errors in the `errors` array are
//! [`SourceError::RateLimited`]; 5xx, network errors and unknown GraphQL errors are transient;
//! 4xx and authorization or query errors are permanent.

pub mod fake;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tranche_actors::ports::UsageSource;
use tranche_core::usage::{HostUsage, SourceError, SourceQuery};

use crate::secrets::Secret;

/// Cloudflare's API base.
pub const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";

/// Largest `limit` the adaptive datasets accept.
pub const MAX_PAGE: u32 = 10_000;

/// Pages followed for one query before giving up (a guard against a source that never ends).
const MAX_PAGES: usize = 10_000;

pub struct CloudflareSource {
    client: reqwest::Client,
    endpoint: String,
    account_id: String,
    token: Secret,
    page_size: u32,
}

impl CloudflareSource {
    /// A source for `account_id`, authenticating with `token`; `base_url` defaults to
    /// Cloudflare's ([`DEFAULT_BASE_URL`]).
    pub fn new(
        base_url: Option<&str>,
        account_id: impl Into<String>,
        token: Secret,
    ) -> anyhow::Result<Self> {
        let base = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tranche/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            endpoint: format!("{base}/graphql"),
            account_id: account_id.into(),
            token,
            page_size: MAX_PAGE,
        })
    }

    /// Rows per page (tests use small pages to exercise paging).
    pub fn with_page_size(mut self, rows: u32) -> Self {
        self.page_size = rows.clamp(1, MAX_PAGE);
        self
    }
}

/// The time dimension for a window length.
pub fn dimension(window: Duration) -> Result<&'static str, String> {
    Ok(match window.as_secs() {
        60 => "datetimeMinute",
        300 => "datetimeFiveMinutes",
        900 => "datetimeFifteenMinutes",
        3600 => "datetimeHour",
        86_400 => "date",
        _ => {
            return Err(format!(
                "usage window {window:?} is not one of Cloudflare's: 1m, 5m, 15m, 1h, 1d"
            ));
        }
    })
}

fn query_text(dim: &str) -> String {
    format!(
        "query TrancheUsage($accountTag: string!, $filter: AccountHttpRequestsAdaptiveGroupsFilter_InputObject!, $limit: uint64!) {{
  viewer {{
    accounts(filter: {{accountTag: $accountTag}}) {{
      httpRequestsAdaptiveGroups(limit: $limit, filter: $filter, orderBy: [{dim}_ASC, clientRequestHTTPHost_ASC]) {{
        sum {{ edgeResponseBytes }}
        dimensions {{ {dim} clientRequestHTTPHost }}
      }}
    }}
  }}
}}"
    )
}

#[derive(Deserialize)]
struct Response {
    data: Option<Value>,
    errors: Option<Vec<GraphqlError>>,
}

#[derive(Deserialize, Debug)]
struct GraphqlError {
    message: String,
    #[serde(default)]
    extensions: Option<Value>,
}

/// Sorts a GraphQL error into retry classes.
fn classify(errors: &[GraphqlError]) -> SourceError {
    let text = errors
        .iter()
        .map(|e| {
            let code = e
                .extensions
                .as_ref()
                .and_then(|x| x.get("code"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{} ({code})", e.message)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let lower = text.to_ascii_lowercase();
    if lower.contains("rate limit") || lower.contains("budget") || lower.contains("too many") {
        SourceError::RateLimited { retry_after: None }
    } else if [
        "authz",
        "authoriz",
        "authent",
        "permission",
        "access",
        "parse",
        "unknown",
        "cannot query",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        SourceError::Permanent(text)
    } else {
        SourceError::Transient(text)
    }
}

/// Parses a time dimension value: an RFC 3339 instant, or a date (`date`) at 00:00 UTC.
fn parse_time(v: &str) -> Option<DateTime<Utc>> {
    v.parse::<DateTime<Utc>>().ok().or_else(|| {
        NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
    })
}

impl CloudflareSource {
    async fn page(&self, query: &str, variables: Value) -> Result<Vec<Value>, SourceError> {
        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(self.token.expose())
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| SourceError::Transient(format!("request failed: {e}")))?;
        let status = response.status();
        if status.as_u16() == 429 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(SourceError::RateLimited { retry_after });
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| SourceError::Transient(format!("reading the response: {e}")))?;
        if status.is_server_error() {
            return Err(SourceError::Transient(format!("HTTP {status}")));
        }
        let parsed: Result<Response, _> = serde_json::from_slice(&body);
        if status.is_client_error() {
            let detail = parsed
                .ok()
                .and_then(|r| r.errors)
                .map(|e| classify(&e).to_string())
                .unwrap_or_default();
            return Err(SourceError::Permanent(format!("HTTP {status} {detail}")));
        }
        let parsed =
            parsed.map_err(|e| SourceError::Transient(format!("unexpected response: {e}")))?;
        if let Some(errors) = parsed.errors.filter(|e| !e.is_empty()) {
            return Err(classify(&errors));
        }
        let groups = parsed
            .data
            .as_ref()
            .and_then(|d| d.pointer("/viewer/accounts/0/httpRequestsAdaptiveGroups"))
            .and_then(Value::as_array)
            .cloned();
        match groups {
            Some(groups) => Ok(groups),
            // No account entry: the account has no data (or the tag is wrong, which the API
            // reports as an error).
            None if parsed
                .data
                .as_ref()
                .and_then(|d| d.pointer("/viewer/accounts"))
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty) =>
            {
                Ok(Vec::new())
            }
            None => Err(SourceError::Transient(
                "response lacks viewer.accounts[0].httpRequestsAdaptiveGroups".into(),
            )),
        }
    }
}

#[async_trait::async_trait]
impl UsageSource for CloudflareSource {
    fn cdn(&self) -> &str {
        "cloudflare"
    }

    async fn fetch(&self, q: &SourceQuery) -> Result<Vec<HostUsage>, SourceError> {
        let dim = dimension(q.window).map_err(SourceError::Permanent)?;
        let text = query_text(dim);
        let base = json!({
            "datetime_geq": q.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "datetime_lt": q.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "clientRequestHTTPHost_in": q.hostnames,
            "requestSource": "eyeball",
        });
        let mut rows = Vec::new();
        let mut after: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let filter = match &after {
                None => base.clone(),
                Some((t, host)) => {
                    let mut later = serde_json::Map::new();
                    later.insert(format!("{dim}_gt"), json!(t));
                    let mut same = serde_json::Map::new();
                    same.insert(dim.to_owned(), json!(t));
                    same.insert("clientRequestHTTPHost_gt".into(), json!(host));
                    json!({ "AND": [base, { "OR": [later, same] }] })
                }
            };
            let variables = json!({
                "accountTag": self.account_id,
                "filter": filter,
                "limit": self.page_size,
            });
            let page = self.page(&text, variables).await?;
            let full = page.len() as u32 >= self.page_size;
            let mut last = None;
            for group in &page {
                let time = group
                    .pointer(&format!("/dimensions/{dim}"))
                    .and_then(Value::as_str);
                let host = group
                    .pointer("/dimensions/clientRequestHTTPHost")
                    .and_then(Value::as_str);
                let bytes = group
                    .pointer("/sum/edgeResponseBytes")
                    .and_then(Value::as_u64);
                let (Some(time), Some(host), Some(bytes)) = (time, host, bytes) else {
                    return Err(SourceError::Transient(format!(
                        "unexpected group in the response: {group}"
                    )));
                };
                let start = parse_time(time).ok_or_else(|| {
                    SourceError::Transient(format!("unparsable {dim} value {time:?}"))
                })?;
                rows.push(HostUsage {
                    hostname: host.to_ascii_lowercase(),
                    window_start: start,
                    bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                });
                last = Some((time.to_owned(), host.to_owned()));
            }
            if !full {
                return Ok(rows);
            }
            if last.is_none() || last == after {
                return Err(SourceError::Transient("paging did not advance".into()));
            }
            after = last;
        }
        Err(SourceError::Transient(format!(
            "more than {MAX_PAGES} pages; giving up"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_map_to_dimensions() {
        assert_eq!(
            dimension(Duration::from_secs(3600)).unwrap(),
            "datetimeHour"
        );
        assert_eq!(dimension(Duration::from_secs(86_400)).unwrap(), "date");
        assert!(dimension(Duration::from_secs(7200)).is_err());
    }

    #[test]
    fn errors_are_classified() {
        let e = |m: &str| GraphqlError {
            message: m.into(),
            extensions: None,
        };
        assert!(matches!(
            classify(&[e("rate limiter budget depleted, try again after 5 minutes")]),
            SourceError::RateLimited { .. }
        ));
        assert!(matches!(
            classify(&[e("not authorized for that account")]),
            SourceError::Permanent(_)
        ));
        assert!(matches!(
            classify(&[e("internal error")]),
            SourceError::Transient(_)
        ));
    }

    #[test]
    fn dates_and_instants_parse() {
        assert_eq!(
            parse_time("2026-11-23"),
            Some("2026-11-23T00:00:00Z".parse().unwrap())
        );
        assert_eq!(
            parse_time("2026-11-23T10:00:00Z"),
            Some("2026-11-23T10:00:00Z".parse().unwrap())
        );
    }
}
