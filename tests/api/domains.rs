use serde_json::json;

use crate::helpers::{Auth, spawn_app};

const DEMO: Auth = Auth::Header(1);

#[tokio::test]
async fn add_list_and_remove_domains() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/domains");

    let resp = app
        .post(
            &base,
            &DEMO,
            json!({
                "name": "App.Example.COM.",
                "primary_target": "app.example.com.cdn.cloudflare.net",
                "backup_target": "151.101.1.57",
                "probe_path": "/healthz"
            }),
        )
        .await
        .expect(201);
    let did = resp.body["id"].as_i64().unwrap();
    assert_eq!(resp.headers["location"], format!("{base}/{did}").as_str());
    assert_eq!(resp.body["name"], "app.example.com");
    assert_eq!(resp.body["service_id"], sid);
    assert_eq!(
        resp.body["primary_target"],
        "app.example.com.cdn.cloudflare.net"
    );
    assert_eq!(resp.body["backup_target"], "151.101.1.57");
    assert_eq!(resp.body["probe_path"], "/healthz");
    // Dev mode verifies at once (production waits for the TXT challenge: see verification.rs).
    assert_eq!(resp.body["verification"]["status"], "verified");
    assert_eq!(
        resp.body["verification"]["record_name"],
        "_tranche-challenge.app.example.com"
    );
    let token = resp.body["verification"]["record_value"].as_str().unwrap();
    assert!(
        token.starts_with("tranche-verify=") && token.len() == 15 + 32,
        "{token}"
    );

    let resp = app
        .post(&base, &DEMO, json!({ "name": "www.example.com" }))
        .await
        .expect(201);
    assert_eq!(resp.body["probe_path"], "/");
    assert_eq!(resp.body["primary_target"], serde_json::Value::Null);
    let other = resp.body["id"].as_i64().unwrap();

    let resp = app.get(&base, &DEMO).await.expect(200);
    let names: Vec<&str> = resp
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["app.example.com", "www.example.com"]);

    app.delete(&format!("{base}/{did}"), &DEMO)
        .await
        .expect(204);
    app.delete(&format!("{base}/{did}"), &DEMO)
        .await
        .expect_error(404, "not_found", None);
    let resp = app
        .get(&format!("/v1/services/{sid}"), &DEMO)
        .await
        .expect(200);
    let ids: Vec<i64> = resp.body["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![other]);

    // A removed hostname can be added again.
    app.post(&base, &DEMO, json!({ "name": "app.example.com" }))
        .await
        .expect(201);
}

#[tokio::test]
async fn duplicate_hostnames_conflict_after_normalisation() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/domains");
    app.post(&base, &DEMO, json!({ "name": "app.example.com" }))
        .await
        .expect(201);
    app.post(&base, &DEMO, json!({ "name": " APP.example.com. " }))
        .await
        .expect_error(409, "conflict", Some("name"));
    // The same hostname on another service is a different domain.
    let other = app.create_service(&DEMO, "web-2").await;
    app.post(
        &format!("/v1/services/{other}/domains"),
        &DEMO,
        json!({ "name": "app.example.com" }),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn invalid_domains_are_rejected_naming_the_field() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/domains");
    let cases = [
        (json!({}), "name"),
        (json!({ "name": "" }), "name"),
        (json!({ "name": "https://app.example.com/" }), "name"),
        (json!({ "name": "app.example.com:8443" }), "name"),
        (json!({ "name": "localhost" }), "name"),
        (json!({ "name": "exa mple.com" }), "name"),
        (json!({ "name": "10.0.0.1" }), "name"),
        (json!({ "name": "a..b.com" }), "name"),
        (
            json!({ "name": "app.example.com", "primary_target": "http://edge" }),
            "primary_target",
        ),
        (
            json!({ "name": "app.example.com", "backup_target": "" }),
            "backup_target",
        ),
        (
            json!({ "name": "app.example.com", "probe_path": "healthz" }),
            "probe_path",
        ),
        (
            json!({ "name": "app.example.com", "probe_path": "/a b" }),
            "probe_path",
        ),
        (
            json!({ "name": "app.example.com", "hostname": "x" }),
            "hostname",
        ),
    ];
    for (body, field) in cases {
        app.post(&base, &DEMO, body)
            .await
            .expect_error(422, "validation_failed", Some(field));
    }
    assert_eq!(app.get(&base, &DEMO).await.expect(200).body, json!([]));
}

#[tokio::test]
async fn domains_of_missing_or_deleted_services_are_404() {
    let app = spawn_app().await;
    app.get("/v1/services/424242/domains", &DEMO)
        .await
        .expect_error(404, "not_found", None);
    app.post(
        "/v1/services/424242/domains",
        &DEMO,
        json!({ "name": "a.example.com" }),
    )
    .await
    .expect_error(404, "not_found", None);
    let sid = app.create_service(&DEMO, "web").await;
    let did = app
        .post(
            &format!("/v1/services/{sid}/domains"),
            &DEMO,
            json!({ "name": "a.example.com" }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    // A domain addressed through the wrong service is not found.
    let other = app.create_service(&DEMO, "other").await;
    app.delete(&format!("/v1/services/{other}/domains/{did}"), &DEMO)
        .await
        .expect_error(404, "not_found", None);
    app.delete(&format!("/v1/services/{sid}"), &DEMO)
        .await
        .expect(204);
    app.post(
        &format!("/v1/services/{sid}/domains"),
        &DEMO,
        json!({ "name": "b.example.com" }),
    )
    .await
    .expect_error(404, "not_found", None);
    app.delete(&format!("/v1/services/{sid}/domains/{did}"), &DEMO)
        .await
        .expect_error(404, "not_found", None);
}

#[tokio::test]
async fn probe_settings_can_be_changed_and_bad_values_name_the_field() {
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "web").await;
    let base = format!("/v1/services/{sid}/domains");
    let created = app
        .post(&base, &DEMO, json!({ "name": "app.example.com" }))
        .await
        .expect(201)
        .body;
    let url = format!("{base}/{}", created["id"]);

    let updated = app
        .patch(
            &url,
            &DEMO,
            json!({ "primary_target": "edge.cdn-a.example", "probe_path": "/healthz", "probe_timeout_ms": 2000 }),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(updated["primary_target"], "edge.cdn-a.example");
    assert_eq!(updated["probe_path"], "/healthz");
    assert_eq!(updated["probe_timeout_ms"], 2000);
    // Untouched: everything else, the verification included.
    assert_eq!(updated["probe_scheme"], created["probe_scheme"]);
    assert_eq!(updated["verification"], created["verification"]);
    assert_eq!(
        app.get(&base, &DEMO).await.expect(200).body[0]["probe_path"],
        "/healthz"
    );

    for (body, field) in [
        (json!({ "probe_timeout_ms": 5 }), Some("probe_timeout_ms")),
        (json!({ "probe_scheme": "gopher" }), Some("probe_scheme")),
        (
            json!({ "expected_statuses": "999" }),
            Some("expected_statuses"),
        ),
        (
            json!({ "backup_target": "not a host!" }),
            Some("backup_target"),
        ),
        (json!({ "name": "other.example.com" }), Some("name")),
        (json!({}), None),
    ] {
        app.patch(&url, &DEMO, body)
            .await
            .expect_error(422, "validation_failed", field);
    }
    app.patch(
        &format!("{base}/999999"),
        &DEMO,
        json!({ "probe_path": "/x" }),
    )
    .await
    .expect_error(404, "not_found", None);
    let (_, other) = app.create_customer("other").await;
    app.patch(&url, &Auth::Key(other), json!({ "probe_path": "/x" }))
        .await
        .expect_error(404, "not_found", None);
}
