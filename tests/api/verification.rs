//! Domain ownership verification against a real DNS server on loopback: the TXT challenge
//! found, missing (NXDOMAIN), wrong, split over several strings, slow; backoff and deadline;
//! a vanished challenge flagged; steering only for verified domains.

use std::time::Duration;

use serde_json::{Value, json};
use tranche::node::{EngineOptions, VerifyOptions};
use tranche::resolver::HickoryTxt;
use tranche_actors::ports::DnsStore;
use tranche_core::verify::Policy;

use crate::helpers::{Auth, DnsAnswer, LocalDns, TestApp, eventually, spawn_app_with};

/// A production-mode app (no auto-verification) looking up challenges on `dns`.
async fn app_on(dns: &LocalDns, deadline: Duration) -> (TestApp, Auth, i64) {
    let addr = dns.addr;
    let app = spawn_app_with(move |s| {
        s.dev = false;
        s.verification_nameservers = vec![addr];
        s.verification_deadline = tranche::config::HumanDuration(deadline);
    })
    .await;
    let (_, key) = app.create_customer("acme").await;
    let key = Auth::Key(key);
    let service = app.create_service(&key, "web").await;
    (app, key, service)
}

async fn add(app: &TestApp, key: &Auth, service: i64, name: &str) -> Value {
    app.post(
        &format!("/v1/services/{service}/domains"),
        key,
        json!({ "name": name, "primary_target": "192.0.2.1", "backup_target": "192.0.2.2" }),
    )
    .await
    .expect(201)
    .body
}

async fn verify(app: &TestApp, key: &Auth, service: i64, domain: &Value) -> Value {
    app.post(
        &format!("/v1/services/{service}/domains/{}/verify", domain["id"]),
        key,
        json!({}),
    )
    .await
    .expect(200)
    .body
}

/// Starts a node that verifies (only when asked: the tick is an hour) against `dns`, and waits
/// until it owns every shard.
async fn start_verifier(app: &mut TestApp, dns: &LocalDns) {
    app.start_engine_with(EngineOptions {
        verify: Some(VerifyOptions {
            lookup: std::sync::Arc::new(HickoryTxt::new(&[dns.addr]).unwrap()),
            policy: Policy::default(),
            tick: Duration::from_secs(3600),
        }),
        ..EngineOptions::default()
    })
    .await;
    let engine = app.engine();
    eventually(
        "the verifier owning the shards",
        Duration::from_secs(20),
        || async { (engine.owned_shards().await.len() == 256).then_some(()) },
    )
    .await;
}

fn txt(strings: &[&str]) -> Vec<DnsAnswer> {
    vec![DnsAnswer::Txt(
        strings.iter().map(|s| s.to_string()).collect(),
    )]
}

#[tokio::test]
async fn challenges_verify_against_a_real_dns_server() {
    let dns = LocalDns::start().await;
    let (app, key, service) = app_on(&dns, Duration::from_secs(72 * 3600)).await;

    let good = add(&app, &key, service, "app.example.com").await;
    let v = &good["verification"];
    assert_eq!(v["status"], "pending");
    assert_eq!(v["record_name"], "_tranche-challenge.app.example.com");
    assert_eq!(good["steering_enabled"], false);
    let token = v["record_value"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32, "≥ 128 random bits: {token}");
    // Published among other TXT records of the name.
    dns.set(
        "_tranche-challenge.app.example.com",
        vec![
            DnsAnswer::Txt(vec!["v=spf1 -all".into()]),
            DnsAnswer::Txt(vec![token.clone()]),
        ],
    );
    let verified = verify(&app, &key, service, &good).await;
    assert_eq!(verified["verification"]["status"], "verified", "{verified}");
    assert!(verified["verification"]["verified_at"].is_string());
    assert_eq!(verified["steering_enabled"], true);

    // NXDOMAIN: still pending, with the reason and a count.
    let missing = add(&app, &key, service, "www.example.com").await;
    let after = verify(&app, &key, service, &missing).await;
    assert_eq!(after["verification"]["status"], "pending");
    assert!(
        after["verification"]["last_error"]
            .as_str()
            .unwrap()
            .contains("no TXT record"),
        "{after}"
    );
    assert_eq!(after["verification"]["attempts"], 1);
    assert!(after["verification"]["last_checked_at"].is_string());

    // The wrong token.
    let wrong = add(&app, &key, service, "api.example.com").await;
    dns.set(
        "_tranche-challenge.api.example.com",
        txt(&["tranche-verify=not-it"]),
    );
    let after = verify(&app, &key, service, &wrong).await;
    assert_eq!(after["verification"]["status"], "pending");
    assert!(
        after["verification"]["last_error"]
            .as_str()
            .unwrap()
            .contains("does not hold")
    );

    // A token split over several character-strings of one record.
    let split = add(&app, &key, service, "cdn.example.com").await;
    let t = split["verification"]["record_value"].as_str().unwrap();
    let (a, b) = t.split_at(10);
    dns.set("_tranche-challenge.cdn.example.com", txt(&[a, b]));
    assert_eq!(
        verify(&app, &key, service, &split).await["verification"]["status"],
        "verified"
    );

    // A slow but answering server still verifies.
    dns.set(
        "_tranche-challenge.www.example.com",
        txt(&[missing["verification"]["record_value"].as_str().unwrap()]),
    );
    dns.slow_down(Duration::from_millis(700));
    assert_eq!(
        verify(&app, &key, service, &missing).await["verification"]["status"],
        "verified"
    );
    // A server that never answers in time: a lookup error, not evidence — the domain stays
    // pending (and a verified one would not be flagged).
    dns.slow_down(Duration::from_secs(30));
    let started = std::time::Instant::now();
    let timed_out = verify(&app, &key, service, &wrong).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the lookup has a timeout"
    );
    assert_eq!(timed_out["verification"]["status"], "pending");
    assert!(
        timed_out["verification"]["last_error"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{timed_out}"
    );
    dns.slow_down(Duration::ZERO);

    // The challenge disappears from a verified domain: flagged, still verified and steered.
    dns.set("_tranche-challenge.app.example.com", vec![]);
    let lost = verify(&app, &key, service, &good).await;
    assert_eq!(lost["verification"]["status"], "verified");
    assert!(lost["verification"]["lost_at"].is_string(), "{lost}");
    assert_eq!(lost["steering_enabled"], true);
    dns.set("_tranche-challenge.app.example.com", txt(&[&token]));
    let back = verify(&app, &key, service, &good).await;
    assert_eq!(back["verification"]["lost_at"], Value::Null);

    // Another customer cannot trigger checks of these domains.
    let (_, other) = app.create_customer("other").await;
    app.post(
        &format!("/v1/services/{service}/domains/{}/verify", good["id"]),
        &Auth::Key(other),
        json!({}),
    )
    .await
    .expect_error(404, "not_found", None);
}

#[tokio::test]
async fn pending_domains_fail_after_the_deadline_and_can_be_retried() {
    let dns = LocalDns::start().await;
    let (app, key, service) = app_on(&dns, Duration::ZERO).await;
    let domain = add(&app, &key, service, "app.example.com").await;
    let failed = verify(&app, &key, service, &domain).await;
    assert_eq!(failed["verification"]["status"], "failed", "{failed}");
    // Published late: a manual check still verifies it.
    dns.set(
        "_tranche-challenge.app.example.com",
        txt(&[domain["verification"]["record_value"].as_str().unwrap()]),
    );
    assert_eq!(
        verify(&app, &key, service, &domain).await["verification"]["status"],
        "verified"
    );
    crate::helpers::assert_events_conform(
        &app.pool,
        &["domain.verification_failed", "domain.verified"],
    )
    .await;
}

#[tokio::test]
async fn the_verifier_actor_checks_pending_domains_and_only_verified_ones_are_steered() {
    let dns = LocalDns::start().await;
    let (mut app, key, service) = app_on(&dns, Duration::from_secs(72 * 3600)).await;
    let domain = add(&app, &key, service, "app.example.com").await;
    let other = add(&app, &key, service, "www.example.com").await;
    // Even with steering switched on, an unverified domain's zone is not steered.
    sqlx::query("update service_domains set steering_enabled = true")
        .execute(&app.pool)
        .await
        .unwrap();
    let store = tranche::postgres::engine_store::PgEngineStore::new(app.pool.clone());
    let all: Vec<u16> = (0..256).collect();
    assert!(store.zones_on_shards(&all).await.unwrap().is_empty());
    assert!(store.pending_dns("example.com").await.unwrap().is_empty());

    dns.set(
        "_tranche-challenge.app.example.com",
        txt(&[domain["verification"]["record_value"].as_str().unwrap()]),
    );
    start_verifier(&mut app, &dns).await;
    let engine = app.engine();
    assert_eq!(
        engine.verify_now().await,
        Some(2),
        "both checked, one verified"
    );
    let path = format!("/v1/services/{service}/domains");
    let list = app.get(&path, &key).await.expect(200).body;
    let status = |id: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == *id)
            .unwrap()["verification"]["status"]
            .clone()
    };
    assert_eq!(status(&domain["id"]), "verified");
    assert_eq!(status(&other["id"]), "pending");
    // Backoff: the pending one is not due again right away.
    assert_eq!(engine.verify_now().await, Some(0));
    // Now the verified domain's zone is steered, and only that domain.
    assert_eq!(store.zones_on_shards(&all).await.unwrap().len(), 1);
    let pending = store.pending_dns("example.com").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].name, "app.example.com");
}

/// Dev mode verifies domains at creation without a challenge record: the verifier never
/// re-checks them, so they are never flagged as having lost a record they never had.
#[tokio::test]
async fn dev_mode_verifications_are_never_rechecked_nor_flagged() {
    let dns = LocalDns::start().await;
    let addr = dns.addr;
    let mut app = spawn_app_with(move |s| s.verification_nameservers = vec![addr]).await;
    let demo = Auth::Header(1);
    let service = app.create_service(&demo, "web").await;
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &demo,
            json!({ "name": "app.example.com" }),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(domain["verification"]["status"], "verified");
    start_verifier(&mut app, &dns).await;
    let engine = app.engine();
    // Nothing is due, now or a week from now: the verifier checks nothing and writes nothing.
    assert_eq!(engine.verify_now().await, Some(0));
    let store = tranche::postgres::verification::PgVerificationStore::new(app.pool.clone());
    let all: Vec<u16> = (0..256).collect();
    let later = chrono::Utc::now() + chrono::Duration::days(7);
    use tranche_actors::ports::VerificationStore;
    assert!(
        store
            .due_verifications(&all, later, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let view = app
        .get(&format!("/v1/services/{service}/domains"), &demo)
        .await
        .expect(200)
        .body[0]
        .clone();
    assert_eq!(view["verification"]["lost_at"], Value::Null, "{view}");
    assert_eq!(view["verification"]["status"], "verified");
    if let Some(engine) = app.engine.take() {
        engine.shutdown().await;
    }
}
