//! Whatever a client sends, the answer is a well-formed response below 500.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Auth, spawn_app};

#[tokio::test]
async fn hostile_inputs_never_produce_a_server_error() {
    let app = spawn_app().await;
    let demo = Auth::Header(1);
    let sid = app.create_service(&demo, "web").await;
    let paths = [
        "/v1/services".to_owned(),
        format!("/v1/services/{sid}"),
        format!("/v1/services/{sid}/domains"),
        format!("/v1/services/{sid}/domains/1"),
        format!("/v1/services/{sid}/storm-policies"),
        format!("/v1/services/{sid}/storm-policies/1"),
        "/v1/services/-1".to_owned(),
        "/v1/services/0/domains".to_owned(),
        "/v1/services/9223372036854775807".to_owned(),
        "/v1/admin/customers".to_owned(),
        format!("/v1/services/{sid}/usage-snapshots"),
        format!("/v1/services/{sid}/usage-snapshots?from=yesterday&limit=0"),
        "/v1/invoices".to_owned(),
        "/v1/invoices?status=x&before=never&limit=-1".to_owned(),
        "/v1/invoices/00000000-0000-0000-0000-000000000000".to_owned(),
        "/v1/invoices/1".to_owned(),
        "/v1/billing-runs?limit=1000000".to_owned(),
    ];
    let huge = "x".repeat(100_000);
    let bodies: Vec<String> = vec![
        String::new(),
        "null".into(),
        "{}".into(),
        "[]".into(),
        "\"str\"".into(),
        "{\"name\": null}".into(),
        "{\"name\": {\"nested\": true}}".into(),
        "{\"name\": \"\\u0000\"}".into(),
        json!({ "name": huge, "primary_cdn": huge, "backup_cdn": huge }).to_string(),
        json!({ "threshold_avail": 1e308, "window_seconds": 2147483647, "cooldown_seconds": 2147483647, "min_samples": 2147483647, "probe_interval_seconds": 2147483647 }).to_string(),
        json!({ "threshold_avail": 5e-324, "max_coverage_factor": 1.7976931348623157e308 }).to_string(),
        "{\"name\": \"a\", \"name\": \"b\", \"primary_cdn\": \"x\", \"backup_cdn\": \"y\"}".into(),
        "\u{feff}{}".into(),
        "{\"name\":\"é.example.com\"}".into(),
        json!({ "snapshots": "all" }).to_string(),
        json!({ "snapshots": [{ "window_start": "2026-11-20T10:00:00Z", "window_end": "9999-12-31T23:59:59Z", "primary_bytes": 1e30, "backup_bytes": -0.5 }] }).to_string(),
        json!({ "snapshots": [{ "window_start": "-262143-01-01T00:00:00Z", "window_end": "2026-11-20T10:00:00Z", "primary_bytes": 9223372036854775807_i64, "backup_bytes": 9223372036854775807_i64 }] }).to_string(),
        json!({ "snapshots": (0..1001).map(|i| json!({ "window_start": "2026-11-20T10:00:00Z", "window_end": "2026-11-20T11:00:00Z", "primary_bytes": i, "backup_bytes": 0, "source": format!("s{i}") })).collect::<Vec<_>>() }).to_string(),
    ];
    let methods = [
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::PUT,
    ];
    for path in &paths {
        for method in &methods {
            for body in &bodies {
                let resp = app.request(method.clone(), path, &demo, Some(body)).await;
                assert!(
                    resp.status.as_u16() < 500,
                    "{method} {path} with {:?} → {}: {}",
                    &body[..body.len().min(80)],
                    resp.status,
                    resp.text
                );
                if !resp.status.is_success() {
                    assert!(
                        resp.body["code"].is_string(),
                        "{method} {path}: not the error shape: {}",
                        resp.text
                    );
                }
            }
        }
    }
}
