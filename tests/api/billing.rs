//! Usage snapshots and invoicing, end to end on a real PostgreSQL: snapshots and storms in,
//! invoices out, equal to the pure billing function; exactly-once under concurrent runs and
//! nodes; a crash mid-run leaves nothing behind.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;
use tranche::node::EngineOptions;
use tranche::postgres::billing::PgBillingStore;
use tranche_actors::ports::{BillingStore, Fence, StoreError};
use tranche_core::billing::{BillingSettings, Rates, StormSpan, Usage, price};
use tranche_core::domain::customer_shard;
use uuid::Uuid;

use crate::helpers::{Auth, TestApp, eventually, spawn_app, start_node, test_billing};

const GB: i64 = 1 << 30;
const DEV: Auth = Auth::Header(1);

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A timestamp from a response.
fn ts(v: &Value) -> DateTime<Utc> {
    t(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")))
}

fn d(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

fn window(start: &str, hours: i64, primary: i64, backup: i64) -> Value {
    let s = t(start);
    json!({
        "window_start": s,
        "window_end": s + TimeDelta::hours(hours),
        "primary_bytes": primary,
        "backup_bytes": backup,
    })
}

async fn post_usage(app: &TestApp, auth: &Auth, service: i64, snapshots: Vec<Value>) -> Value {
    app.post(
        &format!("/v1/services/{service}/usage-snapshots"),
        auth,
        json!({ "snapshots": snapshots }),
    )
    .await
    .expect(200)
    .body
}

fn outcomes(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect()
}

async fn storm(pool: &PgPool, service: i64, from: &str, to: Option<&str>) -> Uuid {
    sqlx::query_scalar(
        "insert into storm_events (service_id, kind, started_at, ended_at)
         values ($1, 'http_availability', $2, $3) returning id",
    )
    .bind(service)
    .bind(t(from))
    .bind(to.map(t))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Starts a billing node and waits until it has an actor for `customer`.
async fn start_billing(app: &mut TestApp, settings: BillingSettings, customer: i64) {
    app.start_engine_with(EngineOptions {
        billing: Some(settings),
        ..EngineOptions::default()
    })
    .await;
    let engine = app.engine();
    eventually("the billing actor", Duration::from_secs(20), || async {
        engine
            .billed_customers()
            .await
            .contains(&customer)
            .then_some(())
    })
    .await;
}

async fn bill(app: &TestApp) -> tranche_actors::ports::BillingRunSummary {
    app.engine()
        .bill_now()
        .await
        .expect("this node bills")
        .expect("billing run")
}

#[tokio::test]
async fn invoices_equal_the_pure_function_with_storms_and_policies() {
    let mut app = spawn_app().await;
    let insured = app.create_service(&DEV, "insured").await;
    let plain = app.create_service(&DEV, "plain").await;
    app.post(
        &format!("/v1/services/{insured}/storm-policies"),
        &DEV,
        json!({ "max_coverage_factor": 1.5 }),
    )
    .await
    .expect(201);
    // Overlapping storms, then one still open; none on the other service.
    let s1 = storm(
        &app.pool,
        insured,
        "2026-11-20T10:15:00Z",
        Some("2026-11-20T10:45:00Z"),
    )
    .await;
    let s2 = storm(
        &app.pool,
        insured,
        "2026-11-20T10:30:00Z",
        Some("2026-11-20T11:20:00Z"),
    )
    .await;
    let s3 = storm(&app.pool, insured, "2026-11-20T13:40:00Z", None).await;
    let body = post_usage(
        &app,
        &DEV,
        insured,
        vec![
            window("2026-11-20T10:00:00Z", 1, 10 * GB, 4 * GB),
            window("2026-11-20T11:00:00Z", 1, 10 * GB, 3 * GB + 12345),
            window("2026-11-20T12:00:00Z", 1, 7 * GB, 0),
            window("2026-11-20T13:00:00Z", 1, GB / 3, 1 << 28),
        ],
    )
    .await;
    assert_eq!(outcomes(&body), ["created"; 4]);
    post_usage(
        &app,
        &DEV,
        plain,
        vec![window("2026-11-20T10:00:00Z", 1, 1 << 62, 1 << 62)],
    )
    .await;

    start_billing(&mut app, test_billing(), 1).await;
    let run = bill(&app).await;
    assert_eq!(run.snapshots_billed, 5);
    assert_eq!(run.invoices_created, 1);

    let list = app.get("/v1/invoices", &DEV).await.expect(200).body;
    let invoices = list.as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{list}");
    let id = invoices[0]["id"].as_str().unwrap();
    assert_eq!(invoices[0]["status"], "draft");
    assert_eq!(invoices[0]["currency"], "USD");
    assert_eq!(ts(&invoices[0]["period_start"]), t("2026-11-20T00:00:00Z"));
    assert_eq!(ts(&invoices[0]["period_end"]), t("2026-11-21T00:00:00Z"));

    let detail = app
        .get(&format!("/v1/invoices/{id}"), &DEV)
        .await
        .expect(200)
        .body;
    let lines = detail["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 5);
    assert_eq!(detail["line_count"], 5);
    let insured_storms = [
        StormSpan {
            started_at: t("2026-11-20T10:15:00Z"),
            ended_at: Some(t("2026-11-20T10:45:00Z")),
        },
        StormSpan {
            started_at: t("2026-11-20T10:30:00Z"),
            ended_at: Some(t("2026-11-20T11:20:00Z")),
        },
        StormSpan {
            started_at: t("2026-11-20T13:40:00Z"),
            ended_at: None,
        },
    ];
    let ids = [s1, s2, s3];
    let (mut subtotal, mut discount, mut total) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    for line in lines {
        let service = line["service_id"].as_i64().unwrap();
        let usage = Usage {
            window_start: t(line["window_start"].as_str().unwrap()),
            window_end: t(line["window_end"].as_str().unwrap()),
            primary_bytes: line["primary_bytes"].as_i64().unwrap(),
            backup_bytes: line["backup_bytes"].as_i64().unwrap(),
        };
        let (storms, factor): (&[StormSpan], Decimal) = if service == insured {
            (&insured_storms, Decimal::new(15, 1))
        } else {
            (&[], Decimal::ONE)
        };
        let want = price(&usage, storms, factor, &Rates::default()).unwrap();
        assert_eq!(
            d(&line["primary_charge_cents"]),
            want.primary.cents,
            "{line}"
        );
        assert_eq!(d(&line["backup_charge_cents"]), want.backup.cents, "{line}");
        assert_eq!(d(&line["subtotal_cents"]), want.subtotal_cents, "{line}");
        assert_eq!(d(&line["coverage"]), want.coverage, "{line}");
        assert_eq!(
            d(&line["storm_overlap_seconds"]),
            want.storm_overlap_seconds,
            "{line}"
        );
        assert_eq!(d(&line["discount_exact"]), want.discount_exact, "{line}");
        assert_eq!(d(&line["discount_cents"]), want.discount_cents, "{line}");
        assert_eq!(d(&line["total_cents"]), want.total_cents, "{line}");
        assert_eq!(d(&line["max_coverage_factor"]), factor, "{line}");
        let want_storms: Vec<String> = want.storms.iter().map(|&i| ids[i].to_string()).collect();
        let got_storms: Vec<String> = line["storm_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got_storms, want_storms, "{line}");
        subtotal += want.subtotal_cents;
        discount += want.discount_cents;
        total += want.total_cents;
    }
    // The 10:00 window of the insured service: storms cover 10:15–11:00 (union), 2700 s.
    let ten = lines
        .iter()
        .find(|l| l["service_id"] == insured && ts(&l["window_start"]) == t("2026-11-20T10:00:00Z"))
        .unwrap();
    assert_eq!(ten["storm_overlap_seconds"], "2700");
    assert_eq!(ten["coverage"], "1.125");
    // 48 ¢ of backup × 0.5 × 1.125 = 27 ¢.
    assert_eq!(ten["discount_cents"], "27");
    assert_eq!(d(&detail["subtotal_cents"]), subtotal);
    assert_eq!(d(&detail["discount_cents"]), discount);
    assert_eq!(d(&detail["total_cents"]), total);
    assert!(
        subtotal > Decimal::from(100_000_000_000i64),
        "2^62 bytes bill in the billions of cents"
    );
    let storms: Vec<&str> = detail["storms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(storms, [s1.to_string(), s2.to_string(), s3.to_string()]);

    // Every snapshot lists the invoice its line is on; the run is on record; a second run bills
    // nothing and records nothing.
    let snaps = app
        .get(&format!("/v1/services/{insured}/usage-snapshots"), &DEV)
        .await
        .expect(200)
        .body;
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["invoice_id"] == id)
    );
    assert_eq!(bill(&app).await.snapshots_billed, 0);
    let runs = app.get("/v1/billing-runs", &DEV).await.expect(200).body;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["snapshots_billed"], 5);
    assert_eq!(runs[0]["error"], Value::Null);

    // Another customer sees none of it.
    let (_, key) = app.create_customer("other").await;
    let other = Auth::Key(key);
    app.get(&format!("/v1/invoices/{id}"), &other)
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(
        app.get("/v1/invoices", &other).await.expect(200).body,
        json!([])
    );
    assert_eq!(
        app.get("/v1/billing-runs", &other).await.expect(200).body,
        json!([])
    );
    crate::helpers::assert_events_conform(&app.pool, &["invoice.created"]).await;
}

#[tokio::test]
async fn snapshots_are_idempotent_and_never_change_once_invoiced() {
    let mut app = spawn_app().await;
    let service = app.create_service(&DEV, "web").await;
    let path = format!("/v1/services/{service}/usage-snapshots");
    let w = |p, b| window("2026-11-20T10:00:00Z", 1, p, b);

    let first = post_usage(&app, &DEV, service, vec![w(100, 50)]).await;
    assert_eq!(outcomes(&first), ["created"]);
    let id = first["results"][0]["snapshot"]["id"].clone();
    assert_eq!(
        outcomes(&post_usage(&app, &DEV, service, vec![w(100, 50)]).await),
        ["unchanged"]
    );
    let updated = post_usage(&app, &DEV, service, vec![w(200, 50)]).await;
    assert_eq!(outcomes(&updated), ["updated"]);
    assert_eq!(updated["results"][0]["snapshot"]["id"], id);
    assert_eq!(updated["results"][0]["snapshot"]["primary_bytes"], 200);

    start_billing(&mut app, test_billing(), 1).await;
    assert_eq!(bill(&app).await.snapshots_billed, 1);

    // The invoiced window: a replay changes nothing; more usage becomes an adjustment.
    assert_eq!(
        outcomes(&post_usage(&app, &DEV, service, vec![w(200, 50)]).await),
        ["unchanged"]
    );
    let adjusted = post_usage(&app, &DEV, service, vec![w(300, 80)]).await;
    assert_eq!(outcomes(&adjusted), ["adjusted"]);
    let adj = &adjusted["results"][0]["snapshot"];
    assert_eq!(
        (adj["revision"].as_i64(), adj["adjustment"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        (adj["primary_bytes"].as_i64(), adj["backup_bytes"].as_i64()),
        (Some(100), Some(30))
    );
    // The adjustment is itself unbilled, so a newer total updates it.
    let again = post_usage(&app, &DEV, service, vec![w(300, 90)]).await;
    assert_eq!(outcomes(&again), ["updated"]);
    assert_eq!(again["results"][0]["snapshot"]["backup_bytes"], 40);
    // Less than was invoiced: nothing is taken back, and the pending adjustment shrinks to
    // what is still unbilled (nothing).
    let less = post_usage(&app, &DEV, service, vec![w(150, 50)]).await;
    assert_eq!(outcomes(&less), ["updated"]);
    assert_eq!(less["results"][0]["snapshot"]["primary_bytes"], 0);
    assert_eq!(
        outcomes(&post_usage(&app, &DEV, service, vec![w(300, 90)]).await),
        ["updated"]
    );

    let all = app.get(&path, &DEV).await.expect(200).body;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["revision"], 0);
    assert_eq!(
        all[0]["primary_bytes"], 200,
        "the invoiced snapshot never changes"
    );
    assert!(all[0]["invoice_id"].is_string());
    assert_eq!(all[1]["invoice_id"], Value::Null);
    let unbilled = app
        .get(&format!("{path}?unbilled=true"), &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(unbilled.as_array().unwrap().len(), 1);

    // The adjustment lands on the period's (still draft) invoice, marked as such.
    assert_eq!(bill(&app).await.snapshots_billed, 1);
    let invoices = app.get("/v1/invoices", &DEV).await.expect(200).body;
    assert_eq!(invoices.as_array().unwrap().len(), 1);
    let detail = app
        .get(
            &format!("/v1/invoices/{}", invoices[0]["id"].as_str().unwrap()),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    let flags: Vec<bool> = detail["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["adjustment"].as_bool().unwrap())
        .collect();
    assert_eq!(flags.iter().filter(|a| **a).count(), 1);
    // Everything for the window is invoiced now: a lower report records nothing.
    assert_eq!(
        outcomes(&post_usage(&app, &DEV, service, vec![w(150, 50)]).await),
        ["below_billed"]
    );
}

#[tokio::test]
async fn late_usage_for_a_finalized_period_goes_on_the_current_invoice() {
    let mut app = spawn_app().await;
    let service = app.create_service(&DEV, "web").await;
    let old = (Utc::now() - TimeDelta::days(3))
        .format("%Y-%m-%dT10:00:00Z")
        .to_string();
    post_usage(&app, &DEV, service, vec![window(&old, 1, 10 * GB, GB)]).await;
    let settings = BillingSettings {
        grace: Duration::from_secs(3600),
        ..test_billing()
    };
    start_billing(&mut app, settings, 1).await;
    let run = bill(&app).await;
    assert_eq!((run.snapshots_billed, run.invoices_finalized), (1, 1));
    let finalized = app
        .get("/v1/invoices?status=finalized", &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(finalized.as_array().unwrap().len(), 1);
    let closed_total = finalized[0]["total_cents"].clone();
    assert_eq!(closed_total, "132");

    let body = post_usage(&app, &DEV, service, vec![window(&old, 1, 10 * GB, 2 * GB)]).await;
    assert_eq!(outcomes(&body), ["adjusted"]);
    assert_eq!(bill(&app).await.snapshots_billed, 1);

    let drafts = app
        .get("/v1/invoices?status=draft", &DEV)
        .await
        .expect(200)
        .body;
    let drafts = drafts.as_array().unwrap();
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    let today = Utc::now().format("%Y-%m-%dT00:00:00Z").to_string();
    assert_eq!(ts(&drafts[0]["period_start"]), t(&today));
    assert_eq!(
        drafts[0]["total_cents"], "12",
        "1 GB more through the backup"
    );
    let detail = app
        .get(
            &format!("/v1/invoices/{}", drafts[0]["id"].as_str().unwrap()),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(detail["lines"][0]["adjustment"], true);
    assert_eq!(ts(&detail["lines"][0]["window_start"]), t(&old));
    let closed = app
        .get(
            &format!("/v1/invoices/{}", finalized[0]["id"].as_str().unwrap()),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(
        closed["total_cents"], closed_total,
        "a finalized invoice never changes"
    );
    assert_eq!(closed["line_count"], 1);
}

#[tokio::test]
async fn bad_snapshots_get_errors_naming_the_field() {
    let app = spawn_app().await;
    let service = app.create_service(&DEV, "web").await;
    let path = format!("/v1/services/{service}/usage-snapshots");
    let post = |body: Value| {
        let app = &app;
        let path = path.clone();
        async move { app.post(&path, &DEV, body).await }
    };
    let ok = window("2026-11-20T10:00:00Z", 1, 1, 1);
    let mut inverted = ok.clone();
    inverted["window_end"] = json!("2026-11-20T09:00:00Z");
    post(json!({ "snapshots": [ok, inverted] }))
        .await
        .expect_error(422, "validation_failed", Some("snapshots[1].window_end"));
    let mut negative = ok.clone();
    negative["backup_bytes"] = json!(-1);
    post(json!({ "snapshots": [negative] })).await.expect_error(
        422,
        "validation_failed",
        Some("snapshots[0].backup_bytes"),
    );
    // Larger than a bigint: rejected by the parser, still naming the field.
    let huge = r#"{"snapshots": [{"window_start": "2026-11-20T10:00:00Z", "window_end": "2026-11-20T11:00:00Z", "primary_bytes": 9223372036854775808, "backup_bytes": 0}]}"#;
    app.request(reqwest::Method::POST, &path, &DEV, Some(huge))
        .await
        .expect_error(422, "validation_failed", Some("snapshots[0].primary_bytes"));
    post(json!({ "snapshots": [ok, ok] })).await.expect_error(
        422,
        "validation_failed",
        Some("snapshots[1]"),
    );
    post(json!({ "snapshots": [] })).await.expect_error(
        422,
        "validation_failed",
        Some("snapshots"),
    );
    let mut bad_source = ok.clone();
    bad_source["source"] = json!("Not Valid!");
    post(json!({ "snapshots": [bad_source] }))
        .await
        .expect_error(422, "validation_failed", Some("snapshots[0].source"));
    let future = window(&(Utc::now() + TimeDelta::hours(2)).to_rfc3339(), 1, 1, 1);
    post(json!({ "snapshots": [future] })).await.expect_error(
        422,
        "validation_failed",
        Some("snapshots[0].window_start"),
    );
    let mut extra = ok.clone();
    extra["bytes"] = json!(1);
    post(json!({ "snapshots": [extra] })).await.expect_error(
        422,
        "validation_failed",
        Some("snapshots[0].bytes"),
    );
    app.post(
        "/v1/services/999999/usage-snapshots",
        &DEV,
        json!({ "snapshots": [ok] }),
    )
    .await
    .expect_error(404, "not_found", None);
    // Another customer's service does not exist for this one.
    let (_, key) = app.create_customer("other").await;
    app.post(
        &path,
        &Auth::Key(key.clone()),
        json!({ "snapshots": [window("2026-11-20T10:00:00Z", 1, 1, 1)] }),
    )
    .await
    .expect_error(404, "not_found", None);
    app.get(&path, &Auth::Key(key))
        .await
        .expect_error(404, "not_found", None);
    app.get("/v1/invoices/not-a-uuid", &DEV)
        .await
        .expect_error(400, "bad_request", Some("id"));
    app.get(&format!("/v1/invoices/{}", Uuid::new_v4()), &DEV)
        .await
        .expect_error(404, "not_found", None);
    app.get("/v1/invoices?status=paid", &DEV)
        .await
        .expect_error(400, "bad_request", Some("status"));
    let count: i64 = sqlx::query_scalar("select count(*) from usage_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing of a rejected request is recorded");
}

#[tokio::test]
async fn a_crash_at_the_end_of_a_run_leaves_no_partial_invoice() {
    let mut app = spawn_app().await;
    let service = app.create_service(&DEV, "web").await;
    post_usage(
        &app,
        &DEV,
        service,
        vec![window("2026-11-20T10:00:00Z", 1, GB, GB)],
    )
    .await;
    start_billing(&mut app, test_billing(), 1).await;
    let store = app.engine.as_ref().unwrap().billing.clone().unwrap();
    // A fault at the very end of the run (after the invoices and line items are written, when
    // the billing cursor moves), injected in the database itself.
    sqlx::raw_sql(
        "create function inject_failure() returns trigger language plpgsql as $$
         begin raise exception 'injected failure while moving the cursor'; end $$;
         create trigger inject_failure before insert or update on billing_cursors
            for each row execute function inject_failure();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let failed = app.engine().bill_now().await.unwrap();
    assert!(failed.is_err(), "{failed:?}");
    let counts: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from invoices), (select count(*) from invoice_line_items),
                (select count(*) from billing_cursors)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(counts, (0, 0, 0), "the whole run was rolled back");
    let runs = app.get("/v1/billing-runs", &DEV).await.expect(200).body;
    assert!(
        runs[0]["error"]
            .as_str()
            .unwrap()
            .contains("injected failure"),
        "{runs}"
    );

    sqlx::raw_sql("drop trigger inject_failure on billing_cursors")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(bill(&app).await.snapshots_billed, 1);
    let invoices = app.get("/v1/invoices", &DEV).await.expect(200).body;
    assert_eq!(invoices[0]["total_cents"], "24");

    // Run records are kept for the retention period, then pruned.
    let runs = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from billing_runs")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(runs(app.pool.clone()).await, 2);
    assert_eq!(
        store
            .prune_runs(Utc::now() - TimeDelta::days(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_runs(Utc::now() + TimeDelta::seconds(1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(runs(app.pool.clone()).await, 0);
}

/// A valid fence for the customer's shard (a lease row written for the test; no node holds it,
/// so only the database's guards separate the runs that share it).
async fn test_fence(pool: &PgPool, customer: i64) -> Fence {
    let shard = customer_shard(customer);
    let epoch: i64 = sqlx::query_scalar(
        "insert into shard_leases (shard, epoch, node_id) values ($1, 7, 'test')
         on conflict (shard) do update set epoch = shard_leases.epoch + 1 returning epoch",
    )
    .bind(shard as i16)
    .fetch_one(pool)
    .await
    .unwrap();
    Fence { shard, epoch }
}

/// Seeds `customers` customers with two services each and `windows` hourly snapshots per
/// service (bytes varying by row), and storms on the first service of every tenth customer.
async fn seed(pool: &PgPool, customers: i64, windows: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for c in 0..customers {
        let id: i64 = sqlx::query_scalar("insert into customers (name) values ($1) returning id")
            .bind(format!("load-{c}"))
            .fetch_one(pool)
            .await
            .unwrap();
        ids.push(id);
    }
    sqlx::query(
        "insert into services (customer_id, name, primary_cdn, backup_cdn)
         select c, n, 'cloudflare', 'fastly' from unnest($1::int8[]) c, unnest(array['a', 'b']) n",
    )
    .bind(&ids)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into storm_policies (service_id, max_coverage_factor)
         select id, 1.25 from services where customer_id = any($1) and name = 'a'",
    )
    .bind(&ids)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into storm_events (service_id, kind, started_at, ended_at)
         select s.id, 'http_availability', '2026-11-20T02:10:00Z', '2026-11-20T05:47:13Z'
           from services s
          where s.customer_id = any($1) and s.name = 'a' and s.customer_id % 10 = 0",
    )
    .bind(&ids)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into usage_snapshots (service_id, customer_id, window_start, window_end,
                                      primary_bytes, backup_bytes, source)
         select s.id, s.customer_id,
                '2026-11-20T00:00:00Z'::timestamptz + make_interval(hours => h),
                '2026-11-20T01:00:00Z'::timestamptz + make_interval(hours => h),
                (s.id * 7919 + h * 104729) % 50000000000, (s.id * 31 + h * 1299709) % 9000000000,
                'load'
           from services s, generate_series(0, $2 - 1) h
          where s.customer_id = any($1)",
    )
    .bind(&ids)
    .bind(windows as i32)
    .execute(pool)
    .await
    .unwrap();
    ids
}

/// What a single correct run must bill: the pure function over every snapshot.
async fn expected_totals(pool: &PgPool, customers: &[i64]) -> HashMap<i64, Decimal> {
    type SnapshotRow = (i64, i64, DateTime<Utc>, DateTime<Utc>, i64, i64);
    let snapshots: Vec<SnapshotRow> = sqlx::query_as(
        "select customer_id, service_id, window_start, window_end, primary_bytes, backup_bytes
           from usage_snapshots where customer_id = any($1)",
    )
    .bind(customers)
    .fetch_all(pool)
    .await
    .unwrap();
    let storms: Vec<(i64, DateTime<Utc>, Option<DateTime<Utc>>)> =
        sqlx::query_as("select service_id, started_at, ended_at from storm_events")
            .fetch_all(pool)
            .await
            .unwrap();
    let factors: HashMap<i64, Decimal> =
        sqlx::query_as("select service_id, max_coverage_factor from storm_policies")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut totals: HashMap<i64, Decimal> = HashMap::new();
    for (customer, service, ws, we, p, b) in snapshots {
        let spans: Vec<StormSpan> = storms
            .iter()
            .filter(|s| s.0 == service)
            .map(|s| StormSpan {
                started_at: s.1,
                ended_at: s.2,
            })
            .collect();
        let usage = Usage {
            window_start: ws,
            window_end: we,
            primary_bytes: p,
            backup_bytes: b,
        };
        let factor = factors.get(&service).copied().unwrap_or(Decimal::ONE);
        let line = price(&usage, &spans, factor, &Rates::default()).unwrap();
        *totals.entry(customer).or_default() += line.total_cents;
    }
    totals
}

/// Waits until none of `customers`' snapshots is unbilled.
async fn all_billed(pool: &PgPool, customers: &[i64], what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        let unbilled: i64 = sqlx::query_scalar(
            "select count(*) from usage_snapshots u where customer_id = any($1)
                and not exists (select 1 from invoice_line_items l where l.snapshot_id = u.id)",
        )
        .bind(customers)
        .fetch_one(pool)
        .await
        .unwrap();
        (unbilled == 0).then_some(())
    })
    .await;
}

/// Every snapshot is on exactly one line, and each customer's invoices add up to `expected`.
async fn assert_billed_exactly_once(
    pool: &PgPool,
    customers: &[i64],
    expected: &HashMap<i64, Decimal>,
) {
    let (snapshots, unbilled, lines, distinct): (i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from usage_snapshots where customer_id = any($1)),
                (select count(*) from usage_snapshots u where customer_id = any($1)
                    and not exists (select 1 from invoice_line_items l where l.snapshot_id = u.id)),
                (select count(*) from invoice_line_items l join invoices i on i.id = l.invoice_id
                  where i.customer_id = any($1)),
                (select count(distinct l.snapshot_id) from invoice_line_items l
                   join invoices i on i.id = l.invoice_id where i.customer_id = any($1))",
    )
    .bind(customers)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(unbilled, 0);
    assert_eq!(lines, snapshots, "one line per snapshot");
    assert_eq!(distinct, snapshots);
    let mismatched: i64 = sqlx::query_scalar(
        "select count(*) from usage_snapshots u join invoice_line_items l on l.snapshot_id = u.id
           join invoices i on i.id = l.invoice_id
          where i.customer_id <> u.customer_id or l.service_id <> u.service_id
             or l.window_start <> u.window_start or l.primary_bytes <> u.primary_bytes",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        mismatched, 0,
        "each line is its snapshot's, on an invoice of the snapshot's customer"
    );
    // With everything billed, each customer's billing cursor has reached its last snapshot.
    let behind: i64 = sqlx::query_scalar(
        "select count(*) from (select customer_id, max(seq) as top from usage_snapshots
                                where customer_id = any($1) group by customer_id) t
          where t.top is distinct from
                (select seq from billing_cursors c where c.customer_id = t.customer_id)",
    )
    .bind(customers)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        behind, 0,
        "every billing cursor is at its customer's last snapshot"
    );
    let invoices: Vec<(i64, i64, Decimal, Decimal, i64, Decimal)> = sqlx::query_as(
        "select i.customer_id, i.line_count::int8, i.total_cents,
                (select coalesce(sum(total_cents), 0) from invoice_line_items where invoice_id = i.id),
                (select count(*) from invoice_line_items where invoice_id = i.id),
                i.subtotal_cents - i.discount_cents
           from invoices i where i.customer_id = any($1)",
    )
    .bind(customers)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut per_customer: HashMap<i64, Decimal> = HashMap::new();
    for (customer, line_count, total, line_sum, lines, difference) in invoices {
        assert_eq!(
            total, line_sum,
            "invoice totals are the sums of their lines"
        );
        assert_eq!(line_count, lines);
        assert_eq!(total, difference);
        *per_customer.entry(customer).or_default() += total;
    }
    assert_eq!(&per_customer, expected);
}

#[tokio::test]
async fn three_runs_fighting_over_one_customer_bill_each_snapshot_once() {
    let app = spawn_app().await;
    let customers = seed(&app.pool, 1, 24).await;
    let customer = customers[0];
    // 2 services × 24 windows is too few to fight over: add a day of minute windows.
    sqlx::query(
        "insert into usage_snapshots (service_id, customer_id, window_start, window_end,
                                      primary_bytes, backup_bytes, source)
         select s.id, s.customer_id, '2026-11-01T00:00:00Z'::timestamptz + make_interval(mins => m),
                '2026-11-01T00:01:00Z'::timestamptz + make_interval(mins => m),
                m * 1000003, m * 7919, 'minutes'
           from services s, generate_series(0, 1439) m where s.customer_id = $1",
    )
    .bind(customer)
    .execute(&app.pool)
    .await
    .unwrap();
    let expected = expected_totals(&app.pool, &customers).await;
    // A valid fence for the customer's shard, shared by all three (no lease separates them:
    // only the database's guards do).
    let fence = test_fence(&app.pool, customer).await;
    let (shard, epoch) = (fence.shard, fence.epoch);
    let settings = BillingSettings {
        batch: 97,
        ..test_billing()
    };
    let store = Arc::new(PgBillingStore::new(app.pool.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for node in 0..3 {
        let (store, settings) = (store.clone(), settings.clone());
        tasks.spawn(async move {
            let mut billed = 0u32;
            loop {
                let run = store
                    .bill_customer(
                        customer,
                        fence,
                        Utc::now(),
                        &settings,
                        &format!("fighter-{node}"),
                    )
                    .await
                    .unwrap();
                billed += run.snapshots_billed;
                if run.snapshots_billed == 0 {
                    return billed;
                }
            }
        });
    }
    let mut total = 0;
    while let Some(billed) = tasks.join_next().await {
        total += billed.unwrap();
    }
    assert_eq!(total, 2928);
    assert_billed_exactly_once(&app.pool, &customers, &expected).await;
    let invoices: i64 = sqlx::query_scalar("select count(*) from invoices where customer_id = $1")
        .bind(customer)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        invoices, 2,
        "one invoice per period, however many runs wrote to it"
    );

    // A deposed writer (stale epoch) is refused before it touches anything.
    let stale = Fence {
        shard,
        epoch: epoch - 1,
    };
    let refused = store
        .bill_customer(customer, stale, Utc::now(), &settings, "deposed")
        .await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { .. })),
        "{refused:?}"
    );
}

/// The billing cursor (migration 32): a run waits for a writer of the customer's snapshots that
/// is in flight (so nothing can commit below the cursor), an unsettled snapshot holds the cursor
/// below it while later ones are billed around it, and once it is billed the cursor reaches the
/// customer's last snapshot.
#[tokio::test]
async fn a_run_waits_for_writers_in_flight_and_bills_around_unsettled_usage() {
    let app = spawn_app().await;
    let service = app.create_service(&DEV, "web").await;
    let customer = 1_i64;
    let fence = test_fence(&app.pool, customer).await;
    let store = Arc::new(PgBillingStore::new(app.pool.clone()));
    let settings = test_billing();
    let insert = "insert into usage_snapshots (service_id, customer_id, window_start, window_end,
                                              primary_bytes, backup_bytes, source)
                  values ($1, 1, $2, $2 + interval '1 hour', 1073741824, 0, $3) returning seq";
    let snapshot = |start: DateTime<Utc>, source: &'static str| {
        sqlx::query_scalar::<_, i64>(insert)
            .bind(service)
            .bind(start)
            .bind(source)
    };
    let now = Utc::now();
    let first = snapshot(t("2026-11-20T10:00:00Z"), "a")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Its window ends in half an hour: not settled yet.
    let unsettled = snapshot(now - TimeDelta::minutes(30), "u")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    snapshot(t("2026-11-20T11:00:00Z"), "b")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let cursor = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("select seq from billing_cursors where customer_id = 1")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };

    let run = store
        .bill_customer(customer, fence, now, &settings, "t")
        .await
        .unwrap();
    assert_eq!(
        run.snapshots_billed, 2,
        "both settled snapshots, around the unsettled one"
    );
    assert_eq!(cursor(app.pool.clone()).await, Some(first));
    assert!(first < unsettled);

    // A writer in flight: its snapshot is inserted, not committed.
    let mut writer = app.pool.begin().await.unwrap();
    snapshot(t("2026-11-20T12:00:00Z"), "c")
        .fetch_one(&mut *writer)
        .await
        .unwrap();
    let running = {
        let (store, settings) = (store.clone(), settings.clone());
        tokio::spawn(async move {
            store
                .bill_customer(customer, fence, now, &settings, "t")
                .await
        })
    };
    eventually(
        "the run waiting for the customer's billing lock",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_locks
                  where locktype = 'advisory' and classid = 1112099916 and objid = 1
                    and not granted",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    assert!(!running.is_finished());
    writer.commit().await.unwrap();
    let run = running.await.unwrap().unwrap();
    assert_eq!(
        run.snapshots_billed, 1,
        "the writer's snapshot, once committed"
    );
    assert_eq!(cursor(app.pool.clone()).await, Some(first));

    // An hour later the window has settled: it is billed and the cursor reaches the top.
    let later = now + TimeDelta::hours(1);
    let run = store
        .bill_customer(customer, fence, later, &settings, "t")
        .await
        .unwrap();
    assert_eq!(run.snapshots_billed, 1);
    let top: i64 = sqlx::query_scalar("select max(seq) from usage_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(cursor(app.pool.clone()).await, Some(top));
    let run = store
        .bill_customer(customer, fence, later, &settings, "t")
        .await
        .unwrap();
    assert!(!run.did_something());
    let listed = app
        .get(
            &format!("/v1/services/{service}/usage-snapshots?unbilled=true"),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(listed, json!([]), "nothing is left unbilled");
    let listed = app
        .get(&format!("/v1/services/{service}/usage-snapshots"), &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(listed.as_array().unwrap().len(), 4);
    for s in listed.as_array().unwrap() {
        assert!(
            s["invoice_id"].is_string() && s["billed_at"].is_string(),
            "{s}"
        );
    }
}

#[tokio::test]
async fn three_nodes_bill_thousands_of_snapshots_exactly_once() {
    let app = spawn_app().await;
    let customers = seed(&app.pool, 40, 48).await; // 3,840 snapshots
    let expected = expected_totals(&app.pool, &customers).await;
    let settings = BillingSettings {
        tick: Duration::from_millis(300),
        batch: 50,
        ..test_billing()
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            start_node(
                &app.pool,
                EngineOptions {
                    billing: Some(settings.clone()),
                    ..EngineOptions::default()
                },
            )
            .await,
        );
    }
    // The nodes bill on their own ticks while shards move between them as they join.
    let pool = app.pool.clone();
    all_billed(&pool, &customers, "every snapshot billed").await;
    // Kill one node mid-flight, add usage, and let the survivors bill it.
    nodes.remove(0).crash();
    sqlx::query(
        "insert into usage_snapshots (service_id, customer_id, window_start, window_end,
                                      primary_bytes, backup_bytes, source)
         select id, customer_id, '2026-11-22T00:00:00Z', '2026-11-22T01:00:00Z', 5368709120, 1073741824, 'late'
           from services where customer_id = any($1)",
    )
    .bind(&customers)
    .execute(&app.pool)
    .await
    .unwrap();
    let expected = {
        let mut e = expected;
        // 5 GB + 1 GB at 12 ¢/GB = 72 ¢ per service, no storms that day; two services each.
        for c in &customers {
            *e.entry(*c).or_default() += Decimal::from(144);
        }
        e
    };
    all_billed(&pool, &customers, "the late usage billed by the survivors").await;
    assert_billed_exactly_once(&app.pool, &customers, &expected).await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Lines always name an existing invoice and go with it; every new draft is announced once, in
/// period order, to the endpoints subscribed to `invoice.created`.
#[tokio::test]
async fn lines_belong_to_invoices_and_new_drafts_are_announced_in_order() {
    let mut app = spawn_app().await;
    let service = app.create_service(&DEV, "web").await;
    app.post(
        "/v1/webhooks",
        &DEV,
        json!({ "url": "https://example.com/hook", "event_types": ["invoice.created"] }),
    )
    .await
    .expect(201);
    // Three UTC days, two windows each.
    let windows = [
        "2026-11-18T01:00:00Z",
        "2026-11-18T02:00:00Z",
        "2026-11-19T01:00:00Z",
        "2026-11-19T02:00:00Z",
        "2026-11-20T01:00:00Z",
        "2026-11-20T02:00:00Z",
    ];
    post_usage(
        &app,
        &DEV,
        service,
        windows.iter().map(|w| window(w, 1, GB, 0)).collect(),
    )
    .await;
    start_billing(&mut app, test_billing(), 1).await;
    let run = bill(&app).await;
    assert_eq!((run.invoices_created, run.snapshots_billed), (3, 6));
    // A second run on the same drafts adds to them instead of creating more.
    post_usage(
        &app,
        &DEV,
        service,
        vec![window("2026-11-18T03:00:00Z", 1, GB, 0)],
    )
    .await;
    let run = bill(&app).await;
    assert_eq!((run.invoices_created, run.invoices_touched), (0, 1));
    let (lines, count): (i64, i64) = sqlx::query_as(
        "select (select count(*) from invoice_line_items),
                (select line_count::int8 from invoices where period_start = '2026-11-18T00:00:00Z')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((lines, count), (7, 3));

    let announced: Vec<String> = sqlx::query_scalar(
        "select e.payload->>'period_start' from webhook_deliveries d join events e on e.id = d.event_id
          where e.type = 'invoice.created' order by d.seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(announced.len(), 3, "{announced:?}");
    assert!(
        announced.windows(2).all(|w| w[0] < w[1]),
        "in period order: {announced:?}"
    );

    // A line naming no invoice is refused by the database.
    let orphan = sqlx::query(
        "insert into invoice_line_items
                (snapshot_id, invoice_id, service_id, window_start, window_end, source,
                 primary_bytes, backup_bytes, rate_cents_per_gb, discount_rate,
                 storm_overlap_seconds, max_coverage_factor, coverage, primary_charge_exact,
                 primary_charge_cents, backup_charge_exact, backup_charge_cents, subtotal_cents,
                 discount_exact, discount_cents, total_cents)
         values (gen_random_uuid(), gen_random_uuid(), $1, now(), now(), 'api', 0, 0, 12, 0.5,
                 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
    )
    .bind(service)
    .execute(&app.pool)
    .await
    .unwrap_err();
    assert_eq!(
        orphan
            .as_database_error()
            .and_then(|e| e.constraint())
            .map(str::to_owned),
        Some("invoice_line_items_invoice_id_fkey".to_owned()),
        "{orphan}"
    );
    // Deleting an invoice deletes its lines.
    sqlx::query("delete from invoices where period_start = '2026-11-18T00:00:00Z'")
        .execute(&app.pool)
        .await
        .unwrap();
    let lines: i64 = sqlx::query_scalar("select count(*) from invoice_line_items")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(lines, 4);
}

#[tokio::test]
async fn a_billing_run_on_demand_bills_now_is_recorded_and_needs_admin() {
    let app = spawn_app().await;
    let (customer, key) = app.create_customer("acme").await;
    let admin = Auth::Key(key);
    let (_, reader) = app
        .create_key(&admin, json!({ "name": "ro", "scopes": ["read"] }))
        .await;
    let service = app.create_service(&admin, "web").await;
    post_usage(
        &app,
        &admin,
        service,
        vec![
            window("2026-11-20T10:00:00Z", 1, GB, 0),
            window("2026-11-20T11:00:00Z", 1, 2 * GB, 0),
        ],
    )
    .await;

    app.post("/v1/billing-runs", &reader, json!({}))
        .await
        .expect_error(403, "forbidden", None);

    let run = app
        .post("/v1/billing-runs", &admin, json!({}))
        .await
        .expect(201)
        .body;
    assert_eq!(run["snapshots_billed"], 2, "{run}");
    assert_eq!(run["invoices_created"], 1, "{run}");
    assert_eq!(run["on_demand"], true);
    assert!(run["requested_by_key"].is_i64(), "{run}");
    assert_eq!(run["error"], Value::Null);
    let invoices = app.get("/v1/invoices", &admin).await.expect(200).body;
    assert_eq!(invoices.as_array().unwrap().len(), 1, "{invoices}");
    assert_eq!(invoices[0]["total_cents"], "36");

    // Again: nothing left to bill, and the run is still recorded (it was asked for).
    let again = app
        .post("/v1/billing-runs", &admin, json!({}))
        .await
        .expect(201)
        .body;
    assert_eq!(again["snapshots_billed"], 0, "{again}");
    let runs = app.get("/v1/billing-runs", &admin).await.expect(200).body;
    let ids: Vec<&Value> = runs.as_array().unwrap().iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [&again["id"], &run["id"]]);
    let billed: i64 = sqlx::query_scalar(
        "select count(*) from usage_snapshots u join invoice_line_items l on l.snapshot_id = u.id
          where u.customer_id = $1",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(billed, 2, "each snapshot billed once");
    crate::helpers::assert_events_conform(&app.pool, &["invoice.created"]).await;
}

/// Dogfooding (issue 16): finalizing an invoice reports a run of the customer's application
/// `tranche` (job `invoice-finalisation`, business date = the invoiced UTC day), and the first
/// finalization creates the SLO that watches it.
#[tokio::test]
async fn finalizing_an_invoice_reports_into_slo_tracking_as_application_tranche() {
    let mut app = spawn_app().await;
    let service = app.create_service(&DEV, "web").await;
    post_usage(
        &app,
        &DEV,
        service,
        vec![window("2026-11-20T10:00:00Z", 1, 1 << 30, 0)],
    )
    .await;
    let settings = BillingSettings {
        grace: std::time::Duration::ZERO,
        ..test_billing()
    };
    start_billing(&mut app, settings, 1).await;
    let run = bill(&app).await;
    assert_eq!(run.invoices_finalized, 1, "{run:?}");
    let invoice: Uuid = sqlx::query_scalar("select id from invoices where customer_id = 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    let reports = app
        .get("/v1/job-status?application=tranche", &DEV)
        .await
        .expect(200)
        .body;
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for r in reports {
        assert_eq!(r["job"], "invoice-finalisation");
        assert_eq!(r["business_date"], "2026-11-20");
        assert_eq!(r["run_id"], invoice.to_string());
    }
    let start = reports.iter().find(|r| r["status"] == "start").unwrap();
    assert_eq!(ts(&start["status_time"]), t("2026-11-21T00:00:00Z"));

    // The SLO it created: closed at 24:00, final by the grace (none here), a tick (1 h) and
    // 15 minutes later.
    let slos = app.get("/v1/slos", &DEV).await.expect(200).body;
    let slo = &slos.as_array().unwrap()[0];
    assert_eq!(slo["name"], "tranche-invoice-finalisation");
    assert_eq!(slo["jobs"][0]["expected_start"], "24:00");
    assert_eq!(slo["jobs"][0]["expected_end"], "25:15");
    let performance = app
        .get(
            &format!(
                "/v1/slos/{}/performance?from=2026-11-20&to=2026-11-20",
                slo["id"]
            ),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    let day = &performance["dates"][0];
    // Finalized today, long after 01:15 on 21 November: late, and finished.
    assert_eq!(day["status"], "late", "{day}");
    assert!(day["actual_end"].is_string(), "{day}");

    // A second run finalizes nothing and reports nothing more; the SLO is not created twice.
    bill(&app).await;
    let again = app
        .get("/v1/job-status?application=tranche", &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(again.as_array().unwrap().len(), 2);
    assert_eq!(
        app.get("/v1/slos", &DEV)
            .await
            .expect(200)
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
