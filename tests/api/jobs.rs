//! Job status reports and the `job-status` scope, limited to named applications.

use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::helpers::{Auth, TestApp, spawn_app};

/// A `job-status` key for `applications`, made with the customer's root key.
async fn job_key(app: &TestApp, root: &Auth, applications: Value) -> Auth {
    let (created, key) = app
        .create_key(
            root,
            json!({ "name": "scheduler", "scopes": ["job-status"], "applications": applications }),
        )
        .await;
    assert_eq!(created["scopes"], json!(["job-status"]));
    assert_eq!(created["applications"], applications);
    key
}

fn report(application: &str, run: &str, status: &str, at: chrono::DateTime<Utc>) -> Value {
    json!({
        "application": application,
        "job": "calc-overdrafts",
        "status": status,
        "status_time": at.to_rfc3339(),
        "business_date": (at - Duration::hours(1)).date_naive().to_string(),
        "run_id": run,
        "host": "batch-1",
    })
}

#[tokio::test]
async fn job_status_keys_report_only_for_their_applications() {
    let app = spawn_app().await;
    let (_, root) = app.create_customer("foxfire").await;
    let root = Auth::Key(root);
    let scheduler = job_key(&app, &root, json!(["overdrafts", "deposits"])).await;
    let now = Utc::now();

    let created = app
        .post(
            "/v1/job-status",
            &scheduler,
            report("overdrafts", "r1", "start", now),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(created["status"], "start");
    assert_eq!(created["application"], "overdrafts");
    app.post(
        "/v1/job-status",
        &scheduler,
        report("deposits", "r1", "start", now),
    )
    .await
    .expect(201);
    // Another application: refused, naming the field.
    app.post(
        "/v1/job-status",
        &scheduler,
        report("payroll", "r1", "start", now),
    )
    .await
    .expect_error(403, "forbidden", Some("application"));
    // The scheduler key does nothing else, not even read its own reports.
    app.get("/v1/job-status", &scheduler)
        .await
        .expect_error(403, "forbidden", None);
    app.get("/v1/services", &scheduler)
        .await
        .expect_error(403, "forbidden", None);
    // A root key (read, write, admin) does not report job status: that is the scheduler's.
    app.post(
        "/v1/job-status",
        &root,
        report("overdrafts", "r2", "start", now),
    )
    .await
    .expect_error(403, "forbidden", None);

    let listed = app
        .get("/v1/job-status?application=overdrafts", &root)
        .await
        .expect(200)
        .body;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], created["id"]);
    // Another customer sees none of it.
    let (_, other) = app.create_customer("other").await;
    assert_eq!(
        app.get("/v1/job-status", &Auth::Key(other))
            .await
            .expect(200)
            .body,
        json!([])
    );

    // Revoked: 401 at once.
    let keys = app.get("/v1/api-keys", &root).await.expect(200).body;
    let key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "scheduler")
        .unwrap();
    assert_eq!(key["applications"], json!(["overdrafts", "deposits"]));
    app.delete(&format!("/v1/api-keys/{}", key["id"]), &root)
        .await
        .expect(200);
    app.post(
        "/v1/job-status",
        &scheduler,
        report("overdrafts", "r3", "start", now),
    )
    .await
    .expect_error(401, "unauthorized", None);
}

#[tokio::test]
async fn job_status_keys_need_applications_and_only_they_take_them() {
    let app = spawn_app().await;
    let (_, root) = app.create_customer("foxfire").await;
    let root = Auth::Key(root);
    for (body, field) in [
        (
            json!({ "name": "s", "scopes": ["job-status"] }),
            "applications",
        ),
        (
            json!({ "name": "s", "scopes": ["job-status"], "applications": [] }),
            "applications",
        ),
        (
            json!({ "name": "s", "scopes": ["read"], "applications": ["overdrafts"] }),
            "applications",
        ),
        (
            json!({ "name": "s", "scopes": ["job-status"], "applications": ["a b"] }),
            "applications[0]",
        ),
        (
            json!({ "name": "s", "scopes": ["job-status"], "applications": ["a", "a"] }),
            "applications[1]",
        ),
    ] {
        app.post("/v1/api-keys", &root, body.clone())
            .await
            .expect_error(422, "validation_failed", Some(field));
    }
    // A key without `admin` cannot make keys at all, job-status ones included.
    let (_, reader) = app
        .create_key(&root, json!({ "name": "r", "scopes": ["read"] }))
        .await;
    app.post(
        "/v1/api-keys",
        &reader,
        json!({ "name": "s", "scopes": ["job-status"], "applications": ["x"] }),
    )
    .await
    .expect_error(403, "forbidden", None);
    // The database holds the same rule.
    let refused = sqlx::query(
        "update api_keys set applications = '{}' where scopes @> '{admin}'
           and customer_id = (select id from customers where name = 'foxfire')",
    )
    .execute(&app.pool)
    .await;
    assert!(refused.is_ok(), "no job-status key: empty is right");
    let refused = sqlx::query("update api_keys set scopes = '{job-status}' where scopes @> '{read}' and cardinality(scopes) = 1")
        .execute(&app.pool)
        .await;
    assert!(
        refused.is_err(),
        "a job-status key without applications is refused"
    );
}

#[tokio::test]
async fn reports_are_validated_idempotent_and_one_outcome_per_run() {
    let app = spawn_app().await;
    let (_, root) = app.create_customer("foxfire").await;
    let root = Auth::Key(root);
    let s = job_key(&app, &root, json!(["overdrafts"])).await;
    let start = Utc::now() - Duration::minutes(30);
    let end = start + Duration::minutes(20);

    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r1", "start", start),
    )
    .await
    .expect(201);
    // A replay is a no-op.
    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r1", "start", start),
    )
    .await
    .expect(200);
    // The same status with other details conflicts.
    let mut moved = report("overdrafts", "r1", "start", start);
    moved["host"] = json!("batch-2");
    app.post("/v1/job-status", &s, moved)
        .await
        .expect_error(409, "conflict", Some("status"));
    // An outcome before the start is refused.
    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r1", "succeed", start - Duration::minutes(1)),
    )
    .await
    .expect_error(422, "validation_failed", Some("status_time"));
    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r1", "succeed", end),
    )
    .await
    .expect(201);
    // One outcome per run.
    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r1", "fail", end),
    )
    .await
    .expect_error(409, "conflict", Some("status"));
    // A restart is a new run.
    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r2", "fail", end),
    )
    .await
    .expect(201);

    // Unknown codes, future times, times before the business date, unknown fields.
    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r3", "done", end),
    )
    .await
    .expect_error(422, "validation_failed", Some("status"));
    app.post(
        "/v1/job-status",
        &s,
        report("overdrafts", "r3", "start", Utc::now() + Duration::hours(1)),
    )
    .await
    .expect_error(422, "validation_failed", Some("status_time"));
    let mut early = report("overdrafts", "r3", "start", end);
    early["business_date"] = json!((end + Duration::days(2)).date_naive().to_string());
    app.post("/v1/job-status", &s, early).await.expect_error(
        422,
        "validation_failed",
        Some("status_time"),
    );
    let mut extra = report("overdrafts", "r3", "start", end);
    extra["priority"] = json!(1);
    app.post("/v1/job-status", &s, extra).await.expect_error(
        422,
        "validation_failed",
        Some("priority"),
    );
    let mut bad_date = report("overdrafts", "r3", "start", end);
    bad_date["business_date"] = json!("23/11/2026");
    app.post("/v1/job-status", &s, bad_date).await.expect_error(
        422,
        "validation_failed",
        Some("business_date"),
    );

    let run = app
        .get("/v1/job-status?run_id=r1", &root)
        .await
        .expect(200)
        .body;
    let statuses: Vec<&str> = run
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeed", "start"], "latest first");
    app.get("/v1/job-status?business_date=yesterday", &root)
        .await
        .expect_error(400, "bad_request", Some("business_date"));
}

/// Racing outcomes for one run: exactly one lands, the others see it.
#[tokio::test]
async fn racing_outcomes_leave_one() {
    let app = spawn_app().await;
    let (_, root) = app.create_customer("foxfire").await;
    let s = job_key(&app, &Auth::Key(root), json!(["overdrafts"])).await;
    let at = Utc::now() - Duration::minutes(5);
    let posts = (0..8).map(|i| {
        let status = if i % 2 == 0 { "succeed" } else { "fail" };
        let mut body = report("overdrafts", "race", status, at);
        body["host"] = json!(format!("h{i}"));
        app.post("/v1/job-status", &s, body)
    });
    let statuses: Vec<u16> = futures::future::join_all(posts)
        .await
        .into_iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    let stored: i64 = sqlx::query_scalar("select count(*) from job_status where run_id = 'race'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}
