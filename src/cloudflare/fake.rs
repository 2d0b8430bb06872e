//! A local fake of Cloudflare's GraphQL Analytics endpoint, for tests and the ingestion
//! benchmark. It answers `httpRequestsAdaptiveGroups` queries the way Cloudflare does — the
//! same request (`{query, variables}`, bearer token) and response shape
//! (`{"data": {"viewer": {"accounts": [{"httpRequestsAdaptiveGroups": [...]}]}}, "errors": …}`)
//! — over rows a test sets, and can be told to fail the next requests (HTTP 429 with
//! `Retry-After`, 5xx, GraphQL errors).
//!
//! It does not parse GraphQL: the time dimension is read from the query's `orderBy`, the filter
//! and limit from the variables (`datetime_geq`, `datetime_lt`, `clientRequestHTTPHost_in`,
//! `<dim>`, `<dim>_gt`, `clientRequestHTTPHost_gt`, `AND`, `OR`; others are ignored).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::{Data, Json};
use poem::{EndpointExt, Response, Route, Server, handler, post};
use serde_json::{Value, json};

/// One row of analytics: bytes served for a hostname in the time bucket starting at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub host: String,
    pub at: DateTime<Utc>,
    pub bytes: u64,
}

/// A failure the next request gets.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP status (429 carries `Retry-After: retry_after`).
    Http {
        status: u16,
        retry_after: Option<u64>,
    },
    /// HTTP 200 with this message in the `errors` array and `data: null`.
    Graphql(String),
}

#[derive(Default)]
struct State {
    rows: Vec<Row>,
    faults: VecDeque<Fault>,
    requests: u64,
    pages: u64,
}

pub struct FakeCloudflare {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

struct Config {
    account: String,
    token: String,
    state: Arc<Mutex<State>>,
}

impl FakeCloudflare {
    /// Starts the fake on a loopback port for `account` and bearer `token`.
    pub async fn start(account: &str, token: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let config = Arc::new(Config {
            account: account.to_owned(),
            token: token.to_owned(),
            state: state.clone(),
        });
        let app = Route::new()
            .at("/client/v4/graphql", post(graphql))
            .data(config);
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// The base URL to configure (`…/client/v4`).
    pub fn base_url(&self) -> String {
        format!("http://{}/client/v4", self.addr)
    }

    /// Replaces the analytics data.
    pub fn set_rows(&self, rows: Vec<Row>) {
        self.state.lock().unwrap().rows = rows;
    }

    /// Makes the next requests fail, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    /// Requests received (including failed ones).
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Pages of data served.
    pub fn pages(&self) -> u64 {
        self.state.lock().unwrap().pages
    }
}

impl Drop for FakeCloudflare {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn graphql_error(message: &str) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body(
            json!({
                "data": null,
                "errors": [{
                    "message": message,
                    "path": ["viewer"],
                    "extensions": { "timestamp": Utc::now().to_rfc3339() }
                }]
            })
            .to_string(),
        )
}

#[handler]
async fn graphql(req: &poem::Request, body: Json<Value>, config: Data<&Arc<Config>>) -> Response {
    let fault = {
        let mut state = config.state.lock().unwrap();
        state.requests += 1;
        state.faults.pop_front()
    };
    match fault {
        Some(Fault::Http {
            status,
            retry_after,
        }) => {
            let mut r = Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .content_type("application/json");
            if let Some(s) = retry_after {
                r = r.header("Retry-After", s.to_string());
            }
            return r.body(
                json!({"data": null, "errors": [{"message": "fake HTTP failure"}]}).to_string(),
            );
        }
        Some(Fault::Graphql(message)) => return graphql_error(&message),
        None => {}
    }
    let authorized = req
        .header("authorization")
        .is_some_and(|h| h == format!("Bearer {}", config.token));
    if !authorized {
        return graphql_error("not authorized: invalid API token (authz)");
    }
    let query = body.get("query").and_then(Value::as_str).unwrap_or("");
    let vars = body.get("variables").cloned().unwrap_or(Value::Null);
    if !query.contains("httpRequestsAdaptiveGroups") {
        return graphql_error("unknown field: this fake serves httpRequestsAdaptiveGroups only");
    }
    let Some(dim) = [
        "datetimeMinute",
        "datetimeFiveMinutes",
        "datetimeFifteenMinutes",
        "datetimeHour",
        "date",
    ]
    .into_iter()
    .find(|d| query.contains(&format!("orderBy: [{d}_ASC"))) else {
        return graphql_error("cannot query: orderBy must start with a time dimension");
    };
    if vars.get("accountTag").and_then(Value::as_str) != Some(config.account.as_str()) {
        return graphql_error("not authorized for that account (authz)");
    }
    let limit = vars.get("limit").and_then(Value::as_u64).unwrap_or(100) as usize;
    let filter = vars.get("filter").cloned().unwrap_or(Value::Null);
    let groups: Vec<Value> = {
        let mut state = config.state.lock().unwrap();
        state.pages += 1;
        let mut rows: Vec<&Row> = state
            .rows
            .iter()
            .filter(|r| matches(&filter, dim, r))
            .collect();
        rows.sort_by(|a, b| (a.at, &a.host).cmp(&(b.at, &b.host)));
        rows.into_iter()
            .take(limit)
            .map(|r| {
                json!({
                    "dimensions": { dim: format_time(dim, r.at), "clientRequestHTTPHost": r.host },
                    "sum": { "edgeResponseBytes": r.bytes }
                })
            })
            .collect()
    };
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body(
            json!({
                "data": { "viewer": { "accounts": [ { "httpRequestsAdaptiveGroups": groups } ] } },
                "errors": null
            })
            .to_string(),
        )
}

fn format_time(dim: &str, at: DateTime<Utc>) -> String {
    if dim == "date" {
        at.format("%Y-%m-%d").to_string()
    } else {
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    let s = v.as_str()?;
    s.parse().ok().or_else(|| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
    })
}

/// Whether `row` passes a Cloudflare filter object.
fn matches(filter: &Value, dim: &str, row: &Row) -> bool {
    let Some(obj) = filter.as_object() else {
        return true;
    };
    obj.iter().all(|(k, v)| match k.as_str() {
        "AND" => v
            .as_array()
            .is_none_or(|fs| fs.iter().all(|f| matches(f, dim, row))),
        "OR" => v
            .as_array()
            .is_none_or(|fs| fs.iter().any(|f| matches(f, dim, row))),
        "datetime_geq" => time(v).is_none_or(|t| row.at >= t),
        "datetime_lt" => time(v).is_none_or(|t| row.at < t),
        "clientRequestHTTPHost_in" => v
            .as_array()
            .is_none_or(|hs| hs.iter().any(|h| h.as_str() == Some(row.host.as_str()))),
        "clientRequestHTTPHost" => v.as_str() == Some(row.host.as_str()),
        "clientRequestHTTPHost_gt" => v.as_str().is_none_or(|h| row.host.as_str() > h),
        k if k == dim => time(v) == Some(row.at),
        k if k == format!("{dim}_gt") => time(v).is_none_or(|t| row.at > t),
        _ => true,
    })
}
