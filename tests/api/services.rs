use reqwest::Method;
use serde_json::json;

use crate::helpers::{Auth, spawn_app};

const DEMO: Auth = Auth::Header(1);

#[tokio::test]
async fn create_normalises_and_returns_the_service_with_its_location() {
    let app = spawn_app().await;
    let resp = app
        .post(
            "/v1/services",
            &DEMO,
            json!({ "name": "  shop ", "primary_cdn": "Cloudflare", "backup_cdn": "FASTLY" }),
        )
        .await
        .expect(201);
    let id = resp.body["id"].as_i64().unwrap();
    assert_eq!(
        resp.headers["location"],
        format!("/v1/services/{id}").as_str()
    );
    assert_eq!(resp.body["name"], "shop");
    assert_eq!(resp.body["primary_cdn"], "cloudflare");
    assert_eq!(resp.body["backup_cdn"], "fastly");
    assert_eq!(resp.body["customer_id"], 1);

    let resp = app
        .get(&format!("/v1/services/{id}"), &DEMO)
        .await
        .expect(200);
    assert_eq!(resp.body["name"], "shop");
    assert_eq!(resp.body["domains"], json!([]));
    assert_eq!(resp.body["storm_policies"], json!([]));
}

#[tokio::test]
async fn list_is_oldest_first_and_only_live_services() {
    let app = spawn_app().await;
    let a = app.create_service(&DEMO, "a").await;
    let b = app.create_service(&DEMO, "b").await;
    let c = app.create_service(&DEMO, "c").await;
    app.delete(&format!("/v1/services/{b}"), &DEMO)
        .await
        .expect(204);
    let resp = app.get("/v1/services", &DEMO).await.expect(200);
    let ids: Vec<i64> = resp
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![a, c]);
}

#[tokio::test]
async fn patch_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let id = app.create_service(&DEMO, "web").await;
    let before = app
        .get(&format!("/v1/services/{id}"), &DEMO)
        .await
        .expect(200)
        .body;

    let resp = app
        .patch(
            &format!("/v1/services/{id}"),
            &DEMO,
            json!({ "backup_cdn": "akamai" }),
        )
        .await
        .expect(200);
    assert_eq!(resp.body["name"], "web");
    assert_eq!(resp.body["primary_cdn"], "cloudflare");
    assert_eq!(resp.body["backup_cdn"], "akamai");
    assert_ne!(resp.body["updated_at"], before["updated_at"]);

    let resp = app
        .patch(
            &format!("/v1/services/{id}"),
            &DEMO,
            json!({ "name": "web-2", "primary_cdn": "cloudfront" }),
        )
        .await
        .expect(200);
    assert_eq!(resp.body["name"], "web-2");
    assert_eq!(resp.body["primary_cdn"], "cloudfront");
    assert_eq!(resp.body["backup_cdn"], "akamai");
}

#[tokio::test]
async fn patch_rejects_empty_invalid_and_conflicting_changes() {
    let app = spawn_app().await;
    let id = app.create_service(&DEMO, "web").await;
    app.create_service(&DEMO, "api").await;
    let path = format!("/v1/services/{id}");
    app.patch(&path, &DEMO, json!({}))
        .await
        .expect_error(422, "validation_failed", None);
    app.patch(&path, &DEMO, json!({ "name": "" }))
        .await
        .expect_error(422, "validation_failed", Some("name"));
    app.patch(&path, &DEMO, json!({ "name": "API" }))
        .await
        .expect_error(409, "conflict", Some("name"));
    app.patch(&path, &DEMO, json!({ "backup_cdn": "cloudflare" }))
        .await
        .expect_error(422, "validation_failed", Some("backup_cdn"));
    app.patch(&path, &DEMO, json!({ "primary_cdn": "fastly" }))
        .await
        .expect_error(422, "validation_failed", Some("primary_cdn"));
    app.patch(&path, &DEMO, json!({ "colour": "blue" }))
        .await
        .expect_error(422, "validation_failed", Some("colour"));
    app.patch("/v1/services/999999", &DEMO, json!({ "name": "x" }))
        .await
        .expect_error(404, "not_found", None);
    // Nothing changed.
    let resp = app.get(&path, &DEMO).await.expect(200);
    assert_eq!(resp.body["name"], "web");
    assert_eq!(resp.body["backup_cdn"], "fastly");
}

#[tokio::test]
async fn delete_is_soft_and_frees_the_name() {
    let app = spawn_app().await;
    let id = app.create_service(&DEMO, "web").await;
    let path = format!("/v1/services/{id}");
    app.delete(&path, &DEMO).await.expect(204);
    app.get(&path, &DEMO)
        .await
        .expect_error(404, "not_found", None);
    app.delete(&path, &DEMO)
        .await
        .expect_error(404, "not_found", None);
    app.patch(&path, &DEMO, json!({ "name": "x" }))
        .await
        .expect_error(404, "not_found", None);
    app.get(&format!("{path}/domains"), &DEMO)
        .await
        .expect_error(404, "not_found", None);

    // The row is still there, marked deleted (storm and billing history refer to it).
    let deleted: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select deleted_at from services where id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(deleted.is_some());

    let again = app.create_service(&DEMO, "web").await;
    assert_ne!(again, id);
}

#[tokio::test]
async fn create_validates_every_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
            "name",
        ),
        (
            json!({ "name": "x", "backup_cdn": "fastly" }),
            "primary_cdn",
        ),
        (
            json!({ "name": "x", "primary_cdn": "cloudflare" }),
            "backup_cdn",
        ),
        (
            json!({ "name": "  ", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
            "name",
        ),
        (
            json!({ "name": "x", "primary_cdn": "", "backup_cdn": "fastly" }),
            "primary_cdn",
        ),
        (
            json!({ "name": "x", "primary_cdn": "cloudflare", "backup_cdn": " " }),
            "backup_cdn",
        ),
        (
            json!({ "name": "x", "primary_cdn": "a b", "backup_cdn": "fastly" }),
            "primary_cdn",
        ),
        (
            json!({ "name": "x", "primary_cdn": "fastly", "backup_cdn": "Fastly" }),
            "backup_cdn",
        ),
        (
            json!({ "name": 7, "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
            "name",
        ),
        (
            json!({ "name": "x".repeat(201), "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
            "name",
        ),
        (
            json!({ "name": "x", "primary_cdn": "cloudflare", "backup_cdn": "fastly", "owner": "me" }),
            "owner",
        ),
    ];
    for (body, field) in cases {
        app.post("/v1/services", &DEMO, body.clone())
            .await
            .expect_error(422, "validation_failed", Some(field));
    }
    let resp = app.get("/v1/services", &DEMO).await.expect(200);
    assert_eq!(resp.body, json!([]), "no invalid request created anything");
}

#[tokio::test]
async fn duplicate_names_conflict_case_insensitively() {
    let app = spawn_app().await;
    app.create_service(&DEMO, "Marketing").await;
    app.post(
        "/v1/services",
        &DEMO,
        json!({ "name": "marketing", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
    )
    .await
    .expect_error(409, "conflict", Some("name"));
}

#[tokio::test]
async fn malformed_requests_are_400_or_415_never_500() {
    let app = spawn_app().await;
    let post =
        |body: &'static str| app.request(reqwest::Method::POST, "/v1/services", &DEMO, Some(body));
    post("{\"name\": ")
        .await
        .expect_error(400, "malformed_json", None);
    post("").await.expect_error(400, "malformed_json", None);
    post("[1,2]")
        .await
        .expect_error(422, "validation_failed", None);
    app.get("/v1/services/abc", &DEMO)
        .await
        .expect_error(400, "bad_request", Some("id"));
    app.get("/v1/services/99999999999999999999", &DEMO)
        .await
        .expect_error(400, "bad_request", Some("id"));
    let not_allowed = app
        .get("/v1/services/1/domains/x", &DEMO)
        .await
        .expect_error(405, "method_not_allowed", None);
    // Path parameters are named as the document names them, whatever the route's shape.
    for (method, path, field, kind) in [
        (
            Method::POST,
            "/v1/services/1/domains/x/verify",
            "domain_id",
            "an integer",
        ),
        (
            Method::PUT,
            "/v1/services/1/domains/x/dns-pin",
            "domain_id",
            "an integer",
        ),
        (
            Method::POST,
            "/v1/webhooks/1/deliveries/x/replay",
            "delivery_id",
            "a UUID",
        ),
        (Method::GET, "/v1/storms/7", "id", "a UUID"),
    ] {
        let r = app
            .request(method.clone(), path, &DEMO, Some("{}"))
            .await
            .expect_error(400, "bad_request", Some(field));
        assert!(
            r.body["message"].as_str().unwrap().ends_with(kind),
            "{method} {path}: {}",
            r.text
        );
    }
    // The answer says which methods the path has.
    assert_eq!(
        not_allowed.headers["allow"].to_str().unwrap(),
        "DELETE, PATCH"
    );
    app.delete("/v1/services/1/storm-policies/x", &DEMO)
        .await
        .expect_error(400, "bad_request", Some("policy_id"));
    let resp = app
        .client
        .post(app.url("/v1/services"))
        .header("X-Customer-ID", "1")
        .header("Content-Type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "unsupported_media_type");
}

/// `GET /v1/services/{id}` is answered from each node's cache: a client reads its own writes on
/// the node it wrote through from the next request, and every other node sees them (and changes
/// made in the database directly) within PostgreSQL's notification latency.
#[tokio::test]
async fn service_reads_follow_writes_on_every_node() {
    use crate::helpers::{eventually, spawn_app_on};
    let a = spawn_app().await;
    let b = spawn_app_on(a.pool.clone(), |_| {}).await;
    let sid = a.create_service(&DEMO, "shop").await;
    let path = format!("/v1/services/{sid}");
    let timeout = std::time::Duration::from_secs(10);
    async fn read(node: &crate::helpers::TestApp, path: &str) -> serde_json::Value {
        node.get(path, &DEMO).await.expect(200).body
    }
    let name_on = |node| read(node, &path);
    // Read (and cached) on both nodes, repeatedly.
    for _ in 0..3 {
        assert_eq!(name_on(&a).await["name"], "shop");
        assert_eq!(name_on(&b).await["name"], "shop");
    }

    // Written through a: a reads it at once, b within the deadline.
    a.patch(&path, &DEMO, json!({ "name": "store" }))
        .await
        .expect(200);
    assert_eq!(name_on(&a).await["name"], "store");
    eventually("b to read the new name", timeout, || async {
        (name_on(&b).await["name"] == "store").then_some(())
    })
    .await;

    // A domain added through b: b lists it at once, a within the deadline.
    b.post(
        &format!("{path}/domains"),
        &DEMO,
        json!({ "name": "www.example.com" }),
    )
    .await
    .expect(201);
    let domains = |body: serde_json::Value| body["domains"].as_array().map_or(0, Vec::len);
    assert_eq!(domains(read(&b, &path).await), 1);
    eventually("a to list the domain", timeout, || async {
        (domains(read(&a, &path).await) == 1).then_some(())
    })
    .await;

    // Changed in the database directly (as the engine's verifier would): both follow.
    sqlx::query(
        "update service_domains set verification_error = 'no TXT record' where service_id = $1",
    )
    .bind(sid)
    .execute(&a.pool)
    .await
    .unwrap();
    for node in [&a, &b] {
        eventually("the verification error", timeout, || async {
            let body = node.get(&path, &DEMO).await.expect(200).body;
            (body["domains"][0]["verification"]["last_error"] == "no TXT record").then_some(())
        })
        .await;
    }

    // Deleted through a: 404 on a at once, on b within the deadline.
    a.delete(&path, &DEMO).await.expect(204);
    a.get(&path, &DEMO)
        .await
        .expect_error(404, "not_found", None);
    eventually("b to forget the service", timeout, || async {
        (b.get(&path, &DEMO).await.status == 404).then_some(())
    })
    .await;
}

/// The cache really answers (a change whose notification is switched off here stays unseen),
/// the usage feed leaves it alone, and any other write request empties it.
#[tokio::test]
async fn the_service_cache_answers_reads_and_is_emptied_by_writes_but_not_by_the_usage_feed() {
    use crate::helpers::eventually;
    let app = spawn_app().await;
    let sid = app.create_service(&DEMO, "shop").await;
    let path = format!("/v1/services/{sid}");
    // This database only: the services trigger that would announce the rename below.
    sqlx::query("alter table services disable trigger services_notify")
        .execute(&app.pool)
        .await
        .unwrap();
    let name = || async { app.get(&path, &DEMO).await.expect(200).body["name"].clone() };
    // Cached once the node's listener is up: an unannounced rename is not seen.
    let mut n = 0;
    let latest = eventually(
        "the service cached",
        std::time::Duration::from_secs(10),
        || {
            n += 1;
            let renamed = format!("shop-{n}");
            let (pool, name) = (&app.pool, &name);
            async move {
                name().await;
                sqlx::query("update services set name = $1 where id = $2")
                    .bind(&renamed)
                    .bind(sid)
                    .execute(pool)
                    .await
                    .unwrap();
                (name().await != renamed.as_str()).then_some(renamed)
            }
        },
    )
    .await;
    let cached = name().await;
    let event = json!({ "id": "evt-1", "source": "edge-logs", "service_id": sid,
                        "metric": "requests", "quantity": 1 });
    app.post("/v1/usage-events", &DEMO, event).await.expect(200);
    assert_eq!(name().await, cached, "the usage feed left the cache alone");
    app.create_service(&DEMO, "other").await;
    assert_ne!(cached, latest.as_str());
    assert_eq!(
        name().await,
        latest.as_str(),
        "a write request emptied the cache"
    );
}
