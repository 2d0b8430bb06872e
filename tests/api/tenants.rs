//! Tenants and keys: the admin lifecycle of customers, and a customer's own API keys.

use serde_json::{Value, json};

use crate::helpers::{Auth, spawn_app};

#[tokio::test]
async fn key_lifecycle_create_use_list_revoke() {
    let app = spawn_app().await;
    let (_, root) = app.create_customer("acme").await;
    let root = Auth::Key(root);
    let created = app
        .post(
            "/v1/api-keys",
            &root,
            json!({ "name": "ci", "scopes": ["read"] }),
        )
        .await
        .expect(201)
        .body;
    let ci = Auth::Key(created["secret"].as_str().unwrap().to_owned());
    assert_eq!(created["scopes"], json!(["read"]));
    let ci_id = created["id"].as_i64().unwrap();

    // The new key reads, but may not write or manage keys.
    app.get("/v1/services", &ci).await.expect(200);
    app.post(
        "/v1/services",
        &ci,
        json!({ "name": "x", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
    )
    .await
    .expect_error(403, "forbidden", None);
    app.get("/v1/api-keys", &ci)
        .await
        .expect_error(403, "forbidden", None);

    // Listing shows prefixes, scopes and use, never a secret.
    let list = app.get("/v1/api-keys", &root).await.expect(200).body;
    let keys = list.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.get("secret").is_none()), "{list}");
    assert_eq!(keys[0]["id"], ci_id);
    assert!(keys[0]["last_used_at"].is_string(), "used above: {list}");
    assert!(
        created["secret"]
            .as_str()
            .unwrap()
            .starts_with(keys[0]["prefix"].as_str().unwrap())
    );

    // Revoked: 401 at once; revoking again keeps the first time.
    let revoked = app
        .delete(&format!("/v1/api-keys/{ci_id}"), &root)
        .await
        .expect(200)
        .body;
    assert!(revoked["revoked_at"].is_string());
    app.get("/v1/services", &ci)
        .await
        .expect_error(401, "unauthorized", None);
    let again = app
        .delete(&format!("/v1/api-keys/{ci_id}"), &root)
        .await
        .expect(200)
        .body;
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    app.delete("/v1/api-keys/999999", &root)
        .await
        .expect_error(404, "not_found", None);
    // Another customer cannot see or revoke it.
    let (_, other) = app.create_customer("other").await;
    app.delete(&format!("/v1/api-keys/{ci_id}"), &Auth::Key(other.clone()))
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(
        app.get("/v1/api-keys", &Auth::Key(other))
            .await
            .expect(200)
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn keys_cannot_grant_scopes_they_lack_and_bad_scopes_name_the_field() {
    let app = spawn_app().await;
    let (_, root) = app.create_customer("acme").await;
    let root = Auth::Key(root);
    let (_, manager) = app
        .create_key(
            &root,
            json!({ "name": "keys", "scopes": ["read", "admin"] }),
        )
        .await;
    app.post(
        "/v1/api-keys",
        &manager,
        json!({ "name": "w", "scopes": ["write"] }),
    )
    .await
    .expect_error(403, "forbidden", Some("scopes[0]"));
    app.post("/v1/api-keys", &manager, json!({ "name": "r" }))
        .await
        .expect(201);
    app.post(
        "/v1/api-keys",
        &root,
        json!({ "name": "x", "scopes": ["owner"] }),
    )
    .await
    .expect_error(422, "validation_failed", Some("scopes[0]"));
    app.post(
        "/v1/api-keys",
        &root,
        json!({ "name": "x", "scopes": ["read", "read"] }),
    )
    .await
    .expect_error(422, "validation_failed", Some("scopes[1]"));
    app.post("/v1/api-keys", &root, json!({ "name": "x", "scopes": [] }))
        .await
        .expect_error(422, "validation_failed", Some("scopes"));
    app.post("/v1/api-keys", &root, json!({ "name": " " }))
        .await
        .expect_error(422, "validation_failed", Some("name"));
    app.post(
        "/v1/api-keys",
        &root,
        json!({ "name": "x", "secret": "mine" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("secret"));
}

#[tokio::test]
async fn operators_list_suspend_reactivate_and_delete_customers() {
    let app = spawn_app().await;
    let (acme, key) = app.create_customer("acme").await;
    let (beta, beta_key) = app.create_customer("beta").await;
    let key = Auth::Key(key);

    let all = app
        .get("/v1/admin/customers", &Auth::Admin)
        .await
        .expect(200)
        .body;
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert!(ids.contains(&acme) && ids.contains(&beta), "{all}");
    let page = app
        .get(
            &format!("/v1/admin/customers?after={acme}&limit=1"),
            &Auth::Admin,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(page[0]["id"], beta);
    app.get(&format!("/v1/admin/customers/{acme}"), &key)
        .await
        .expect_error(401, "unauthorized", None);

    // Suspended: its keys answer 401 at once; reactivated: they work again.
    let suspended = app
        .patch(
            &format!("/v1/admin/customers/{acme}"),
            &Auth::Admin,
            json!({ "status": "suspended" }),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(suspended["status"], "suspended");
    let refused = app
        .get("/v1/services", &key)
        .await
        .expect_error(401, "unauthorized", None);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );
    app.patch(
        &format!("/v1/admin/customers/{acme}"),
        &Auth::Admin,
        json!({ "status": "active", "name": "Acme Inc" }),
    )
    .await
    .expect(200);
    app.get("/v1/services", &key).await.expect(200);
    app.patch(
        &format!("/v1/admin/customers/{acme}"),
        &Auth::Admin,
        json!({ "status": "gone" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("status"));
    app.patch(
        "/v1/admin/customers/999999",
        &Auth::Admin,
        json!({ "status": "active" }),
    )
    .await
    .expect_error(404, "not_found", None);

    // A customer with invoices is kept (409); one without is deleted with everything it owns.
    sqlx::query(
        "insert into invoices (customer_id, period_start, period_end)
         values ($1, '2026-11-20', '2026-11-21')",
    )
    .bind(acme)
    .execute(&app.pool)
    .await
    .unwrap();
    app.delete(&format!("/v1/admin/customers/{acme}"), &Auth::Admin)
        .await
        .expect_error(409, "conflict", None);
    app.create_service(&Auth::Key(beta_key.clone()), "web")
        .await;
    app.delete(&format!("/v1/admin/customers/{beta}"), &Auth::Admin)
        .await
        .expect(204);
    app.get(&format!("/v1/admin/customers/{beta}"), &Auth::Admin)
        .await
        .expect_error(404, "not_found", None);
    app.get("/v1/services", &Auth::Key(beta_key))
        .await
        .expect_error(401, "unauthorized", None);
    let left: i64 = sqlx::query_scalar("select count(*) from services where customer_id = $1")
        .bind(beta)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_failure_mid_provisioning_leaves_nothing_behind() {
    let app = crate::helpers::spawn_app().await;
    let before: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let settings_before: i64 = sqlx::query_scalar("select count(*) from customer_settings")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // The customer and its settings are written, then the key insert fails (its name breaks a
    // constraint): the transaction takes the customer and its settings with it.
    let failed =
        tranche::postgres::customers::create_with_key(&app.pool, "half-made", &"k".repeat(300))
            .await;
    assert!(failed.is_err());
    let (customers, keys, settings): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from customers), (select count(*) from api_keys),
                (select count(*) from customer_settings)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(customers, before, "no customer without its key");
    assert_eq!(keys, 0);
    assert_eq!(
        settings, settings_before,
        "no settings without their customer"
    );
}

/// Provisioning creates the customer's settings; their policy defaults fill the fields a new
/// policy leaves out, and only an `admin` key changes them.
#[tokio::test]
async fn customer_settings_are_provisioned_and_set_new_policy_defaults() {
    let app = crate::helpers::spawn_app().await;
    let (_, root) = app.create_customer("acme").await;
    let root = Auth::Key(root);
    let settings = app.get("/v1/settings", &root).await.expect(200).body;
    assert_eq!(
        settings["storm_policy_defaults"],
        json!({ "threshold_avail": 0.9, "window_seconds": 60, "cooldown_seconds": 300,
                "max_coverage_factor": 1.5, "probe_interval_seconds": 10, "min_samples": 3,
                "consecutive_failures": 3, "consecutive_successes": 3 })
    );
    assert!(
        settings["updated_at"].is_string(),
        "created with the customer"
    );

    let service = app.create_service(&root, "web").await;
    let before = app
        .post(
            &format!("/v1/services/{service}/storm-policies"),
            &root,
            json!({}),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(before["threshold_avail"], 0.9);

    let changed = app
        .patch(
            "/v1/settings",
            &root,
            json!({ "storm_policy_defaults": { "threshold_avail": 0.95, "cooldown_seconds": 600 } }),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(changed["storm_policy_defaults"]["threshold_avail"], 0.95);
    assert_eq!(changed["storm_policy_defaults"]["window_seconds"], 60);

    // A new policy takes the new defaults for what it leaves out; the old one is unchanged.
    let other = app.create_service(&root, "api").await;
    let after = app
        .post(
            &format!("/v1/services/{other}/storm-policies"),
            &root,
            json!({ "window_seconds": 120 }),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(
        (
            &after["threshold_avail"],
            &after["cooldown_seconds"],
            &after["window_seconds"]
        ),
        (&json!(0.95), &json!(600), &json!(120))
    );
    let listed = app
        .get(&format!("/v1/services/{service}/storm-policies"), &root)
        .await
        .expect(200)
        .body;
    assert_eq!(listed[0]["threshold_avail"], 0.9);

    // Validation names the nested field; an empty change is refused; `read` cannot change.
    app.patch(
        "/v1/settings",
        &root,
        json!({ "storm_policy_defaults": { "threshold_avail": 1.5 } }),
    )
    .await
    .expect_error(
        422,
        "validation_failed",
        Some("storm_policy_defaults.threshold_avail"),
    );
    app.patch("/v1/settings", &root, json!({}))
        .await
        .expect_error(422, "validation_failed", Some("storm_policy_defaults"));
    let (_, reader) = app
        .create_key(&root, json!({ "name": "r", "scopes": ["read"] }))
        .await;
    app.get("/v1/settings", &reader).await.expect(200);
    app.patch(
        "/v1/settings",
        &reader,
        json!({ "storm_policy_defaults": { "min_samples": 5 } }),
    )
    .await
    .expect_error(403, "forbidden", None);
    // Another customer still has the product defaults.
    let (_, second) = app.create_customer("second").await;
    assert_eq!(
        app.get("/v1/settings", &Auth::Key(second))
            .await
            .expect(200)
            .body["storm_policy_defaults"]["threshold_avail"],
        0.9
    );
}

/// Every customer operation in the OpenAPI document declares the scope it needs, and a key
/// without that scope gets 403 from it — before the path or body is even looked at — while a
/// key with it does not.
#[tokio::test]
async fn every_operation_enforces_the_scope_it_declares() {
    let app = crate::helpers::spawn_app().await;
    let (_, root) = app.create_customer("acme").await;
    let root = Auth::Key(root);
    // One key per scope left out.
    let mut without = std::collections::HashMap::new();
    for (missing, scopes) in [
        ("read", json!(["write", "admin"])),
        ("write", json!(["read", "admin"])),
        ("admin", json!(["read", "write"])),
    ] {
        let (_, key) = app
            .create_key(
                &root,
                json!({ "name": format!("no-{missing}"), "scopes": scopes }),
            )
            .await;
        without.insert(missing, key);
    }
    // `job-status` is held by scheduler keys only, and they hold nothing else.
    let (_, scheduler) = app
        .create_key(
            &root,
            json!({ "name": "scheduler", "scopes": ["job-status"], "applications": ["app"] }),
        )
        .await;
    // Path placeholders are `1`: `DELETE /v1/api-keys/1` revokes the customer's first key, so
    // the walk uses a second key with every customer scope.
    let (_, all) = app
        .create_key(
            &root,
            json!({ "name": "all", "scopes": ["read", "write", "admin"] }),
        )
        .await;
    without.insert("job-status", all.clone());
    let spec: Value = serde_json::from_str(&tranche::api::spec_json()).unwrap();
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let Some(security) = op["security"].as_array() else {
                continue;
            };
            let Some(api_key) = security.iter().find_map(|s| s.get("ApiKey")) else {
                continue; // operator or public endpoints
            };
            let scopes: Vec<&str> = api_key
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert_eq!(
                scopes.len(),
                1,
                "{method} {path} declares one scope: {scopes:?}"
            );
            // Placeholders for path parameters: numbers or UUIDs both fail later than the scope.
            let url = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let refused = app
                .request(method.clone(), &url, &without[scopes[0]], Some("{}"))
                .await;
            assert_eq!(
                refused.status.as_u16(),
                403,
                "{method} {path} without `{}`: {}",
                scopes[0],
                refused.text
            );
            assert_eq!(refused.body["code"], "forbidden");
            let holder = if scopes[0] == "job-status" {
                &scheduler
            } else {
                &all
            };
            let allowed = app.request(method.clone(), &url, holder, Some("{}")).await;
            assert!(
                ![401, 403].contains(&allowed.status.as_u16()) && allowed.status.as_u16() < 500,
                "{method} {path} with every scope: {} {}",
                allowed.status,
                allowed.text
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} operations checked");
}
