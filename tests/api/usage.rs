//! The usage ingestor against a local fake of Cloudflare's GraphQL Analytics API (the real
//! request and response shapes): paging, attribution to the CDN's role, idempotent replays,
//! billed windows never changed, errors backed off.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tranche::cloudflare::CloudflareSource;
use tranche::cloudflare::fake::{FakeCloudflare, Fault, Row};
use tranche::config::Secret;
use tranche::node::{EngineOptions, UsageOptions};
use tranche_core::usage::UsageSettings;

use crate::helpers::{Auth, TestApp, eventually, spawn_app, test_billing};

const DEV: Auth = Auth::Header(1);
const ACCOUNT: &str = "0123456789abcdef";
const TOKEN: &str = "cf-test-token";

fn hour(ago: i64) -> DateTime<Utc> {
    let now = Utc::now();
    let top = now
        - TimeDelta::seconds(now.timestamp() % 3600)
        - TimeDelta::nanoseconds(now.timestamp_subsec_nanos() as i64);
    top - TimeDelta::hours(ago)
}

fn ts(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

async fn add_domain(app: &TestApp, service: i64, name: &str) {
    app.post(
        &format!("/v1/services/{service}/domains"),
        &DEV,
        json!({ "name": name }),
    )
    .await
    .expect(201);
}

/// Starts a node ingesting from `fake` (pages of `page` rows, fast backoff) and billing on
/// demand; waits until the customer's shard is owned.
async fn start(app: &mut TestApp, fake: &FakeCloudflare, page: u32, token: &str) {
    let source = CloudflareSource::new(Some(&fake.base_url()), ACCOUNT, Secret::new(token))
        .unwrap()
        .with_page_size(page);
    app.start_engine_with(EngineOptions {
        billing: Some(test_billing()),
        usage: Some(UsageOptions {
            settings: UsageSettings {
                tick: Duration::from_secs(3600),
                first_poll: Duration::from_secs(3600),
                backoff_base: Duration::from_millis(20),
                ..UsageSettings::default()
            },
            sources: vec![Arc::new(source)],
        }),
        ..EngineOptions::default()
    })
    .await;
    let engine = app.engine();
    eventually("the billing shard", Duration::from_secs(20), || async {
        engine.billed_customers().await.contains(&1).then_some(())
    })
    .await;
}

/// A service with one hostname, and a fake Cloudflare with one row for it an hour ago.
async fn one_hostname(app: &TestApp, bytes: u64) -> (i64, FakeCloudflare) {
    let web = app.create_service(&DEV, "web").await;
    add_domain(app, web, "www.example.com").await;
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN).await.unwrap();
    fake.set_rows(vec![Row {
        host: "www.example.com".into(),
        at: hour(1),
        bytes,
    }]);
    (web, fake)
}

async fn snapshots(app: &TestApp, service: i64) -> Vec<serde_json::Value> {
    app.get(&format!("/v1/services/{service}/usage-snapshots"), &DEV)
        .await
        .expect(200)
        .body
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn ingestion_pages_attributes_and_replays_idempotently() {
    let mut app = spawn_app().await;
    // Cloudflare is the primary of `web` and the backup of `api`.
    let web = app.create_service(&DEV, "web").await;
    let api = app
        .post(
            "/v1/services",
            &DEV,
            json!({ "name": "api", "primary_cdn": "fastly", "backup_cdn": "Cloudflare" }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    add_domain(&app, web, "www.example.com").await;
    add_domain(&app, web, "static.example.com").await;
    add_domain(&app, api, "api.example.com").await;

    let fake = FakeCloudflare::start(ACCOUNT, TOKEN).await.unwrap();
    let mut rows = Vec::new();
    for ago in 1..=5 {
        for (host, bytes) in [
            ("www.example.com", 1000),
            ("static.example.com", 10),
            ("api.example.com", 7),
        ] {
            rows.push(Row {
                host: host.into(),
                at: hour(ago),
                bytes: bytes * ago as u64,
            });
        }
    }
    // Outside the lookback, and a hostname nobody has: ignored.
    rows.push(Row {
        host: "www.example.com".into(),
        at: hour(30),
        bytes: 5,
    });
    rows.push(Row {
        host: "other.example.org".into(),
        at: hour(1),
        bytes: 5,
    });
    fake.set_rows(rows);

    start(&mut app, &fake, 4, TOKEN).await;
    let summary = app.engine().ingest_usage_now().await.unwrap();
    assert!(summary.failures.is_empty(), "{summary:?}");
    assert_eq!(summary.rows, 15, "every row in the lookback, across pages");
    assert!(
        fake.pages() >= 4,
        "15 rows in pages of 4: {} pages",
        fake.pages()
    );
    assert_eq!(summary.snapshots_written, 10);

    let web_snaps = snapshots(&app, web).await;
    assert_eq!(web_snaps.len(), 5);
    let newest = &web_snaps[0];
    assert_eq!(ts(&newest["window_start"]), hour(1));
    assert_eq!(ts(&newest["window_end"]), hour(0));
    assert_eq!(
        newest["primary_bytes"], 1010,
        "www + static, through the primary"
    );
    assert_eq!(newest["backup_bytes"], 0);
    assert_eq!(newest["source"], "cloudflare");
    let api_snaps = snapshots(&app, api).await;
    assert_eq!(api_snaps.len(), 5);
    assert_eq!(
        (
            api_snaps[4]["primary_bytes"].as_i64(),
            api_snaps[4]["backup_bytes"].as_i64()
        ),
        (Some(0), Some(35))
    );

    // A replay writes nothing.
    let again = app.engine().ingest_usage_now().await.unwrap();
    assert_eq!(again.snapshots_written, 0, "{again:?}");
    assert_eq!(snapshots(&app, web).await, web_snaps);
    // Each pass reports itself into SLO tracking (dogfooding): a `usage-ingestion` run per UTC
    // date it reached, started once, replays adding nothing.
    let runs: Vec<(chrono::NaiveDate, String, String)> = sqlx::query_as(
        "select business_date, run_id, status from job_status
          where customer_id = 1 and application = 'tranche' and job = 'usage-ingestion'
          order by business_date, status",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // The span ends at the last whole window: today's date, or yesterday's just after midnight.
    let today = chrono::Utc::now().date_naive();
    let latest = runs.iter().filter(|r| r.2 == "start").map(|r| r.0).max();
    assert!(
        latest.is_some_and(|d| d == today || d == today - chrono::Duration::days(1)),
        "{runs:?}"
    );
    assert!(
        runs.iter().all(|(d, run, _)| *run == d.to_string()),
        "{runs:?}"
    );
    let starts = runs.iter().filter(|r| r.2 == "start").count();
    assert!(
        (1..=2).contains(&starts),
        "the dates of a 6-hour lookback: {runs:?}"
    );

    // Bill, then Cloudflare reports more for an hour: the billed snapshot stays, the
    // difference becomes an adjustment.
    assert_eq!(
        app.engine()
            .bill_now()
            .await
            .unwrap()
            .unwrap()
            .snapshots_billed,
        10
    );
    let mut rows: Vec<Row> = Vec::new();
    for ago in 1..=5 {
        let extra = if ago == 2 { 500 } else { 0 };
        rows.push(Row {
            host: "www.example.com".into(),
            at: hour(ago),
            bytes: 1000 * ago as u64 + extra,
        });
        rows.push(Row {
            host: "static.example.com".into(),
            at: hour(ago),
            bytes: 10 * ago as u64,
        });
        rows.push(Row {
            host: "api.example.com".into(),
            at: hour(ago),
            bytes: 7 * ago as u64,
        });
    }
    fake.set_rows(rows);
    let late = app.engine().ingest_usage_now().await.unwrap();
    assert_eq!(late.snapshots_written, 1, "{late:?}");
    let after = snapshots(&app, web).await;
    assert_eq!(after.len(), 6);
    let two_hours: Vec<_> = after
        .iter()
        .filter(|s| ts(&s["window_start"]) == hour(2))
        .collect();
    assert_eq!(two_hours.len(), 2);
    assert_eq!(
        two_hours[0]["primary_bytes"], 2020,
        "the invoiced snapshot is unchanged"
    );
    assert!(two_hours[0]["invoice_id"].is_string());
    assert_eq!(
        (
            two_hours[1]["revision"].as_i64(),
            two_hours[1]["primary_bytes"].as_i64()
        ),
        (Some(1), Some(500))
    );
    assert_eq!(two_hours[1]["invoice_id"], serde_json::Value::Null);
    // And replaying the late data is idempotent too.
    assert_eq!(
        app.engine()
            .ingest_usage_now()
            .await
            .unwrap()
            .snapshots_written,
        0
    );
}

#[tokio::test]
async fn errors_back_off_and_recover() {
    let mut app = spawn_app().await;
    let (web, fake) = one_hostname(&app, 42).await;
    start(&mut app, &fake, 100, TOKEN).await;
    let before = fake.requests();
    fake.fail_next([
        Fault::Http {
            status: 429,
            retry_after: Some(0),
        },
        Fault::Http {
            status: 502,
            retry_after: None,
        },
        Fault::Graphql("rate limiter budget depleted, try again later".into()),
    ]);
    let summary = app.engine().ingest_usage_now().await.unwrap();
    assert!(summary.failures.is_empty(), "{summary:?}");
    assert_eq!(summary.snapshots_written, 1);
    assert_eq!(
        fake.requests() - before,
        4,
        "three failures, then the answer"
    );

    // More failures than attempts: the tick gives up (recorded), nothing is written, and the
    // next tick succeeds.
    fake.set_rows(vec![Row {
        host: "www.example.com".into(),
        at: hour(1),
        bytes: 43,
    }]);
    fake.fail_next((0..5).map(|_| Fault::Http {
        status: 500,
        retry_after: None,
    }));
    let failed = app.engine().ingest_usage_now().await.unwrap();
    assert_eq!(failed.failures.len(), 1, "{failed:?}");
    assert_eq!(snapshots(&app, web).await[0]["primary_bytes"], 42);
    assert_eq!(
        app.engine()
            .ingest_usage_now()
            .await
            .unwrap()
            .snapshots_written,
        1
    );
    assert_eq!(snapshots(&app, web).await[0]["primary_bytes"], 43);
}

#[tokio::test]
async fn a_rejected_token_fails_at_once_without_retries() {
    let mut app = spawn_app().await;
    let (web, fake) = one_hostname(&app, 42).await;
    start(&mut app, &fake, 100, "wrong-token").await;
    let before = fake.requests();
    let summary = app.engine().ingest_usage_now().await.unwrap();
    assert_eq!(summary.failures.len(), 1, "{summary:?}");
    assert!(summary.failures[0].contains("authz"), "{summary:?}");
    assert_eq!(
        fake.requests() - before,
        1,
        "permanent errors are not retried"
    );
    assert!(snapshots(&app, web).await.is_empty());
}
