use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{Auth, spawn_app, spawn_app_with};

#[tokio::test]
async fn provisioning_returns_the_secret_once_and_stores_only_its_hash() {
    let app = spawn_app().await;
    let resp = app
        .post(
            "/v1/admin/customers",
            &Auth::Admin,
            json!({ "name": "Acme", "key_name": "ci" }),
        )
        .await
        .expect(201);
    let customer = &resp.body["customer"];
    let key = &resp.body["api_key"];
    assert_eq!(customer["name"], "Acme");
    assert_eq!(customer["status"], "active");
    assert_eq!(key["name"], "ci");
    assert_eq!(key["scopes"], json!(["read", "write", "admin"]));
    let secret = key["secret"].as_str().unwrap();
    let prefix = key["prefix"].as_str().unwrap();
    assert!(secret.starts_with(prefix) && secret.len() == 80, "{secret}");

    let (stored_prefix, hash): (String, Vec<u8>) =
        sqlx::query_as("select prefix, secret_hash from api_keys where customer_id = $1")
            .bind(customer["id"].as_i64().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored_prefix, prefix);
    assert_eq!(hash, Sha256::digest(secret.as_bytes()).to_vec());
    let leaked: i64 = sqlx::query_scalar(
        "select count(*) from api_keys where position($1 in prefix || encode(secret_hash, 'escape')) > 0",
    )
    .bind(&secret[16..])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "the secret part is stored nowhere");
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let app = spawn_app().await;
    let body = json!({ "name": "Acme" });
    app.post("/v1/admin/customers", &Auth::None, body.clone())
        .await
        .expect_error(401, "unauthorized", None);
    app.post(
        "/v1/admin/customers",
        &Auth::Raw("Bearer wrong".into()),
        body.clone(),
    )
    .await
    .expect_error(401, "unauthorized", None);
    app.post("/v1/admin/customers", &Auth::Header(1), body.clone())
        .await
        .expect_error(401, "unauthorized", None);
    let (_, key) = app.create_customer("first").await;
    app.post("/v1/admin/customers", &Auth::Key(key), body)
        .await
        .expect_error(401, "unauthorized", None);
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let app = spawn_app_with(|s| s.admin_token = None).await;
    let resp = app
        .post(
            "/v1/admin/customers",
            &Auth::Admin,
            json!({ "name": "Acme" }),
        )
        .await
        .expect_error(401, "unauthorized", None);
    assert!(
        resp.body["message"]
            .as_str()
            .unwrap()
            .contains("TRANCHE_ADMIN_TOKEN")
    );
}

#[tokio::test]
async fn provisioning_validates_input_and_creates_nothing_on_failure() {
    let app = spawn_app().await;
    for (body, field) in [
        (json!({}), "name"),
        (json!({ "name": " " }), "name"),
        (json!({ "name": "x", "key_name": "" }), "key_name"),
        (json!({ "name": "x", "plan": "gold" }), "plan"),
    ] {
        app.post("/v1/admin/customers", &Auth::Admin, body)
            .await
            .expect_error(422, "validation_failed", Some(field));
    }
    let customers: i64 = sqlx::query_scalar("select count(*) from customers where id <> 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(customers, 0);
}

#[tokio::test]
async fn provisioning_is_atomic() {
    let app = spawn_app().await;
    // Make the key insert fail after the customer insert succeeded: the transaction must leave
    // no customer behind.
    sqlx::query("alter table api_keys add constraint api_keys_test_block check (name <> 'boom')")
        .execute(&app.pool)
        .await
        .unwrap();
    let resp = app
        .post(
            "/v1/admin/customers",
            &Auth::Admin,
            json!({ "name": "Doomed", "key_name": "boom" }),
        )
        .await;
    assert_eq!(resp.status, 500, "{}", resp.text);
    assert_eq!(resp.body["code"], "internal");
    assert!(
        !resp.text.contains("api_keys_test_block"),
        "database text must not leak"
    );
    let doomed: i64 = sqlx::query_scalar("select count(*) from customers where name = 'Doomed'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(doomed, 0);
}

#[tokio::test]
async fn provisioned_ids_do_not_collide_with_the_dev_demo_customer() {
    let app = spawn_app().await;
    let (a, _) = app.create_customer("a").await;
    let (b, _) = app.create_customer("b").await;
    assert!(a > 1 && b > a, "{a} {b}");
}
