//! Webhooks against a local receiver: signed deliveries, test pings, Slack format, a receiver
//! down for a while then up (everything delivered, in order), replays, refused destinations.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tranche::postgres::outbox::{NewEvent, emit};
use tranche_core::events::EventType;

use poem::web::Data;
use poem::{EndpointExt, Route, Server, handler, post};
use serde_json::{Value, json};
use tranche::node::{EngineOptions, WebhookOptions};

use crate::helpers::{Auth, TestApp, eventually, spawn_app, spawn_app_with};

const DEV: Auth = Auth::Header(1);

#[derive(Default)]
struct Received {
    requests: Mutex<Vec<(poem::http::HeaderMap, Vec<u8>)>>,
    status: AtomicU16,
}

#[handler]
async fn hook(req: &poem::Request, body: Vec<u8>, state: Data<&Arc<Received>>) -> poem::Response {
    state
        .requests
        .lock()
        .unwrap()
        .push((req.headers().clone(), body));
    let status = state.status.load(Ordering::SeqCst);
    poem::Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap())
        .finish()
}

/// A local webhook receiver answering `status` (changeable) to every POST.
async fn receiver() -> (String, Arc<Received>) {
    let state = Arc::new(Received::default());
    state.status.store(200, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Route::new().at("/hook", post(hook)).data(state.clone());
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    (format!("http://{addr}/hook"), state)
}

async fn app_with_dispatcher() -> TestApp {
    app_with_dispatcher_keys(&[]).await
}

/// An app and a dispatcher sealing webhook secrets with `keys` (`id:hex`).
async fn app_with_dispatcher_keys(keys: &[&str]) -> TestApp {
    let keys: Vec<tranche::config::Secret> = keys
        .iter()
        .map(|k| tranche::config::Secret::new(*k))
        .collect();
    let secrets = Arc::new(tranche::secrets::SecretBox::new(&keys).unwrap());
    let mut app = spawn_app_with(move |s| {
        s.webhook_allow_private = true;
        s.webhook_secret_keys = keys;
    })
    .await;
    app.start_engine_with(EngineOptions {
        webhooks: Some(WebhookOptions {
            secrets,
            allow_private: true,
            idle: Duration::from_secs(3600),
            retention: tranche::node::EVENT_RETENTION,
        }),
        ..EngineOptions::default()
    })
    .await;
    let engine = app.engine();
    eventually(
        "the dispatcher owning the shards",
        Duration::from_secs(20),
        || async { (engine.owned_shards().await.len() == 256).then_some(()) },
    )
    .await;
    app
}

fn verify_signature(secret: &str, headers: &poem::http::HeaderMap, body: &[u8]) {
    let sig = headers["tranche-signature"].to_str().unwrap();
    let t: i64 = sig
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - t).abs() < 60,
        "fresh timestamp"
    );
    assert_eq!(
        sig,
        tranche::webhook::signature(secret, t, body),
        "signature verifies"
    );
    verify_standard_webhooks(secret, headers, body);
}

/// Verifies the Standard Webhooks headers as a stock verifier does (independently of
/// Tranche's code): key = base64 after `whsec_`, HMAC-SHA256 over `<id>.<timestamp>.<body>`.
fn verify_standard_webhooks(secret: &str, headers: &poem::http::HeaderMap, body: &[u8]) {
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let id = headers["webhook-id"].to_str().unwrap();
    let t = headers["webhook-timestamp"].to_str().unwrap();
    let key = b64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .expect("generated secrets are whsec_ + base64");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{t}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    let sent = headers["webhook-signature"].to_str().unwrap();
    assert!(
        sent.split(' ').any(|s| s == expected),
        "Standard Webhooks signature verifies: {sent} vs {expected}"
    );
    assert_eq!(headers["tranche-event-id"].to_str().unwrap(), id);
}

/// A storm on a new domain of a new service of customer 1: its start, then (if `end`) its end.
async fn storm(app: &TestApp, name: &str, end: bool) {
    let service = app.create_service(&DEV, name).await;
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &DEV,
            json!({ "name": format!("{name}.example.com") }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    // As the engine commits a storm: the fact and its event in one transaction.
    let mut tx = app.pool.begin().await.unwrap();
    let (id, started_at): (uuid::Uuid, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "insert into storm_events (service_id, domain_id, kind, started_at, trigger)
         values ($1, $2, 'http_availability', now(), '{}') returning id, started_at",
    )
    .bind(service)
    .bind(domain)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let about = json!({
        "storm_id": id, "service_id": service, "domain_id": domain,
        "domain": format!("{name}.example.com"), "kind": "http_availability",
        "started_at": started_at.to_rfc3339(),
    });
    let mut started = about.clone();
    started["trigger"] = json!({});
    emit(
        &mut tx,
        &[NewEvent::new(1, EventType::StormStarted, started)],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    if end {
        let mut tx = app.pool.begin().await.unwrap();
        let ended_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "update storm_events set ended_at = now() where id = $1 returning ended_at",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let mut ended = about;
        ended["ended_at"] = json!(ended_at.to_rfc3339());
        emit(&mut tx, &[NewEvent::new(1, EventType::StormEnded, ended)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

/// Creates a JSON endpoint to `url` for the dev customer: its id and secret (shown this once).
async fn create_endpoint(app: &TestApp, url: &str) -> (i64, String) {
    let created = app
        .post("/v1/webhooks", &DEV, json!({ "url": url }))
        .await
        .expect(201)
        .body;
    (
        created["id"].as_i64().unwrap(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// The secret column of endpoint `id` as stored.
async fn stored_secret(app: &TestApp, id: i64) -> String {
    sqlx::query_scalar("select secret from webhook_endpoints where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn endpoints_get_signed_pings_and_slack_sentences() {
    let app = app_with_dispatcher().await;
    let (url, received) = receiver().await;
    let (id, secret) = create_endpoint(&app, &url).await;
    assert!(secret.starts_with("whsec_"));
    let listed = app.get("/v1/webhooks", &DEV).await.expect(200).body;
    assert!(
        listed[0].get("secret").is_none(),
        "secrets are shown once: {listed}"
    );

    let ping = app
        .post(&format!("/v1/webhooks/{id}/test"), &DEV, json!({}))
        .await
        .expect(202)
        .body;
    assert_eq!(app.engine().deliver_webhooks_now().await, Some(1));
    let (headers, body) = received.requests.lock().unwrap()[0].clone();
    verify_signature(&secret, &headers, &body);
    assert_eq!(headers["tranche-event"], "ping");
    let envelope: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envelope["id"], ping["event_id"]);
    assert_eq!(envelope["type"], "ping");
    assert_eq!(envelope["customer_id"], 1);
    assert!(envelope["created_at"].is_string());
    let log = app
        .get(&format!("/v1/webhooks/{id}/deliveries"), &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["last_status_code"], 200);

    // A Slack endpoint subscribed to storm starts gets a readable sentence, and nothing else.
    let (slack_url, slack) = receiver().await;
    app.post(
        "/v1/webhooks",
        &DEV,
        json!({ "url": slack_url, "format": "slack", "event_types": ["storm.started"] }),
    )
    .await
    .expect(201);
    storm(&app, "shop", true).await;
    app.engine().deliver_webhooks_now().await;
    let texts: Vec<Value> = slack
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    let text = texts[0]["text"].as_str().unwrap();
    assert!(text.contains("Storm on shop.example.com"), "{text}");
    // The JSON endpoint (all events) got the start and the end.
    let types: Vec<String> = received
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h["tranche-event"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["ping", "storm.started", "storm.ended"]);

    // The same events, as the API lists them (newest first), filterable by type.
    let events = app.get("/v1/events", &DEV).await.expect(200).body;
    let listed: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["storm.ended", "storm.started", "ping"]);
    let started = app
        .get("/v1/events?type=storm.started", &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(started.as_array().unwrap().len(), 1);
    assert_eq!(started[0]["data"]["domain"], "shop.example.com");
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_every_event_in_order() {
    let app = app_with_dispatcher().await;
    let (url, received) = receiver().await;
    let endpoint = app
        .post("/v1/webhooks", &DEV, json!({ "url": url }))
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    received.status.store(503, Ordering::SeqCst);
    for i in 0..5 {
        storm(&app, &format!("site{i}"), true).await;
    }
    // Down: the first delivery fails and holds the rest back (order per endpoint).
    assert_eq!(app.engine().deliver_webhooks_now().await, Some(0));
    assert_eq!(received.requests.lock().unwrap().len(), 1);
    let log = app
        .get(
            &format!("/v1/webhooks/{endpoint}/deliveries?limit=20"),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    let oldest = &log.as_array().unwrap()[9];
    assert_eq!(
        (oldest["status"].as_str(), oldest["attempts"].as_i64()),
        (Some("pending"), Some(1))
    );
    assert_eq!(oldest["last_status_code"], 503);
    // Still in backoff: a pass now sends nothing.
    assert_eq!(app.engine().deliver_webhooks_now().await, Some(0));
    assert_eq!(received.requests.lock().unwrap().len(), 1);

    // Up again, and the backoff over (moved to now rather than waited for).
    received.status.store(200, Ordering::SeqCst);
    sqlx::query("update webhook_deliveries set next_attempt_at = now() where status = 'pending'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.engine().deliver_webhooks_now().await, Some(10));
    let requests = received.requests.lock().unwrap().clone();
    let ids: Vec<String> = requests[1..]
        .iter()
        .map(|(h, _)| h["tranche-event-id"].to_str().unwrap().to_owned())
        .collect();
    let emitted: Vec<String> = sqlx::query_scalar(
        "select e.id::text from webhook_deliveries d join events e on e.id = d.event_id
          where d.endpoint_id = $1 order by d.seq",
    )
    .bind(endpoint)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(ids, emitted, "every event, once, in emission order");
    let kinds: Vec<&str> = requests[1..]
        .iter()
        .map(|(h, _)| h["tranche-event"].to_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "storm.started").count(), 5);

    // A manual replay delivers the same event again (receivers dedupe on the event id).
    let first = &app
        .get(
            &format!("/v1/webhooks/{endpoint}/deliveries?limit=20"),
            &DEV,
        )
        .await
        .expect(200)
        .body
        .as_array()
        .unwrap()[9]
        .clone();
    let replay = app
        .post(
            &format!(
                "/v1/webhooks/{endpoint}/deliveries/{}/replay",
                first["id"].as_str().unwrap()
            ),
            &DEV,
            json!({}),
        )
        .await
        .expect(202)
        .body;
    assert_eq!(replay["event_id"], first["event_id"]);
    assert_eq!(app.engine().deliver_webhooks_now().await, Some(1));
    let last = received.requests.lock().unwrap().last().unwrap().0.clone();
    assert_eq!(
        last["tranche-event-id"].to_str().unwrap(),
        first["event_id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn private_destinations_and_unknown_events_are_refused() {
    let app = spawn_app().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/x",
        "http://[::1]/x",
        "http://10.0.0.8/x",
    ] {
        app.post("/v1/webhooks", &DEV, json!({ "url": url }))
            .await
            .expect_error(422, "validation_failed", Some("url"));
    }
    app.post(
        "/v1/webhooks",
        &DEV,
        json!({ "url": "ftp://example.com/x" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("url"));
    app.post(
        "/v1/webhooks",
        &DEV,
        json!({ "url": "https://example.com/x", "event_types": ["storm.exploded"] }),
    )
    .await
    .expect_error(422, "validation_failed", Some("event_types[0]"));
    app.post(
        "/v1/webhooks",
        &DEV,
        json!({ "url": "https://example.com/x", "secret": "short" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("secret"));
    app.post("/v1/webhooks", &DEV, json!({}))
        .await
        .expect_error(422, "validation_failed", Some("url"));
    let ok = app
        .post(
            "/v1/webhooks",
            &DEV,
            json!({ "url": "https://hooks.example.com/x", "format": "slack" }),
        )
        .await
        .expect(201)
        .body;
    // Another customer sees nothing of it.
    let (_, key) = app.create_customer("other").await;
    app.get(&format!("/v1/webhooks/{}", ok["id"]), &Auth::Key(key))
        .await
        .expect_error(404, "not_found", None);
}

#[tokio::test]
async fn an_expiring_certificate_is_announced_once() {
    let app = app_with_dispatcher().await;
    let (url, received) = receiver().await;
    let endpoint = app
        .post(
            "/v1/webhooks",
            &DEV,
            json!({ "url": url, "event_types": ["certificate.expiring"] }),
        )
        .await
        .expect(201)
        .body["id"]
        .clone();
    let service = app.create_service(&DEV, "shop").await;
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &DEV,
            json!({ "name": "shop.example.com" }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    // What the observation writer records after probes: the primary's certificate expires in
    // 3 days (and an hour), the backup's in 90; written twice (two flushes).
    let store = tranche::postgres::engine_store::PgEngineStore::new(app.pool.clone());
    let now = chrono::Utc::now();
    let observation = |cdn, days| tranche_actors::ports::Observation {
        domain_id: domain,
        cdn,
        at: now,
        outcome: tranche_core::probe::Outcome::Ok,
        latency_ms: 5,
        status: Some(200),
        error: None,
        cert_expires_at: Some(now + chrono::TimeDelta::days(days) + chrono::TimeDelta::hours(1)),
        availability: None,
        vantages: Vec::new(),
    };
    for _ in 0..2 {
        use tranche_actors::ports::EngineStore;
        store
            .write_observations(
                "n",
                &[
                    observation(tranche_core::probe::Cdn::Primary, 3),
                    observation(tranche_core::probe::Cdn::Backup, 90),
                ],
            )
            .await
            .unwrap();
    }
    assert_eq!(app.engine().deliver_webhooks_now().await, Some(1));
    let (headers, body) = received.requests.lock().unwrap()[0].clone();
    assert_eq!(headers["tranche-event"], "certificate.expiring");
    let data = &serde_json::from_slice::<Value>(&body).unwrap()["data"];
    assert_eq!(data["domain"], "shop.example.com");
    assert_eq!(data["cdn"], "primary");
    assert_eq!(data["days_left"], 3);
    app.post(&format!("/v1/webhooks/{endpoint}/test"), &DEV, json!({}))
        .await
        .expect(202);
    crate::helpers::assert_events_conform(&app.pool, &["certificate.expiring", "ping"]).await;
}

/// Old events go with their delivery logs; one still being delivered stays, as do recent ones.
#[tokio::test]
async fn old_events_are_pruned_unless_still_pending() {
    use tranche_actors::ports::WebhookStore;

    let app = spawn_app().await;
    let id = app
        .post(
            "/v1/webhooks",
            &DEV,
            json!({ "url": "https://example.com/hook" }),
        )
        .await
        .expect(201)
        .body["id"]
        .clone();
    for _ in 0..3 {
        app.post(&format!("/v1/webhooks/{id}/test"), &DEV, json!({}))
            .await
            .expect(202);
    }
    let events: Vec<uuid::Uuid> =
        sqlx::query_scalar("select id from events order by occurred_at, id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let (delivered_old, pending_old, recent) = (events[0], events[1], events[2]);
    sqlx::query("update events set occurred_at = now() - interval '40 days' where id = any($1)")
        .bind([delivered_old, pending_old])
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update webhook_deliveries set status = 'delivered' where event_id = any($1)")
        .bind([delivered_old, recent])
        .execute(&app.pool)
        .await
        .unwrap();
    let store = tranche::postgres::outbox::PgWebhookStore::new(
        app.pool.clone(),
        std::sync::Arc::new(tranche::secrets::SecretBox::plaintext()),
    );
    let pruned = store
        .prune_events(chrono::Utc::now() - chrono::TimeDelta::days(30))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("select id from events order by occurred_at, id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(left, vec![pending_old, recent]);
    let deliveries: i64 =
        sqlx::query_scalar("select count(*) from webhook_deliveries where event_id = $1")
            .bind(delivered_old)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(deliveries, 0, "the delivery log goes with its event");
}

/// A receiver that accepts connections and never answers holds back only its own endpoint:
/// the other endpoint's delivery arrives at once, the hung one times out and is retried later.
#[tokio::test]
async fn a_hung_receiver_delays_only_its_own_endpoint() {
    let app = app_with_dispatcher().await;
    let (url, received) = receiver().await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}/hook", hung.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket); // read nothing, answer nothing
        }
    });
    let stuck = app
        .post("/v1/webhooks", &DEV, json!({ "url": hung_url }))
        .await
        .expect(201)
        .body["id"]
        .clone();
    app.post("/v1/webhooks", &DEV, json!({ "url": url }))
        .await
        .expect(201);
    storm(&app, "site", false).await;

    // The pass runs while the healthy receiver is watched; it ends when the hung request
    // times out (10 s).
    let (pass, ()) = tokio::join!(app.engine().deliver_webhooks_now(), async {
        eventually(
            "the healthy endpoint's delivery, not held behind the hung receiver",
            Duration::from_secs(8),
            || async { (!received.requests.lock().unwrap().is_empty()).then_some(()) },
        )
        .await;
    });
    assert_eq!(pass, Some(1), "one delivered, the hung one not");
    let log = app
        .get(&format!("/v1/webhooks/{stuck}/deliveries"), &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(log[0]["status"], "pending", "retried later: {log}");
    assert_eq!(log[0]["attempts"], 1);
    assert!(
        log[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out") || e.contains("timeout")),
        "{log}"
    );
}

/// Signing secrets are sealed at rest under the configured key, re-sealed under a new key on
/// rotation, and deliveries stay verifiable throughout.
#[tokio::test]
async fn signing_secrets_are_sealed_at_rest_and_rotated() {
    let k1 = format!("k1:{}", "11".repeat(32));
    let k2 = format!("k2:{}", "22".repeat(32));
    let app = app_with_dispatcher_keys(&[&k1]).await;
    let (url, received) = receiver().await;
    let (id, secret) = create_endpoint(&app, &url).await;
    let stored = stored_secret(&app, id).await;
    assert!(stored.starts_with("enc:v1:k1:"), "{stored}");
    assert!(!stored.contains(secret.trim_start_matches("whsec_")));
    // Delivered and verifiable with the plain secret the customer was shown.
    app.post(&format!("/v1/webhooks/{id}/test"), &DEV, json!({}))
        .await
        .expect(202);
    let engine = app.engine();
    eventually("ping delivered", Duration::from_secs(10), || async {
        engine.deliver_webhooks_now().await;
        (received.requests.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    {
        let requests = received.requests.lock().unwrap();
        verify_signature(&secret, &requests[0].0, &requests[0].1);
    }
    // Rotation: k2 first, k1 kept to open; start-up re-seals under k2; then k1 can go.
    let rotated = tranche::secrets::SecretBox::new(&[
        tranche::config::Secret::new(k2.clone()),
        tranche::config::Secret::new(k1.clone()),
    ])
    .unwrap();
    assert_eq!(
        tranche::secrets::reseal_webhook_secrets(&app.pool, &rotated)
            .await
            .unwrap(),
        1
    );
    let stored = stored_secret(&app, id).await;
    assert!(stored.starts_with("enc:v1:k2:"), "{stored}");
    let only_k2 = tranche::secrets::SecretBox::new(&[tranche::config::Secret::new(k2)]).unwrap();
    let customer: i64 =
        sqlx::query_scalar("select customer_id from webhook_endpoints where id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(only_k2.open(customer, &stored).unwrap(), secret);
}
