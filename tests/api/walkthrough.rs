//! The seed README's curl walkthrough, verbatim, in dev mode.

use serde_json::json;

use crate::helpers::{Auth, spawn_app};

#[tokio::test]
async fn seed_readme_walkthrough_runs_verbatim_in_dev_mode() {
    let app = spawn_app().await;
    let demo = Auth::Header(1);

    // curl -H "X-Customer-ID: 1" http://localhost:8080/v1/services  -> []
    let resp = app.get("/v1/services", &demo).await.expect(200);
    assert_eq!(resp.body, json!([]));

    let resp = app
        .post(
            "/v1/services",
            &demo,
            json!({ "name": "marketing", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
        )
        .await
        .expect(201);
    assert_eq!(
        resp.body["id"], 1,
        "the walkthrough addresses /v1/services/1"
    );
    assert_eq!(resp.headers["location"], "/v1/services/1");

    let resp = app
        .post(
            "/v1/services/1/domains",
            &demo,
            json!({ "name": "app.example.com" }),
        )
        .await
        .expect(201);
    assert_eq!(resp.body["name"], "app.example.com");

    let resp = app
        .post(
            "/v1/services/1/storm-policies",
            &demo,
            json!({
                "kind": "http_availability",
                "threshold_avail": 0.95,
                "window_seconds": 60,
                "cooldown_seconds": 300,
                "max_coverage_factor": 1.25
            }),
        )
        .await
        .expect(201);
    assert_eq!(resp.body["threshold_avail"], 0.95);
    assert_eq!(resp.body["max_coverage_factor"], 1.25);

    let resp = app.get("/v1/services", &demo).await.expect(200);
    let list = resp.body.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "marketing");

    let resp = app.get("/v1/services/1", &demo).await.expect(200);
    assert_eq!(resp.body["domains"][0]["name"], "app.example.com");
    assert_eq!(resp.body["storm_policies"][0]["kind"], "http_availability");
    assert_eq!(resp.body["storm_policies"][0]["window_seconds"], 60);
}
