use serde_json::json;
use tranche::config::Settings;

use crate::helpers::{Auth, TestApp, eventually, spawn_app, spawn_app_on, spawn_app_with};

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
    // The key's cached copy is dropped by notification (milliseconds).
    eventually("the read-only scope", TIMEOUT, || async {
        let resp = app
            .post(
                "/v1/services",
                &read_only,
                json!({ "name": "y", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
            )
            .await;
        (resp.status == 403).then_some(())
    })
    .await;
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

/// Each node caches the keys it has seen; changes reach every node's cache by notification. A
/// change made through a node's API is refused there from the next request, and on the other
/// node within milliseconds; a change made in the database directly, likewise.
#[tokio::test]
async fn revocation_and_suspension_reach_every_node() {
    let a = spawn_app_with(production).await;
    let b = spawn_app_on(a.pool.clone(), production).await;
    let (cid, key) = a.create_customer("acme").await;
    let auth = Auth::Key(key.clone());
    let nodes = [&a, &b];
    for node in nodes {
        node.get("/v1/services", &auth).await.expect(200);
    }

    // Suspended through node a's API: refused there at once, on b within the deadline.
    a.patch(
        &format!("/v1/admin/customers/{cid}"),
        &Auth::Admin,
        json!({ "status": "suspended" }),
    )
    .await
    .expect(200);
    a.get("/v1/services", &auth)
        .await
        .expect_error(401, "unauthorized", None);
    answers_soon(&b, &auth, 401).await;
    a.patch(
        &format!("/v1/admin/customers/{cid}"),
        &Auth::Admin,
        json!({ "status": "active" }),
    )
    .await
    .expect(200);
    a.get("/v1/services", &auth).await.expect(200);
    answers_soon(&b, &auth, 200).await;

    // Changed in the database directly (as by another node): both nodes follow.
    for (change, then) in [
        (
            "update customers set status = 'suspended' where id = $1",
            401,
        ),
        ("update customers set status = 'active' where id = $1", 200),
        (
            "update api_keys set scopes = '{read}' where customer_id = $1",
            200,
        ),
    ] {
        on_customer(&a.pool, change, cid).await;
        for node in nodes {
            answers_soon(node, &auth, then).await;
        }
    }
    // The read-only scope took effect: writing is now forbidden on both nodes.
    for node in nodes {
        node.post(
            "/v1/services",
            &auth,
            json!({ "name": "web", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
        )
        .await
        .expect(403);
    }

    // Revoked through node b's API.
    on_customer(
        &a.pool,
        "update api_keys set scopes = '{read,write,admin}' where customer_id = $1",
        cid,
    )
    .await;
    let id = crate::helpers::eventually("the admin scope back", TIMEOUT, || async {
        let list = b.get("/v1/api-keys", &auth).await;
        (list.status == 200).then(|| list.body[0]["id"].as_i64().unwrap())
    })
    .await;
    b.delete(&format!("/v1/api-keys/{id}"), &auth)
        .await
        .expect(200);
    b.get("/v1/services", &auth)
        .await
        .expect_error(401, "unauthorized", None);
    answers_soon(&a, &auth, 401).await;
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `GET /v1/services` on `node` until it answers `status`.
async fn answers_soon(node: &TestApp, auth: &Auth, status: u16) {
    eventually(&format!("{status} from {}", node.addr), TIMEOUT, || async {
        (node.get("/v1/services", auth).await.status.as_u16() == status).then_some(())
    })
    .await;
}

/// The cache itself, on a real database: it answers without a query while its listener is
/// connected (a change that announces nothing, such as `last_used_at`, is not seen), drops a key
/// when notified, turns off when its connection is lost and on again when it is back, and is
/// off once its listener is dropped.
#[tokio::test]
async fn the_key_cache_answers_until_notified_and_only_while_listening() {
    use tranche::postgres::api_keys::{KeyLookups, prefix_of};
    use tranche::postgres::read_cache::{LISTENER_NAME, listen};
    let app = spawn_app_with(production).await;
    let (cid, key) = app.create_customer("acme").await;
    let prefix = prefix_of(&key).unwrap();
    let lookups = KeyLookups::new(app.pool.clone());
    let listener = tokio::spawn(listen(
        app.pool.clone(),
        "test-key-cache",
        vec![lookups.clone()],
    ));
    let used_at = |n: i64| chrono::DateTime::from_timestamp(1_000_000_000 + n, 0).unwrap();
    let set_used = |n: i64| {
        let pool = app.pool.clone();
        async move {
            sqlx::query("update api_keys set last_used_at = $1 where customer_id = $2")
                .bind(used_at(n))
                .bind(cid)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    // Cached: once looked up, the row's later `last_used_at` is not read.
    let mut n = 0;
    let mut cached = || {
        n += 2;
        let (lookups, set_used) = (lookups.clone(), &set_used);
        let n = n;
        async move {
            set_used(n).await;
            lookups.find(prefix).await.unwrap().unwrap();
            set_used(n + 1).await;
            // The row now says n + 1: anything older came from the cache.
            let seen = lookups.find(prefix).await.unwrap().unwrap().last_used_at;
            (seen.is_some_and(|t| t < used_at(n + 1))).then_some(())
        }
    };
    eventually("the key cached", TIMEOUT, &mut cached).await;

    // A revoking change is announced: the key is dropped and read again.
    on_customer(
        &app.pool,
        "update api_keys set scopes = '{read}' where customer_id = $1",
        cid,
    )
    .await;
    eventually("the new scopes", TIMEOUT, || async {
        let row = lookups.find(prefix).await.unwrap().unwrap();
        (row.scopes == ["read"]).then_some(())
    })
    .await;
    on_customer(
        &app.pool,
        "update customers set status = 'suspended' where id = $1",
        cid,
    )
    .await;
    eventually("the suspension", TIMEOUT, || async {
        let row = lookups.find(prefix).await.unwrap().unwrap();
        (row.customer_status == "suspended").then_some(())
    })
    .await;
    on_customer(
        &app.pool,
        "update api_keys set revoked_at = now() where customer_id = $1",
        cid,
    )
    .await;
    eventually("the revocation", TIMEOUT, || async {
        lookups.find(prefix).await.unwrap().is_none().then_some(())
    })
    .await;
    on_customer(
        &app.pool,
        "update api_keys set revoked_at = null where customer_id = $1",
        cid,
    )
    .await;
    on_customer(
        &app.pool,
        "update customers set status = 'active' where id = $1",
        cid,
    )
    .await;

    // The listener's connection is cut: the cache is emptied and off (a change that announces
    // nothing is seen at once, long before the entry's TTL), then on again after reconnecting.
    eventually("the key cached again", TIMEOUT, &mut cached).await;
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity
          where application_name = any($1) and datname = current_database()",
    )
    .bind(["test-key-cache", LISTENER_NAME])
    .execute(&app.pool)
    .await
    .unwrap();
    set_used(1_000).await;
    eventually("the cache off after the cut", TIMEOUT, || async {
        let row = lookups.find(prefix).await.unwrap().unwrap();
        (row.last_used_at == Some(used_at(1_000))).then_some(())
    })
    .await;
    eventually("the key cached after reconnecting", TIMEOUT, &mut cached).await;

    // Dropped: off at once.
    listener.abort();
    let _ = listener.await;
    set_used(2_000).await;
    let row = lookups.find(prefix).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, Some(used_at(2_000)));
}

/// Runs `sql` with the customer's id as `$1`.
async fn on_customer(pool: &sqlx::PgPool, sql: &'static str, customer_id: i64) {
    sqlx::query(sql)
        .bind(customer_id)
        .execute(pool)
        .await
        .unwrap();
}
