use serde_json::json;
use tranche::config::Settings;

use crate::helpers::{Auth, spawn_app, spawn_app_with};

fn production(settings: &mut Settings) {
    settings.dev = false;
}

#[tokio::test]
async fn api_key_authenticates_its_customer() {
    let app = spawn_app_with(production).await;
    let (cid, key) = app.create_customer("acme").await;
    let resp = app
        .post(
            "/v1/services",
            &Auth::Key(key.clone()),
            json!({ "name": "web", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
        )
        .await
        .expect(201);
    assert_eq!(resp.body["customer_id"], cid);
    let resp = app
        .get("/v1/services", &Auth::Key(key.clone()))
        .await
        .expect(200);
    assert_eq!(resp.body.as_array().unwrap().len(), 1);
    // A matching X-Customer-ID is accepted alongside the key.
    app.get("/v1/services", &Auth::KeyAndHeader(key.clone(), cid))
        .await
        .expect(200);
    // Use is recorded.
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select last_used_at from api_keys where customer_id = $1")
            .bind(cid)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(used.is_some());
}

#[tokio::test]
async fn missing_wrong_or_malformed_credentials_are_401() {
    let app = spawn_app_with(production).await;
    let (cid, key) = app.create_customer("acme").await;
    app.get("/v1/services", &Auth::None)
        .await
        .expect_error(401, "unauthorized", None);
    // Outside dev mode the header alone is not enough.
    app.get("/v1/services", &Auth::Header(cid))
        .await
        .expect_error(401, "unauthorized", None);
    app.get("/v1/services", &Auth::Query(cid))
        .await
        .expect_error(401, "unauthorized", None);
    // A key of the right shape with a wrong secret.
    let forged = format!("{}{}", &key[..16], "0".repeat(64));
    app.get("/v1/services", &Auth::Key(forged))
        .await
        .expect_error(401, "unauthorized", None);
    app.get("/v1/services", &Auth::Key("tr_nope".into()))
        .await
        .expect_error(401, "unauthorized", None);
    app.get("/v1/services", &Auth::Raw(format!("Basic {key}")))
        .await
        .expect_error(401, "unauthorized", None);
    app.get("/v1/services", &Auth::Raw("Bearer".into()))
        .await
        .expect_error(401, "unauthorized", None);
    // The admin token is not a customer key.
    app.get("/v1/services", &Auth::Admin)
        .await
        .expect_error(401, "unauthorized", None);
}

#[tokio::test]
async fn customer_header_must_match_the_key() {
    let app = spawn_app_with(production).await;
    let (cid, key) = app.create_customer("acme").await;
    let (other, _) = app.create_customer("globex").await;
    app.get("/v1/services", &Auth::KeyAndHeader(key.clone(), other))
        .await
        .expect_error(403, "forbidden", Some("X-Customer-ID"));
    app.get(
        &format!("/v1/services?customer_id={other}"),
        &Auth::Key(key.clone()),
    )
    .await
    .expect_error(403, "forbidden", Some("X-Customer-ID"));
    app.get(&format!("/v1/services?customer_id={cid}"), &Auth::Key(key))
        .await
        .expect(200);
}

#[tokio::test]
async fn revoked_keys_and_suspended_customers_are_401() {
    let app = spawn_app_with(production).await;
    let (cid, key) = app.create_customer("acme").await;
    app.get("/v1/services", &Auth::Key(key.clone()))
        .await
        .expect(200);
    sqlx::query("update customers set status = 'suspended' where id = $1")
        .bind(cid)
        .execute(&app.pool)
        .await
        .unwrap();
    app.get("/v1/services", &Auth::Key(key.clone()))
        .await
        .expect_error(401, "unauthorized", None);
    sqlx::query("update customers set status = 'active' where id = $1")
        .bind(cid)
        .execute(&app.pool)
        .await
        .unwrap();
    app.get("/v1/services", &Auth::Key(key.clone()))
        .await
        .expect(200);
    sqlx::query("update api_keys set revoked_at = now() where customer_id = $1")
        .bind(cid)
        .execute(&app.pool)
        .await
        .unwrap();
    app.get("/v1/services", &Auth::Key(key))
        .await
        .expect_error(401, "unauthorized", None);
}

#[tokio::test]
async fn scopes_are_enforced() {
    let app = spawn_app_with(production).await;
    let (cid, key) = app.create_customer("acme").await;
    let sid = app.create_service(&Auth::Key(key.clone()), "web").await;
    sqlx::query("update api_keys set scopes = '{read}' where customer_id = $1")
        .bind(cid)
        .execute(&app.pool)
        .await
        .unwrap();
    let read_only = Auth::Key(key);
    app.get(&format!("/v1/services/{sid}"), &read_only)
        .await
        .expect(200);
    app.post(
        "/v1/services",
        &read_only,
        json!({ "name": "x", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
    )
    .await
    .expect_error(403, "forbidden", None);
    app.delete(&format!("/v1/services/{sid}"), &read_only)
        .await
        .expect_error(403, "forbidden", None);
    app.get(&format!("/v1/services/{sid}"), &read_only)
        .await
        .expect(200);
}

#[tokio::test]
async fn dev_mode_trusts_the_header_or_query_for_existing_customers_only() {
    let app = spawn_app().await;
    app.get("/v1/services", &Auth::Header(1)).await.expect(200);
    app.get("/v1/services", &Auth::Query(1)).await.expect(200);
    app.get("/v1/services", &Auth::Header(77))
        .await
        .expect_error(401, "unauthorized", None);
    let resp = app
        .client
        .get(app.url("/v1/services"))
        .header("X-Customer-ID", "one")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["field"], "X-Customer-ID");
    app.get("/v1/services?customer_id=2", &Auth::Header(1))
        .await
        .expect_error(400, "bad_request", Some("customer_id"));
    // Keys still work, and still must match the header, in dev mode.
    let (cid, key) = app.create_customer("acme").await;
    app.get("/v1/services", &Auth::KeyAndHeader(key.clone(), cid))
        .await
        .expect(200);
    app.get("/v1/services", &Auth::KeyAndHeader(key, 1))
        .await
        .expect_error(403, "forbidden", Some("X-Customer-ID"));
}

#[tokio::test]
async fn each_key_is_rate_limited_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.api_rate_per_second = 1.0;
        s.api_burst = 3;
    })
    .await;
    let (_, key) = app.create_customer("busy").await;
    let (_, other) = app.create_customer("calm").await;
    for _ in 0..3 {
        app.get("/v1/services", &Auth::Key(key.clone()))
            .await
            .expect(200);
    }
    let limited = app
        .get("/v1/services", &Auth::Key(key.clone()))
        .await
        .expect_error(429, "rate_limited", None);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another key (another bucket) is not affected. The admin token has a bucket of its own
    // (the two customers above used one token each: one left of the burst).
    app.get("/v1/services", &Auth::Key(other)).await.expect(200);
    app.get("/v1/admin/customers", &Auth::Admin)
        .await
        .expect(200);
    app.get("/v1/admin/customers", &Auth::Admin)
        .await
        .expect_error(429, "rate_limited", None);
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_client_address() {
    let app = spawn_app_with(|s| s.dev = false).await;
    let (_, key) = app.create_customer("acme").await;
    // Guessing keys: after the burst, 429 without a database lookup.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = app
            .get(
                "/v1/services",
                &Auth::Key(format!("tr_guess{i:04}_0123456789abcdef0123456789abcdef")),
            )
            .await;
        statuses.push(r.status.as_u16());
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        statuses[..20].iter().all(|s| *s == 401) && limited >= 15,
        "{statuses:?}"
    );
    // The same holds for the admin token, from this address.
    app.get("/v1/admin/customers", &Auth::Raw("Bearer wrong".into()))
        .await
        .expect_error(429, "rate_limited", None);
    // Two Authorization headers are refused outright.
    let resp = app
        .client
        .get(app.url("/v1/services"))
        .header("Authorization", format!("Bearer {key}"))
        .header("Authorization", "Bearer other")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Every response says not to cache it (new keys carry their secret).
    assert_eq!(
        resp.headers()["cache-control"].to_str().unwrap(),
        "no-store"
    );
}
