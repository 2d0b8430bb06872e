//! Event metering against the real application and PostgreSQL: exactly once (replays and
//! conflicts), batches with bad events, CloudEvents, quotas crossed once with two nodes racing,
//! `reject` quotas, the billing-day boundary in a non-UTC time zone, rollups equal to the
//! events, and events → hourly snapshots → invoice to the cent (late events as adjustments).

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Auth, Response, TestApp, spawn_app, spawn_app_on};

const DEV: Auth = Auth::Header(1);
const GIB: i64 = 1 << 30;

/// Posts `body` to `POST /v1/usage-events` as `content_type` (dev customer 1).
async fn send(app: &TestApp, content_type: &str, body: &Value) -> Response {
    send_to(
        &app.client,
        &app.url("/v1/usage-events"),
        content_type,
        body,
    )
    .await
}

pub(crate) async fn send_to(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: &Value,
) -> Response {
    let resp = client
        .post(url)
        .header("X-Customer-ID", "1")
        .header("Content-Type", content_type)
        .body(body.to_string())
        .send()
        .await
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Response {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A cycle whose open period began at least a day ago (day 1, or day 15 on the 1st), so that
/// events a few hours old are inside it.
async fn settled_cycle(app: &TestApp, quotas: Value) {
    let day = if Utc::now().day() == 1 { 15 } else { 1 };
    app.request(
        reqwest::Method::PUT,
        "/v1/quotas",
        &DEV,
        Some(&json!({ "billing_day": day, "quotas": quotas }).to_string()),
    )
    .await
    .expect(200);
}

async fn scalar_i64(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Every minute rollup equals the sum of its events, and nothing else is rolled up.
pub(crate) async fn assert_rollups_match_events(pool: &PgPool) {
    let mismatched: i64 = scalar_i64(
        pool,
        "with e as (select customer_id, metric, service_id,
                           date_trunc('minute', occurred_at, 'UTC') as minute,
                           sum(quantity) as q, count(*) as n
                      from usage_events group by 1, 2, 3, 4)
         select count(*) from e full join usage_rollups r using (customer_id, metric, service_id, minute)
          where e.q is distinct from r.quantity or e.n is distinct from r.events",
    )
    .await;
    assert_eq!(mismatched, 0, "rollups differ from the events");
}

#[tokio::test]
async fn an_event_is_recorded_once_replays_are_duplicates_and_other_content_conflicts() {
    let app = spawn_app().await;
    let web = app.create_service(&DEV, "web").await;
    let event = json!({ "id": "evt-1", "source": "edge-logs", "service_id": web,
                        "metric": "requests", "quantity": 42 });
    let first = app
        .post("/v1/usage-events", &DEV, event.clone())
        .await
        .expect(200);
    assert_eq!(first.body["accepted"], 1, "{}", first.text);
    assert_eq!(first.body["results"][0]["status"], "accepted");

    // Sent again without a time (a client's retry): the same event.
    let retry = app
        .post("/v1/usage-events", &DEV, event.clone())
        .await
        .expect(200);
    assert_eq!(
        retry.body["results"][0]["status"], "duplicate",
        "{}",
        retry.text
    );

    // The time defaulted to now; a replay with that time is a duplicate.
    let stored_time: DateTime<Utc> =
        sqlx::query_scalar("select occurred_at from usage_events where event_id = 'evt-1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let mut replay = event.clone();
    replay["time"] = json!(rfc3339(stored_time));
    let again = app
        .post("/v1/usage-events", &DEV, replay.clone())
        .await
        .expect(200);
    assert_eq!(again.body["duplicates"], 1, "{}", again.text);
    assert_eq!(again.body["results"][0]["status"], "duplicate");

    // Same identity, other content: 409 naming the id; nothing changes.
    let mut other = replay.clone();
    other["quantity"] = json!(43);
    app.post("/v1/usage-events", &DEV, other)
        .await
        .expect_error(409, "conflict", Some("id"));
    // Another source may use the same id.
    let mut elsewhere = replay;
    elsewhere["source"] = json!("billing-export");
    app.post("/v1/usage-events", &DEV, elsewhere)
        .await
        .expect(200);

    assert_eq!(
        scalar_i64(&app.pool, "select count(*) from usage_events").await,
        2
    );
    let usage = app
        .get("/v1/usage?metric=requests", &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(usage["metrics"][0]["total"], "84", "{usage}");
    assert_eq!(usage["metrics"][0]["events"], 2);
    assert_rollups_match_events(&app.pool).await;
}

#[tokio::test]
async fn a_batch_lands_its_good_events_and_names_the_bad_ones() {
    let app = spawn_app().await;
    let web = app.create_service(&DEV, "web").await;
    let now = Utc::now();
    let batch = json!({ "events": [
        { "id": "a", "service_id": web, "metric": "primary_bytes", "quantity": 1000 },
        { "id": "b", "service_id": web, "metric": "requests", "quantity": "1.5" },
        { "id": "c", "service_id": web, "metric": "image.resizes", "quantity": 1 },
        { "id": "d", "service_id": 999_999, "metric": "requests", "quantity": 1 },
        { "id": "e", "service_id": web, "metric": "requests", "quantity": 1,
          "time": rfc3339(now + TimeDelta::minutes(10)) },
        { "service_id": web, "metric": "requests", "quantity": 1 },
        { "id": "g", "service_id": web, "metric": "requests", "quantity": 1.5 },
        { "id": "h", "service_id": web, "metric": "requests", "quantity": "7", "extra": 1 },
        { "id": "i", "service_id": web, "metric": "backup_bytes", "quantity": "2000" },
        { "id": "a", "service_id": web, "metric": "primary_bytes", "quantity": 1000 },
    ]});
    let resp = app.post("/v1/usage-events", &DEV, batch).await.expect(200);
    let body = &resp.body;
    assert_eq!(body["accepted"], 2, "{}", resp.text);
    assert_eq!(body["duplicates"], 1, "{}", resp.text);
    assert_eq!(body["refused"], 7, "{}", resp.text);
    let r = |i: usize| &body["results"][i];
    assert_eq!(r(0)["status"], "accepted");
    for (i, code, field) in [
        (1, "validation_failed", "events[1].quantity"),
        (2, "unknown_metric", "events[2].metric"),
        (3, "unknown_service", "events[3].service_id"),
        (4, "validation_failed", "events[4].time"),
        (5, "validation_failed", "events[5].id"),
        (6, "validation_failed", "events[6].quantity"),
        (7, "validation_failed", "events[7].extra"),
    ] {
        assert_eq!(r(i)["status"], "refused", "{i}: {}", r(i));
        assert_eq!(r(i)["code"], code, "{i}: {}", r(i));
        assert_eq!(r(i)["field"], field, "{i}: {}", r(i));
        assert!(r(i)["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(r(8)["status"], "accepted");
    // The same identity twice in one batch: the second is a duplicate.
    assert_eq!(r(9)["status"], "duplicate");
    assert_eq!(r(9)["index"], 9);

    assert_eq!(
        scalar_i64(&app.pool, "select count(*) from usage_events").await,
        2
    );
    assert_rollups_match_events(&app.pool).await;

    // A declared custom metric takes decimals.
    settled_cycle(&app, json!([{ "metric": "image.resizes" }])).await;
    app.post(
        "/v1/usage-events",
        &DEV,
        json!({ "id": "c", "service_id": web, "metric": "image.resizes", "quantity": "0.25" }),
    )
    .await
    .expect(200);
    let usage = app.get("/v1/usage", &DEV).await.expect(200).body;
    let metrics: Vec<(&str, &str)> = usage["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["metric"].as_str().unwrap(), m["total"].as_str().unwrap()))
        .collect();
    assert_eq!(
        metrics,
        [
            ("backup_bytes", "2000"),
            ("image.resizes", "0.25"),
            ("primary_bytes", "1000")
        ]
    );

    // Whole-request problems are 4xx naming the field.
    app.post("/v1/usage-events", &DEV, json!({ "events": [] }))
        .await
        .expect_error(422, "validation_failed", Some("events"));
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({ "id": i.to_string(), "service_id": web, "metric": "requests", "quantity": 1 }))
        .collect();
    app.post("/v1/usage-events", &DEV, json!({ "events": too_many }))
        .await
        .expect_error(422, "validation_failed", Some("events"));
    app.post(
        "/v1/usage-events",
        &DEV,
        json!({ "service_id": web, "metric": "requests", "quantity": -1, "id": "neg" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("quantity"));
}

#[tokio::test]
async fn cloudevents_are_accepted_single_and_in_batches() {
    let app = spawn_app().await;
    let web = app.create_service(&DEV, "web").await;
    let ce = |id: &str, ty: &str, q: Value| {
        json!({ "specversion": "1.0", "id": id, "source": "//cdn/logs", "type": ty,
                "subject": web.to_string(), "time": rfc3339(Utc::now()),
                "datacontenttype": "application/json", "data": { "quantity": q },
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" })
    };
    let one = send(
        &app,
        "application/cloudevents+json",
        &ce("ce-1", "requests", json!(5)),
    )
    .await
    .expect(200);
    assert_eq!(one.body["accepted"], 1, "{}", one.text);

    let batch = json!([
        ce("ce-2", "primary_bytes", json!("4096")),
        ce("ce-3", "nope!", json!(1)),
        ce("ce-1", "requests", json!(5)),
    ]);
    let resp = send(&app, "application/cloudevents-batch+json", &batch)
        .await
        .expect(200);
    assert_eq!(resp.body["accepted"], 1, "{}", resp.text);
    assert_eq!(
        resp.body["results"][1]["field"], "[1].type",
        "{}",
        resp.text
    );
    assert_eq!(
        resp.body["results"][2]["status"], "refused",
        "{}",
        resp.text
    );
    // ce-1 again but at another time: a conflict.
    assert_eq!(resp.body["results"][2]["code"], "conflict", "{}", resp.text);

    // A single CloudEvent with a bad subject is a 422 naming it.
    let mut bad = ce("ce-9", "requests", json!(1));
    bad["subject"] = json!("web");
    send(&app, "application/cloudevents+json", &bad)
        .await
        .expect_error(422, "validation_failed", Some("subject"));
    // A batch content type with an object is refused whole.
    send(
        &app,
        "application/cloudevents-batch+json",
        &ce("x", "requests", json!(1)),
    )
    .await
    .expect_error(422, "validation_failed", Some("body"));
    // An unknown content type is 415.
    assert_eq!(
        send(&app, "text/plain", &json!({})).await.status.as_u16(),
        415
    );
    assert_rollups_match_events(&app.pool).await;
}

#[tokio::test]
async fn a_quota_is_crossed_once_per_threshold_with_two_nodes_racing() {
    let app = spawn_app().await;
    // A second node: its own API and batcher on the same database.
    let other = spawn_app_on(app.pool.clone(), |_| {}).await;
    let web = app.create_service(&DEV, "web").await;
    settled_cycle(&app, json!([{ "metric": "requests", "quota": "100" }])).await;

    let mut tasks = Vec::new();
    for node in 0..2 {
        for worker in 0..5 {
            let (client, url) = if node == 0 {
                (app.client.clone(), app.url("/v1/usage-events"))
            } else {
                (other.client.clone(), other.url("/v1/usage-events"))
            };
            tasks.push(tokio::spawn(async move {
                for i in 0..15 {
                    let body = json!({ "id": format!("{node}-{worker}-{i}"), "service_id": web,
                                       "metric": "requests", "quantity": 1 });
                    send_to(&client, &url, "application/json", &body)
                        .await
                        .expect(200);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let markers: Vec<(i32, String)> =
        sqlx::query_as("select threshold, node_id from quota_threshold_markers order by threshold")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        markers.iter().map(|m| m.0).collect::<Vec<_>>(),
        [80, 100],
        "{markers:?}"
    );
    let announced: Vec<(i64,)> = sqlx::query_as(
        "select (payload->>'threshold')::int8 from events
          where type = 'quota.threshold_crossed' order by 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(announced, [(80,), (100,)]);
    crate::helpers::assert_events_conform(&app.pool, &["quota.threshold_crossed"]).await;

    let usage = app.get("/v1/usage", &DEV).await.expect(200).body;
    let m = &usage["metrics"][0];
    assert_eq!(m["metric"], "requests", "{usage}");
    assert_eq!(m["total"], "150");
    assert_eq!(m["quota"], "100");
    assert_eq!(m["percent_used"], "150.00");
    assert_eq!(m["thresholds_crossed"], json!([80, 100]));
    assert_eq!(m["services"][0]["service_id"], web);
    let total: String = sqlx::query_scalar(
        "select quantity::text from usage_period_totals where metric = 'requests'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(total, "150");
    assert_rollups_match_events(&app.pool).await;
}

#[tokio::test]
async fn a_rejecting_quota_answers_429_with_the_quota() {
    let app = spawn_app().await;
    let web = app.create_service(&DEV, "web").await;
    settled_cycle(
        &app,
        json!([{ "metric": "requests", "quota": "10", "over_quota": "reject" }]),
    )
    .await;
    let ev = |id: &str, q: i64| json!({ "id": id, "service_id": web, "metric": "requests", "quantity": q });
    app.post("/v1/usage-events", &DEV, ev("a", 8))
        .await
        .expect(200);
    let refused = app
        .post("/v1/usage-events", &DEV, ev("b", 3))
        .await
        .expect_error(429, "over_quota", Some("quantity"));
    assert_eq!(refused.body["quota"]["quota"], "10", "{}", refused.text);
    assert_eq!(refused.body["quota"]["used"], "8");
    assert_eq!(refused.body["quota"]["metric"], "requests");
    assert!(refused.headers.contains_key("retry-after"));
    // In a batch: what fits is taken, in order.
    let batch = app
        .post(
            "/v1/usage-events",
            &DEV,
            json!({ "events": [ev("c", 3), ev("d", 2), ev("e", 1)] }),
        )
        .await
        .expect(200)
        .body;
    let statuses: Vec<&str> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap_or(r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        ["over_quota", "accepted", "over_quota"],
        "{batch}"
    );
    let usage = app.get("/v1/usage", &DEV).await.expect(200).body;
    assert_eq!(usage["metrics"][0]["total"], "10");
    assert_eq!(usage["metrics"][0]["thresholds_crossed"], json!([80, 100]));
}

#[tokio::test]
async fn the_billing_day_turns_at_local_midnight_in_the_customers_time_zone() {
    let app = spawn_app().await;
    let web = app.create_service(&DEV, "web").await;
    // Kolkata is UTC+05:30 all year: local midnight is 18:30 UTC the day before.
    let offset = TimeDelta::minutes(330);
    let local_today = (Utc::now() + offset).date_naive();
    let day = local_today.day().min(28);
    let start_local = NaiveDate::from_ymd_opt(local_today.year(), local_today.month(), day)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let start = start_local.and_utc() - offset;
    let (ny, nm) = if local_today.month() == 12 {
        (local_today.year() + 1, 1)
    } else {
        (local_today.year(), local_today.month() + 1)
    };
    let end = NaiveDate::from_ymd_opt(ny, nm, day)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        - offset;
    let quotas = app
        .request(
            reqwest::Method::PUT,
            "/v1/quotas",
            &DEV,
            Some(
                &json!({ "billing_day": day, "time_zone": "Asia/Kolkata",
                         "quotas": [{ "metric": "requests", "quota": "1000" }] })
                .to_string(),
            ),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(
        quotas["period_start"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        start
    );
    assert_eq!(
        quotas["period_end"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        end
    );
    assert_eq!(start.minute(), 30, "the period starts at 18:30 UTC");

    let ev = |id: &str, t: DateTime<Utc>| json!({ "id": id, "service_id": web, "metric": "requests", "quantity": 1, "time": rfc3339(t) });
    let before = app
        .post(
            "/v1/usage-events",
            &DEV,
            ev("last-second", start - TimeDelta::seconds(1)),
        )
        .await
        .expect_error(422, "outside_period", Some("time"));
    assert!(
        before.body["message"]
            .as_str()
            .unwrap()
            .contains("open metering period")
    );
    app.post("/v1/usage-events", &DEV, ev("first-second", start))
        .await
        .expect(200);
    let usage = app.get("/v1/usage", &DEV).await.expect(200).body;
    assert_eq!(usage["time_zone"], "Asia/Kolkata");
    assert_eq!(usage["billing_day"], day);
    assert_eq!(
        usage["period_start"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        start
    );
    assert_eq!(usage["metrics"][0]["total"], "1", "{usage}");
    let total_start: DateTime<Utc> =
        sqlx::query_scalar("select period_start from usage_period_totals")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(total_start, start);

    // Day buckets are local days: the one event's bucket starts at local midnight.
    let series = app
        .get(
            &format!(
                "/v1/usage/timeseries?metric=requests&bucket=day&from={}",
                rfc3339(start - TimeDelta::days(1)).replace('+', "%2B")
            ),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(series["points"].as_array().unwrap().len(), 1, "{series}");
    assert_eq!(
        series["points"][0]["start"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        start
    );
    app.get("/v1/usage/timeseries?metric=requests&bucket=week", &DEV)
        .await
        .expect_error(422, "validation_failed", Some("bucket"));
}

#[tokio::test]
async fn metered_bytes_become_hourly_snapshots_and_are_invoiced_to_the_cent() {
    let app = spawn_app().await;
    let (_, key) = app.create_customer("acme").await;
    let admin = Auth::Key(key);
    let web = app.create_service(&admin, "web").await;
    let day = if Utc::now().day() == 1 { 15 } else { 1 };
    app.request(
        reqwest::Method::PUT,
        "/v1/quotas",
        &admin,
        Some(&json!({ "billing_day": day, "quotas": [] }).to_string()),
    )
    .await
    .expect(200);
    // An hour that ended more than the settle time ago.
    let now = Utc::now();
    let hour =
        now - TimeDelta::hours(3) - TimeDelta::seconds(i64::from(now.minute() * 60 + now.second()));
    let hour = hour - TimeDelta::nanoseconds(i64::from(hour.timestamp_subsec_nanos()));
    let ev = |id: &str, metric: &str, q: i64, minute: i64| {
        json!({ "id": id, "service_id": web, "metric": metric, "quantity": q,
                "time": rfc3339(hour + TimeDelta::minutes(minute)) })
    };
    // 1.5 GiB through the primary in three events, 0.5 GiB through the backup.
    let resp = app
        .post(
            "/v1/usage-events",
            &admin,
            json!({ "events": [
                ev("p1", "primary_bytes", GIB / 2, 1),
                ev("p2", "primary_bytes", GIB / 2, 30),
                ev("p3", "primary_bytes", GIB / 2, 59),
                ev("b1", "backup_bytes", GIB / 2, 10),
                ev("r1", "requests", 1000, 10),
            ]}),
        )
        .await
        .expect(200);
    assert_eq!(resp.body["accepted"], 5, "{}", resp.text);

    let run = app
        .post("/v1/billing-runs", &admin, json!({}))
        .await
        .expect(201)
        .body;
    assert_eq!(run["snapshots_billed"], 1, "{run}");
    let snapshot: (i64, i64, String, i32) = sqlx::query_as(
        "select primary_bytes, backup_bytes, source, revision from usage_snapshots
          where service_id = $1",
    )
    .bind(web)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(snapshot, (3 * GIB / 2, GIB / 2, "events".into(), 0));
    // 12 ¢/GiB: 1.5 GiB → 18 ¢, 0.5 GiB → 6 ¢; no storm, no discount.
    let invoices = app.get("/v1/invoices", &admin).await.expect(200).body;
    assert_eq!(invoices[0]["total_cents"], "24", "{invoices}");

    // A late event for the billed hour becomes an adjustment on the next run.
    app.post(
        "/v1/usage-events",
        &admin,
        ev("b2", "backup_bytes", GIB, 45),
    )
    .await
    .expect(200);
    let run = app
        .post("/v1/billing-runs", &admin, json!({}))
        .await
        .expect(201)
        .body;
    assert_eq!(run["snapshots_billed"], 1, "{run}");
    let adjustment: (i64, i64, i32) = sqlx::query_as(
        "select primary_bytes, backup_bytes, revision from usage_snapshots
          where service_id = $1 and revision = 1",
    )
    .bind(web)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(adjustment, (0, GIB, 1));
    let invoices = app.get("/v1/invoices", &admin).await.expect(200).body;
    let cents: i64 = invoices
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["total_cents"].as_str().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(cents, 36, "{invoices}");
    // Nothing left to fold.
    assert_eq!(
        scalar_i64(&app.pool, "select count(*) from usage_fold_queue").await,
        0
    );
}

/// Events acknowledged by a node killed with SIGKILL under load are all in the database, the
/// rollups still equal the events, and resending everything afterwards (acknowledged or not)
/// lands each event exactly once.
#[tokio::test]
async fn nothing_acknowledged_is_lost_when_the_node_is_killed_under_load() {
    use crate::chaos::{Node, database_url};
    use nix::sys::signal::Signal;
    use std::sync::{Arc, Mutex};

    let app = spawn_app().await;
    let web = app.create_service(&DEV, "web").await;
    let url = database_url(&app.pool);
    let rate = [
        ("TRANCHE_API_RATE_PER_SECOND", "1000000"),
        ("TRANCHE_API_BURST", "1000000"),
    ];
    let first = Node::spawn("meter-a", &url, &rate);
    let client = reqwest::Client::new();
    let ready = |node_url: String| {
        let client = client.clone();
        async move {
            crate::helpers::eventually(
                "the node to serve",
                std::time::Duration::from_secs(30),
                || {
                    let client = client.clone();
                    let u = format!("{node_url}/healthz");
                    async move {
                        client
                            .get(u)
                            .send()
                            .await
                            .ok()
                            .filter(|r| r.status().is_success())
                            .map(|_| ())
                    }
                },
            )
            .await
        }
    };
    ready(first.url()).await;

    const WORKERS: usize = 6;
    const BATCHES: usize = 40;
    const BATCH: usize = 25;
    let target = Arc::new(Mutex::new(format!("{}/v1/usage-events", first.url())));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let batch_of = move |w: usize, b: usize| {
        json!({ "events": (0..BATCH).map(|e| json!({
            "id": format!("{w}-{b}-{e}"), "source": "load", "service_id": web,
            "metric": "requests", "quantity": 1 })).collect::<Vec<_>>() })
    };
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (client, target, acked) = (client.clone(), target.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let body = batch_of(w, b);
                let url = target.lock().unwrap().clone();
                let resp = client
                    .post(url)
                    .header("X-Customer-ID", "1")
                    .json(&body)
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
                    .await;
                if let Ok(resp) = resp
                    && resp.status().is_success()
                {
                    let receipt: Value = resp.json().await.unwrap_or(Value::Null);
                    if receipt["accepted"].as_u64().unwrap_or(0)
                        + receipt["duplicates"].as_u64().unwrap_or(0)
                        == BATCH as u64
                    {
                        let mut acked = acked.lock().unwrap();
                        acked.extend((0..BATCH).map(|e| format!("{w}-{b}-{e}")));
                    }
                }
            }
        }));
    }
    // Kill the node once some batches are acknowledged, while the others are in flight.
    crate::helpers::eventually(
        "some acknowledgements",
        std::time::Duration::from_secs(30),
        || {
            let n = acked.lock().unwrap().len();
            async move { (n >= 20 * BATCH).then_some(()) }
        },
    )
    .await;
    first.signal(Signal::SIGKILL);
    let second = Node::spawn("meter-b", &url, &rate);
    ready(second.url()).await;
    *target.lock().unwrap() = format!("{}/v1/usage-events", second.url());
    for t in tasks {
        t.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let stored: std::collections::HashSet<String> =
        sqlx::query_scalar("select event_id from usage_events where source = 'load'")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(acked.len() >= 20 * BATCH);
    assert_rollups_match_events(&app.pool).await;

    // The client retries everything: each event lands exactly once.
    for w in 0..WORKERS {
        for b in 0..BATCHES {
            let resp = send_to(
                &client,
                &format!("{}/v1/usage-events", second.url()),
                "application/json",
                &batch_of(w, b),
            )
            .await
            .expect(200);
            assert_eq!(resp.body["refused"], 0, "{}", resp.text);
        }
    }
    let total = (WORKERS * BATCHES * BATCH) as i64;
    assert_eq!(
        scalar_i64(
            &app.pool,
            "select count(*) from usage_events where source = 'load'"
        )
        .await,
        total
    );
    assert_eq!(
        scalar_i64(
            &app.pool,
            "select sum(events)::int8 from usage_period_totals"
        )
        .await,
        total
    );
    assert_rollups_match_events(&app.pool).await;
}
