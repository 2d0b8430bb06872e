//! `tranche ctl`: an operator's command line over the HTTP API. Human tables by default,
//! `--json` for scripts (the API's JSON, unchanged). The key comes from the environment
//! (`TRANCHE_API_KEY`; `TRANCHE_ADMIN_TOKEN` for `cluster`), or, against a dev-mode server,
//! a customer id (`TRANCHE_CUSTOMER_ID`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct Ctl {
    /// The Tranche API.
    #[arg(long, env = "TRANCHE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (`tr_…`).
    #[arg(long, env = "TRANCHE_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Admin token, for `cluster`.
    #[arg(long, env = "TRANCHE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Customer id, for a dev-mode server (sent as `X-Customer-ID` when there is no key).
    #[arg(long, env = "TRANCHE_CUSTOMER_ID")]
    customer: Option<i64>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// List services.
    Services,
    /// List domains with their state, weights and availability (all services, or one).
    Domains {
        #[arg(long)]
        service: Option<i64>,
    },
    /// Show one domain's state in full: every vantage, the last probes, the weights.
    State { service: i64, domain: i64 },
    /// List storms (newest first).
    Storms {
        /// Only ongoing storms.
        #[arg(long)]
        active: bool,
        #[arg(long)]
        service: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Pin a domain's DNS weights (primary weight 0–100) until unpinned.
    Pin {
        service: i64,
        domain: i64,
        primary_weight: u8,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Release a domain's pin.
    Unpin { service: i64, domain: i64 },
    /// List DNS changes (newest first).
    DnsChanges {
        #[arg(long)]
        service: Option<i64>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Start a failover drill: traffic on the backup for `--for`, then ramped back.
    Drill {
        service: i64,
        domain: i64,
        /// How long (e.g. `10m`, `1h`; 10 s to 24 h).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: u64,
        #[arg(long)]
        reason: String,
    },
    /// List a domain's drills.
    Drills { service: i64, domain: i64 },
    /// Cancel a drill: traffic ramps back now.
    CancelDrill {
        service: i64,
        domain: i64,
        drill: String,
    },
    /// Declare a maintenance window (no storm opens, nothing is alerted on).
    Maintenance {
        service: i64,
        /// Only this domain (default: the whole service).
        #[arg(long)]
        domain: Option<i64>,
        /// How long from now (e.g. `2h`).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: u64,
        #[arg(long)]
        reason: String,
    },
    /// Run your invoicing now and show the run.
    Bill,
    /// This metering period's usage per metric, against the quotas.
    Usage,
    /// The live SLO board: every SLO's row for a business date, as its tracker keeps it.
    Slos {
        /// The business date (`YYYY-MM-DD`; default today in UTC).
        #[arg(long)]
        date: Option<chrono::NaiveDate>,
        /// Only rows of this status (`pending`, `in_progress`, `on_time`, `late`, `failed`,
        /// `missed`).
        #[arg(long)]
        status: Option<String>,
    },
    /// The cluster: nodes, their vantages and shards (admin token).
    Cluster,
}

/// An API call that failed, as the user should read it.
#[derive(Debug)]
struct Failure(String);

type CtlResult<T> = Result<T, Failure>;

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    admin_token: Option<String>,
    customer: Option<i64>,
}

impl Client {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> CtlResult<Value> {
        self.send(method, path, body, false).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        admin: bool,
    ) -> CtlResult<Value> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let mut req = self.http.request(method, &url);
        if admin {
            let token = self.admin_token.as_ref().ok_or_else(|| {
                Failure("this command needs the admin token: set TRANCHE_ADMIN_TOKEN".into())
            })?;
            req = req.bearer_auth(token);
        } else if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        } else if let Some(customer) = self.customer {
            req = req.header("X-Customer-ID", customer.to_string());
        } else {
            return Err(Failure(
                "no credentials: set TRANCHE_API_KEY (or TRANCHE_CUSTOMER_ID against a dev-mode server)"
                    .into(),
            ));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure(format!("could not reach {url}: {e}")))?;
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = resp
            .text()
            .await
            .map_err(|e| Failure(format!("reading the answer from {url}: {e}")))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let mut message = format!(
            "{} {}",
            status.as_u16(),
            value["code"].as_str().unwrap_or("")
        );
        if let Some(m) = value["message"].as_str() {
            message.push_str(": ");
            message.push_str(m);
        }
        if let Some(f) = value["field"].as_str() {
            message.push_str(&format!(" (field `{f}`)"));
        }
        if !request_id.is_empty() {
            message.push_str(&format!(" [request {request_id}]"));
        }
        Err(Failure(message))
    }
}

pub fn run(ctl: Ctl) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tranche ctl: could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(ctl)) {
        Ok(out) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(Failure(message)) => {
            eprintln!("tranche ctl: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(ctl: Ctl) -> CtlResult<String> {
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .no_proxy()
            .build()
            .map_err(|e| Failure(e.to_string()))?,
        base: ctl.url,
        key: ctl.key,
        admin_token: ctl.admin_token,
        customer: ctl.customer,
    };
    let json_out = ctl.json;
    let (value, render): (Value, fn(&Value) -> String) = match ctl.command {
        CtlCommand::Services => (client.call(Method::GET, "/v1/services", None).await?, |v| {
            table(
                v,
                &[
                    ("ID", "/id"),
                    ("NAME", "/name"),
                    ("PRIMARY", "/primary_cdn"),
                    ("BACKUP", "/backup_cdn"),
                ],
            )
        }),
        CtlCommand::Domains { service } => {
            let services: Vec<i64> = match service {
                Some(s) => vec![s],
                None => ids(&client.call(Method::GET, "/v1/services", None).await?),
            };
            let mut domains = Vec::new();
            for s in services {
                let state = client
                    .call(Method::GET, &format!("/v1/services/{s}/state"), None)
                    .await?;
                for mut d in state["domains"].as_array().cloned().unwrap_or_default() {
                    d["service_id"] = json!(s);
                    domains.push(d);
                }
            }
            (Value::Array(domains), |v| {
                table(
                    v,
                    &[
                        ("SERVICE", "/service_id"),
                        ("ID", "/domain_id"),
                        ("DOMAIN", "/name"),
                        ("STATE", "/state"),
                        ("SINCE", "/state_since"),
                        ("WEIGHTS", "/desired_weights"),
                        ("PRIMARY", "/primary/availability"),
                        ("BACKUP", "/backup/availability"),
                        ("NODE", "/owning_node"),
                    ],
                )
            })
        }
        CtlCommand::State { service, domain } => {
            let state = client
                .call(Method::GET, &format!("/v1/services/{service}/state"), None)
                .await?;
            let found = state["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["domain_id"] == json!(domain))
                .cloned()
                .ok_or_else(|| {
                    Failure(format!(
                        "domain {domain} is not a domain of service {service}"
                    ))
                })?;
            (found, details)
        }
        CtlCommand::Storms {
            active,
            service,
            limit,
        } => {
            let mut path = format!("/v1/storms?limit={limit}");
            if active {
                path.push_str("&active=true");
            }
            if let Some(s) = service {
                path.push_str(&format!("&service_id={s}"));
            }
            (client.call(Method::GET, &path, None).await?, |v| {
                table(
                    v,
                    &[
                        ("ID", "/id"),
                        ("SERVICE", "/service_id"),
                        ("DOMAIN", "/domain"),
                        ("STARTED", "/started_at"),
                        ("ENDED", "/ended_at"),
                        ("PRIMARY AVAIL.", "/trigger/primary_availability"),
                    ],
                )
            })
        }
        CtlCommand::Pin {
            service,
            domain,
            primary_weight,
            reason,
        } => (
            client
                .call(
                    Method::PUT,
                    &format!("/v1/services/{service}/domains/{domain}/dns-pin"),
                    Some(json!({ "primary_weight": primary_weight, "reason": reason })),
                )
                .await?,
            details,
        ),
        CtlCommand::Unpin { service, domain } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/services/{service}/domains/{domain}/dns-pin"),
                    None,
                )
                .await?;
            (json!({ "unpinned": domain }), details)
        }
        CtlCommand::DnsChanges {
            service,
            status,
            limit,
        } => {
            let mut path = format!("/v1/dns/changes?limit={limit}");
            if let Some(s) = service {
                path.push_str(&format!("&service_id={s}"));
            }
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            (client.call(Method::GET, &path, None).await?, |v| {
                table(
                    v,
                    &[
                        ("ID", "/id"),
                        ("ZONE", "/zone"),
                        ("STATUS", "/status"),
                        ("ATTEMPT", "/attempt"),
                        ("SUBMITTED", "/submitted_at"),
                        ("RECORDS", "/changes"),
                        ("ERROR", "/error"),
                    ],
                )
            })
        }
        CtlCommand::Drill {
            service,
            domain,
            duration,
            reason,
        } => (
            client
                .call(
                    Method::POST,
                    &format!("/v1/services/{service}/domains/{domain}/drills"),
                    Some(json!({ "duration_seconds": duration, "reason": reason })),
                )
                .await?,
            details,
        ),
        CtlCommand::Drills { service, domain } => (
            client
                .call(
                    Method::GET,
                    &format!("/v1/services/{service}/domains/{domain}/drills"),
                    None,
                )
                .await?,
            |v| {
                table(
                    v,
                    &[
                        ("ID", "/id"),
                        ("STATUS", "/status"),
                        ("OUTCOME", "/outcome"),
                        ("REQUESTED", "/requested_at"),
                        ("ENDS", "/ends_at"),
                        ("BY", "/requested_by"),
                        ("REASON", "/reason"),
                    ],
                )
            },
        ),
        CtlCommand::CancelDrill {
            service,
            domain,
            drill,
        } => (
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/services/{service}/domains/{domain}/drills/{drill}"),
                    None,
                )
                .await?,
            details,
        ),
        CtlCommand::Maintenance {
            service,
            domain,
            duration,
            reason,
        } => {
            let ends_at = chrono::Utc::now() + chrono::TimeDelta::seconds(duration as i64);
            let mut body = json!({ "ends_at": ends_at, "reason": reason });
            if let Some(d) = domain {
                body["domain_id"] = json!(d);
            }
            (
                client
                    .call(
                        Method::POST,
                        &format!("/v1/services/{service}/maintenance-windows"),
                        Some(body),
                    )
                    .await?,
                details,
            )
        }
        CtlCommand::Bill => (
            client.call(Method::POST, "/v1/billing-runs", None).await?,
            details,
        ),
        CtlCommand::Usage => (client.call(Method::GET, "/v1/usage", None).await?, |v| {
            let mut out = format!(
                "period {} → {} ({})\n",
                v["period_start"].as_str().unwrap_or("?"),
                v["period_end"].as_str().unwrap_or("?"),
                v["time_zone"].as_str().unwrap_or("?")
            );
            out.push_str(&table(
                &v["metrics"],
                &[
                    ("METRIC", "/metric"),
                    ("TOTAL", "/total"),
                    ("EVENTS", "/events"),
                    ("QUOTA", "/quota"),
                    ("USED %", "/percent_used"),
                    ("OVER QUOTA", "/over_quota"),
                ],
            ));
            out
        }),
        CtlCommand::Slos { date, status } => {
            let mut query = Vec::new();
            if let Some(d) = date {
                query.push(format!("business_date={d}"));
            }
            if let Some(s) = status {
                // Statuses are plain words; anything else is the API's to refuse.
                let s: String = s
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                query.push(format!("status={s}"));
            }
            let path = format!("/v1/slo-board?{}", query.join("&"));
            (client.call(Method::GET, &path, None).await?, |v| {
                let mut out = format!(
                    "business date {}\n",
                    v["business_date"].as_str().unwrap_or("?")
                );
                out.push_str(&table(
                    &v["slos"],
                    &[
                        ("SLO", "/slo"),
                        ("APPLICATION", "/application"),
                        ("STATUS", "/status"),
                        ("EXPECTED END", "/expected_end"),
                        ("ACTUAL END", "/actual_end"),
                        ("LATE BY (S)", "/late_by_seconds"),
                        ("ALERTS", "/alerts"),
                    ],
                ));
                out
            })
        }
        CtlCommand::Cluster => (
            client.send(Method::GET, "/v1/cluster", None, true).await?,
            |v| {
                let mut out = table(
                    &v["nodes"],
                    &[
                        ("NODE", "/node_id"),
                        ("REGION", "/vantage"),
                        ("ALIVE", "/alive"),
                        ("SHARDS", "/shards"),
                        ("HEARTBEAT", "/heartbeat_at"),
                    ],
                );
                if let Some(n) = v["unowned_shards"].as_i64() {
                    out.push_str(&format!("unowned shards: {n}\n"));
                }
                out
            },
        ),
    };
    Ok(if json_out {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )
    } else {
        render(&value)
    })
}

/// `90s`, `10m`, `1h30m` → seconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    crate::config::HumanDuration::parse(text).map(|d| d.0.as_secs())
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_i64())
        .collect()
}

/// A cell: strings as they are, weights as `primary/backup`, lists by their length (DNS
/// change records: the domains they name), null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let names: Vec<&str> = items.iter().filter_map(|i| i["name"].as_str()).collect();
            if names.is_empty() {
                items.len().to_string()
            } else {
                names.join(",")
            }
        }
        Value::Object(o) if o.contains_key("primary") && o.contains_key("backup") => {
            format!("{}/{}", cell(&o["primary"]), cell(&o["backup"]))
        }
        other => other.to_string(),
    }
}

/// Rows of `rows` (a JSON array) under `columns` (header, JSON pointer), aligned.
fn table(rows: &Value, columns: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            columns
                .iter()
                .map(|(_, pointer)| cell(row.pointer(pointer).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    if rows.is_empty() {
        return "(none)\n".to_owned();
    }
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(columns.iter().map(|(h, _)| *h).collect());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// One object as `key: value` lines, nested objects indented.
fn details(v: &Value) -> String {
    fn walk(v: &Value, indent: usize, out: &mut String) {
        match v {
            Value::Object(map) => {
                for (k, item) in map {
                    match item {
                        Value::Object(_) => {
                            out.push_str(&format!("{:indent$}{k}:\n", ""));
                            walk(item, indent + 2, out);
                        }
                        Value::Array(items) if items.iter().any(Value::is_object) => {
                            out.push_str(&format!("{:indent$}{k}:\n", ""));
                            for i in items {
                                out.push_str(&format!("{:w$}-\n", "", w = indent + 2));
                                walk(i, indent + 4, out);
                            }
                        }
                        other => out.push_str(&format!("{:indent$}{k}: {}\n", "", cell(other))),
                    }
                }
            }
            other => out.push_str(&format!("{:indent$}{}\n", "", cell(other))),
        }
    }
    let mut out = String::new();
    walk(v, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_show_weights_nulls_and_record_names() {
        let rows = json!([
            {"id": 1, "name": "app.example.com", "w": {"primary": 0, "backup": 100}, "x": null,
             "changes": [{"name": "a.example.com"}, {"name": "b.example.com"}]},
            {"id": 22, "name": "b", "w": {"primary": 100, "backup": 0}, "x": "y", "changes": []},
        ]);
        let out = table(
            &rows,
            &[
                ("ID", "/id"),
                ("NAME", "/name"),
                ("W", "/w"),
                ("X", "/x"),
                ("C", "/changes"),
            ],
        );
        assert_eq!(
            out,
            "ID  NAME             W      X  C\n\
             1   app.example.com  0/100  -  a.example.com,b.example.com\n\
             22  b                100/0  y  0\n"
        );
        assert_eq!(table(&json!([]), &[("ID", "/id")]), "(none)\n");
    }

    #[test]
    fn details_indent_nested_objects() {
        let out = details(&json!({"state": "storm", "primary": {"availability": 0.5}}));
        assert_eq!(out, "primary:\n  availability: 0.5\nstate: storm\n");
    }
}
