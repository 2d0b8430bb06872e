use serde_json::json;

use crate::helpers::{Auth, spawn_app};

const DEMO: Auth = Auth::Header(1);

#[tokio::test]
async fn omitted_fields_take_the_design_defaults() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let resp = app
        .post(
            &format!("/v1/services/{sid}/storm-policies"),
            &DEMO,
            json!({}),
        )
        .await
        .expect(201);
    let b = &resp.body;
    assert_eq!(b["kind"], "http_availability");
    assert_eq!(b["threshold_avail"], 0.9);
    assert_eq!(b["window_seconds"], 60);
    assert_eq!(b["cooldown_seconds"], 300);
    assert_eq!(b["max_coverage_factor"], 1.5);
    assert_eq!(b["probe_interval_seconds"], 10);
    assert_eq!(b["min_samples"], 3);
    assert_eq!(b["quorum"], "majority");
    let pid = b["id"].as_i64().unwrap();
    assert_eq!(
        resp.headers["location"],
        format!("/v1/services/{sid}/storm-policies/{pid}").as_str()
    );
}

#[tokio::test]
async fn values_are_stored_exactly() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    app.post(
        &format!("/v1/services/{sid}/storm-policies"),
        &DEMO,
        json!({ "threshold_avail": 0.9995, "max_coverage_factor": 1.125 }),
    )
    .await
    .expect(201);
    let (threshold, coverage): (rust_decimal::Decimal, rust_decimal::Decimal) = sqlx::query_as(
        "select threshold_avail, max_coverage_factor from storm_policies where service_id = $1",
    )
    .bind(sid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(threshold.to_string(), "0.9995");
    assert_eq!(coverage.to_string(), "1.125");
}

#[tokio::test]
async fn invalid_policies_are_rejected_naming_the_field() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/storm-policies");
    let cases = [
        (json!({ "threshold_avail": 0 }), "threshold_avail"),
        (json!({ "threshold_avail": -0.5 }), "threshold_avail"),
        (json!({ "threshold_avail": 1.01 }), "threshold_avail"),
        (json!({ "threshold_avail": "0.9" }), "threshold_avail"),
        (json!({ "window_seconds": 0 }), "window_seconds"),
        (json!({ "window_seconds": -60 }), "window_seconds"),
        (json!({ "window_seconds": 1.5 }), "window_seconds"),
        (
            json!({ "window_seconds": 10_000_000_000_i64 }),
            "window_seconds",
        ),
        (json!({ "cooldown_seconds": -1 }), "cooldown_seconds"),
        (
            json!({ "max_coverage_factor": 10.01 }),
            "max_coverage_factor",
        ),
        (
            json!({ "probe_interval_seconds": 0 }),
            "probe_interval_seconds",
        ),
        (json!({ "min_samples": 0 }), "min_samples"),
        (json!({ "window_seconds": 20 }), "window_seconds"),
        (json!({ "kind": "latency_p95" }), "kind"),
        (json!({ "kind": "" }), "kind"),
        (json!({ "quorum": "most" }), "quorum"),
        (json!({ "quorum": 2 }), "quorum"),
        (json!({ "treshold_avail": 0.9 }), "treshold_avail"),
    ];
    for (body, field) in cases {
        app.post(&base, &DEMO, body)
            .await
            .expect_error(422, "validation_failed", Some(field));
    }
    assert_eq!(app.get(&base, &DEMO).await.expect(200).body, json!([]));
    // Boundary values that are valid.
    app.post(
        &base,
        &DEMO,
        json!({ "threshold_avail": 1, "cooldown_seconds": 0, "max_coverage_factor": 1 }),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn one_policy_per_kind() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/storm-policies");
    app.post(&base, &DEMO, json!({ "kind": "http_availability" }))
        .await
        .expect(201);
    app.post(
        &base,
        &DEMO,
        json!({ "kind": "http_availability", "threshold_avail": 0.5 }),
    )
    .await
    .expect_error(409, "conflict", Some("kind"));
}

#[tokio::test]
async fn patch_updates_a_subset_and_validates_the_whole() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/storm-policies");
    let pid = app.post(&base, &DEMO, json!({})).await.expect(201).body["id"]
        .as_i64()
        .unwrap();
    let path = format!("{base}/{pid}");

    let resp = app
        .patch(
            &path,
            &DEMO,
            json!({ "threshold_avail": 0.99, "cooldown_seconds": 120 }),
        )
        .await
        .expect(200);
    assert_eq!(resp.body["threshold_avail"], 0.99);
    assert_eq!(resp.body["cooldown_seconds"], 120);
    assert_eq!(resp.body["window_seconds"], 60);

    app.patch(&path, &DEMO, json!({}))
        .await
        .expect_error(422, "validation_failed", None);
    app.patch(&path, &DEMO, json!({ "min_samples": 7 }))
        .await
        .expect_error(422, "validation_failed", Some("min_samples"));
    app.patch(&path, &DEMO, json!({ "kind": "http_availability" }))
        .await
        .expect_error(422, "validation_failed", Some("kind"));
    app.patch(&path, &DEMO, json!({ "max_coverage_factor": 0 }))
        .await
        .expect_error(422, "validation_failed", Some("max_coverage_factor"));
    app.patch(
        &format!("{base}/999999"),
        &DEMO,
        json!({ "min_samples": 2 }),
    )
    .await
    .expect_error(404, "not_found", None);

    // A change that is only valid together is accepted together.
    let resp = app
        .patch(
            &path,
            &DEMO,
            json!({ "window_seconds": 300, "min_samples": 30 }),
        )
        .await
        .expect(200);
    assert_eq!(resp.body["min_samples"], 30);

    let listed = app.get(&base, &DEMO).await.expect(200).body;
    assert_eq!(listed[0]["threshold_avail"], 0.99);
    assert_eq!(listed[0]["window_seconds"], 300);
}

#[tokio::test]
async fn delete_removes_the_policy() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/storm-policies");
    let pid = app.post(&base, &DEMO, json!({})).await.expect(201).body["id"]
        .as_i64()
        .unwrap();
    app.delete(&format!("{base}/{pid}"), &DEMO)
        .await
        .expect(204);
    app.delete(&format!("{base}/{pid}"), &DEMO)
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(app.get(&base, &DEMO).await.expect(200).body, json!([]));
    // The kind is free again.
    app.post(&base, &DEMO, json!({})).await.expect(201);
}

#[tokio::test]
async fn a_policy_may_cover_storms_in_part_up_to_tenfold() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/storm-policies");
    for bad in [0.0, -0.5, 10.5] {
        app.post(&base, &DEMO, json!({ "max_coverage_factor": bad }))
            .await
            .expect_error(422, "validation_failed", Some("max_coverage_factor"));
    }
    let created = app
        .post(&base, &DEMO, json!({ "max_coverage_factor": 0.5 }))
        .await
        .expect(201);
    assert_eq!(created.body["max_coverage_factor"], 0.5);
    let pid = created.body["id"].as_i64().unwrap();
    app.patch(
        &format!("{base}/{pid}"),
        &DEMO,
        json!({ "max_coverage_factor": 10 }),
    )
    .await
    .expect(200);
}

/// The column defaults of the policy tables are the core's defaults (one source of truth for
/// what a policy is when nothing is said; the database's defaults only back it up).
#[tokio::test]
async fn the_databases_policy_defaults_are_the_cores() {
    use tranche_core::domain::{PolicyKind, PolicyParams};
    let app = spawn_app().await;
    let d = PolicyParams::defaults(PolicyKind::HttpAvailability);
    let defaults: Vec<(String, String)> = sqlx::query_as(
        "select column_name::text, column_default::text from information_schema.columns
          where table_name = 'storm_policies' and column_default is not null
            and column_name <> 'id' and column_name not like '%_at'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected = [
        ("threshold_avail", d.threshold_avail.to_string()),
        ("window_seconds", d.window_seconds.to_string()),
        ("cooldown_seconds", d.cooldown_seconds.to_string()),
        ("max_coverage_factor", d.max_coverage_factor.to_string()),
        (
            "probe_interval_seconds",
            d.probe_interval_seconds.to_string(),
        ),
        ("min_samples", d.min_samples.to_string()),
        ("consecutive_failures", d.consecutive_failures.to_string()),
        ("consecutive_successes", d.consecutive_successes.to_string()),
    ];
    for (column, value) in expected {
        let stored = defaults
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v.as_str());
        assert_eq!(stored, Some(value.as_str()), "default of {column}");
    }
}

#[tokio::test]
async fn the_quorum_is_chosen_per_policy() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/storm-policies");
    let created = app
        .post(&base, &DEMO, json!({ "quorum": "any" }))
        .await
        .expect(201)
        .body;
    assert_eq!(created["quorum"], "any");
    let pid = created["id"].as_i64().unwrap();
    let patched = app
        .patch(&format!("{base}/{pid}"), &DEMO, json!({ "quorum": "all" }))
        .await
        .expect(200)
        .body;
    assert_eq!(patched["quorum"], "all");
    app.patch(&format!("{base}/{pid}"), &DEMO, json!({ "quorum": "half" }))
        .await
        .expect_error(422, "validation_failed", Some("quorum"));
    let service = app
        .get(&format!("/v1/services/{sid}"), &DEMO)
        .await
        .expect(200)
        .body;
    assert_eq!(service["storm_policies"][0]["quorum"], "all", "{service}");
}
