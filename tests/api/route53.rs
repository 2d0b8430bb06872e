//! The Route53 provider against a real `moto_server` (installed by `.ci/run`): weighted
//! records UPSERTed as planned, hosted zones found by the longest suffix.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use tranche::route53::{DEFAULT_TTL, Route53Provider};
use tranche_actors::ports::DnsProvider;
use tranche_core::dns::planner::{BatchLimits, RecordChange, RecordType, plan};
use tranche_core::dns::provider::ProviderError;
use tranche_core::storm::Weights;

use crate::helpers::eventually;

/// A `moto_server` on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is not installed: pip install 'moto[server]' (.ci/run does this)");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually("moto_server answering", Duration::from_secs(30), || async {
        client
            .get(format!("{url}/moto-api/"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    Moto { child, url }
}

async fn create_zone(provider: &Route53Provider, name: &str) -> String {
    let out = provider
        .client()
        .create_hosted_zone()
        .name(name)
        .caller_reference(uuid::Uuid::new_v4().to_string())
        .send()
        .await
        .unwrap();
    provider.refresh_zones().await;
    out.hosted_zone()
        .unwrap()
        .id()
        .trim_start_matches("/hostedzone/")
        .to_owned()
}

fn change(id: i64, name: &str, primary: u8, applied: Option<u8>) -> RecordChange {
    RecordChange {
        domain_id: id,
        name: name.to_owned(),
        rtype: RecordType::Cname,
        primary_value: format!("{name}.cdn.cloudflare.net"),
        backup_value: format!("{name}.global.prod.fastly.net"),
        weights: Weights::new(primary),
        applied: applied.map(Weights::new),
        decided_at: Utc::now(),
        pinned: false,
    }
}

/// (set identifier, weight, value) of every weighted CNAME named `name` in the zone.
async fn weights_of(
    provider: &Route53Provider,
    zone_id: &str,
    name: &str,
) -> Vec<(String, i64, String)> {
    let out = provider
        .client()
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .start_record_name(name)
        .send()
        .await
        .unwrap();
    let mut sets: Vec<(String, i64, String)> = out
        .resource_record_sets()
        .iter()
        .filter(|r| r.name().trim_end_matches('.') == name)
        .map(|r| {
            (
                r.set_identifier().unwrap_or_default().to_owned(),
                r.weight().unwrap_or(-1),
                r.resource_records()[0].value().to_owned(),
            )
        })
        .collect();
    sets.sort();
    sets
}

/// The (primary, backup) weights of `name`'s weighted pair in Route53 now.
pub async fn weight_pair(provider: &Route53Provider, name: &str) -> Option<(i64, i64)> {
    let zone = provider.zone_id_for(name).await.ok()?;
    let sets = weights_of(provider, &zone, name).await;
    let get = |id: &str| sets.iter().find(|(s, _, _)| s == id).map(|(_, w, _)| *w);
    Some((get("primary")?, get("backup")?))
}

/// Per record name, the primary weights in `ChangeResourceRecordSets` request bodies, in
/// order: what the provider was asked to apply.
pub fn primary_weights_in(bodies: &[String]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let field = |set: &str, tag: &str| -> Option<String> {
        let open = format!("<{tag}>");
        let start = set.find(&open)? + open.len();
        let end = set[start..].find(&format!("</{tag}>"))? + start;
        Some(set[start..end].to_owned())
    };
    let mut sent: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for body in bodies {
        for set in body.split("<ResourceRecordSet>").skip(1) {
            if field(set, "SetIdentifier").as_deref() != Some("primary") {
                continue;
            }
            if let (Some(name), Some(weight)) = (field(set, "Name"), field(set, "Weight")) {
                sent.entry(name.trim_end_matches('.').to_owned())
                    .or_default()
                    .push(weight.parse().unwrap());
            }
        }
    }
    sent
}

#[tokio::test]
async fn storms_and_ramps_become_weighted_records_in_route53() {
    let moto = moto().await;
    let provider = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    let zone = create_zone(&provider, "example.com").await;

    // A storm: 0/100, both record sets of the domain in one request.
    let plan_1 = plan(
        vec![change(1, "app.example.com", 0, None)],
        &BatchLimits::ROUTE53,
    );
    assert_eq!(plan_1.batches.len(), 1);
    let submitted = provider
        .apply("example.com", &plan_1.batches[0])
        .await
        .unwrap();
    assert!(!submitted.change_id.is_empty());
    assert_eq!(
        weights_of(&provider, &zone, "app.example.com").await,
        vec![
            (
                "backup".into(),
                100,
                "app.example.com.global.prod.fastly.net".into()
            ),
            (
                "primary".into(),
                0,
                "app.example.com.cdn.cloudflare.net".into()
            ),
        ]
    );
    eventually("change in sync", Duration::from_secs(10), || async {
        provider
            .in_sync(&submitted.change_id)
            .await
            .unwrap()
            .then_some(())
    })
    .await;

    // The ramp back, step by step, ends at 100/0 (UPSERT replaces the weights in place).
    for (primary, applied) in [(25, 0), (50, 25), (100, 50)] {
        let p = plan(
            vec![change(1, "app.example.com", primary, Some(applied))],
            &BatchLimits::ROUTE53,
        );
        provider.apply("example.com", &p.batches[0]).await.unwrap();
        let sets = weights_of(&provider, &zone, "app.example.com").await;
        assert_eq!(
            (sets[1].1, sets[0].1),
            (i64::from(primary), i64::from(100 - primary)),
            "{sets:?}"
        );
    }
}

#[tokio::test]
async fn hosted_zone_is_the_longest_matching_suffix() {
    let moto = moto().await;
    let provider = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    let outer = create_zone(&provider, "example.com").await;
    let inner = create_zone(&provider, "eu.example.com").await;
    assert_eq!(
        provider.zone_id_for("app.eu.example.com").await.unwrap(),
        inner
    );
    assert_eq!(
        provider.zone_id_for("app.example.com").await.unwrap(),
        outer
    );
    assert_eq!(provider.zone_id_for("eu.example.com").await.unwrap(), inner);
    assert!(matches!(
        provider.zone_id_for("app.example.org").await,
        Err(ProviderError::ZoneNotFound(_))
    ));
    // "xample.com" is not a label suffix of anything here.
    assert!(provider.zone_id_for("notexample.com").await.is_err());
}

#[tokio::test]
async fn many_domains_of_a_zone_go_in_few_requests() {
    let moto = moto().await;
    let provider = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    let zone = create_zone(&provider, "example.com").await;
    let changes: Vec<_> = (0..600)
        .map(|i| change(i, &format!("d{i}.example.com"), 0, Some(100)))
        .collect();
    let p = plan(changes, &BatchLimits::ROUTE53);
    // 600 domains × 4 counted records / 1,000 per request.
    assert_eq!(p.batches.len(), 3);
    for batch in &p.batches {
        provider.apply("example.com", batch).await.unwrap();
    }
    assert_eq!(
        weights_of(&provider, &zone, "d599.example.com").await[0].1,
        100
    );
    assert_eq!(weights_of(&provider, &zone, "d0.example.com").await[1].1, 0);
}

/// The whole path: probes → storm → desired weights → zone actor → Route53 (moto) → recovery.
#[tokio::test]
async fn a_storm_moves_route53_weights_to_the_backup_and_back() {
    use std::sync::Arc;

    use serde_json::json;
    use tranche::demo::edge::{Behaviour, FakeEdge};
    use tranche::prober::NetworkProber;

    use crate::helpers::{Auth, spawn_app};

    let moto = moto().await;
    let provider = Arc::new(Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL));
    let zone = create_zone(&provider, "example.test").await;
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let mut app = spawn_app().await;
    let demo = Auth::Header(1);
    let service = app.create_service(&demo, "web").await;
    app.post(
        &format!("/v1/services/{service}/storm-policies"),
        &demo,
        json!({ "window_seconds": 3, "min_samples": 2, "probe_interval_seconds": 1, "cooldown_seconds": 2 }),
    )
    .await
    .expect(201);
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &demo,
            json!({
                "name": "app.example.test",
                "primary_target": primary.addr().to_string(),
                "backup_target": backup.addr().to_string(),
                "probe_scheme": "http",
                "probe_timeout_ms": 500,
            }),
        )
        .await
        .expect(201);
    assert_eq!(
        domain.body["steering_enabled"], true,
        "dev mode steers without verification"
    );
    app.start_engine_with_dns(
        Arc::new(NetworkProber::new(&[], true).unwrap()),
        Some(provider.clone()),
    )
    .await;

    let weights = |p: i64| {
        let provider = provider.clone();
        let zone = zone.clone();
        async move {
            let sets = weights_of(&provider, &zone, "app.example.test").await;
            (sets.len() == 2 && sets[1].1 == p && sets[0].1 == 100 - p).then_some(sets)
        }
    };
    // The weighted pair is created at normal weights.
    let sets = eventually("records created at 100/0", Duration::from_secs(15), || {
        weights(100)
    })
    .await;
    assert_eq!(sets[0].0, "backup");
    assert_eq!(sets[1].2, "127.0.0.1", "IP targets become A records");

    primary.set(Behaviour::Status(503));
    eventually(
        "failover applied in Route53",
        Duration::from_secs(15),
        || weights(0),
    )
    .await;
    let (reason, storm_id): (String, Option<String>) = sqlx::query_as(
        "select changes->0->>'reason', changes->0->>'storm_id' from dns_changes
          where status in ('insync', 'submitted') order by submitted_at desc limit 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reason, "failover");
    assert!(
        storm_id.is_some(),
        "the change names the storm that caused it"
    );
    // The failover's latency (storm start to INSYNC) is measured once the provider confirms.
    eventually(
        "failover latency observed",
        Duration::from_secs(15),
        || async {
            let count = tranche::metrics::METRICS.render().lines().find_map(|l| {
                l.strip_prefix("tranche_failover_seconds_count ")?
                    .parse::<f64>()
                    .ok()
            });
            count.filter(|&n| n >= 1.0)
        },
    )
    .await;

    primary.set(Behaviour::Healthy);
    eventually(
        "ramped back to 100/0 in Route53",
        Duration::from_secs(30),
        || weights(100),
    )
    .await;
    let ramps: i64 =
        sqlx::query_scalar("select count(*) from dns_changes where changes->0->>'reason' = 'ramp'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        ramps >= 2,
        "the ramp went through intermediate weights ({ramps} ramp changes)"
    );
    // Route53 shows the change as soon as it accepts it; the zone actor records the weights as
    // applied once the change is INSYNC, a poll later.
    eventually(
        "applied weights recorded as 100/0",
        Duration::from_secs(15),
        || async {
            let applied: (i16, i16) = sqlx::query_as(
                "select applied_primary_weight, applied_backup_weight from dns_records",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (applied == (100, 0)).then_some(())
        },
    )
    .await;

    crate::helpers::assert_events_conform(
        &app.pool,
        &["storm.started", "storm.ended", "dns.change_applied"],
    )
    .await;

    // The API: desired vs applied per domain, and the audit log (only for the owner).
    let view = app
        .get(&format!("/v1/services/{service}/dns"), &demo)
        .await
        .expect(200)
        .body;
    let d = &view["domains"][0];
    assert_eq!(d["desired_weights"], json!({ "primary": 100, "backup": 0 }));
    assert_eq!(d["applied_weights"], json!({ "primary": 100, "backup": 0 }));
    assert_eq!(
        (d["converged"].as_bool(), d["provider"].as_str()),
        (Some(true), Some("route53"))
    );
    assert_eq!(d["zone"], "example.test");
    let log = app
        .get(&format!("/v1/dns/changes?service_id={service}"), &demo)
        .await
        .expect(200)
        .body;
    let log = log.as_array().unwrap();
    assert!(log.len() >= 4, "initial, failover, ramp steps: {log:?}");
    assert_eq!(log.last().unwrap()["changes"][0]["reason"], "initial");
    assert!(log.iter().any(
        |c| c["changes"][0]["reason"] == "failover" && c["changes"][0]["storm_id"].is_string()
    ));
    assert!(
        log.iter()
            .all(|c| c["provider"] == "route53" && c["provider_change_id"].is_string())
    );
    app.get("/v1/dns/changes?status=bogus", &demo)
        .await
        .expect_error(400, "bad_request", Some("status"));
    let (_, other) = app.create_customer("other").await;
    assert_eq!(
        app.get("/v1/dns/changes", &Auth::Key(other.clone()))
            .await
            .expect(200)
            .body,
        json!([])
    );
    app.get(&format!("/v1/services/{service}/dns"), &Auth::Key(other))
        .await
        .expect_error(404, "not_found", None);
}

#[tokio::test]
async fn an_operator_pin_wins_until_released() {
    use std::sync::Arc;

    use serde_json::json;
    use tranche::prober::NetworkProber;

    use crate::helpers::{Auth, spawn_app};

    let moto = moto().await;
    let provider = Arc::new(Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL));
    let zone = create_zone(&provider, "example.test").await;
    let mut app = spawn_app().await;
    let demo = Auth::Header(1);
    let service = app.create_service(&demo, "web").await;
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &demo,
            json!({ "name": "app.example.test", "primary_target": "edge-a.example.net", "backup_target": "edge-b.example.net", "probe_scheme": "http" }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    app.start_engine_with_dns(
        Arc::new(NetworkProber::new(&[], true).unwrap()),
        Some(provider.clone()),
    )
    .await;
    let primary_weight = |p: i64| {
        let (provider, zone) = (provider.clone(), zone.clone());
        async move {
            let sets = weights_of(&provider, &zone, "app.example.test").await;
            (sets.len() == 2 && sets[1].1 == p).then_some(sets)
        }
    };
    let sets = eventually("records at 100/0", Duration::from_secs(15), || {
        primary_weight(100)
    })
    .await;
    assert_eq!(
        sets[1].2, "edge-a.example.net",
        "hostname targets become CNAMEs"
    );

    let pin = format!("/v1/services/{service}/domains/{domain}/dns-pin");
    app.request(
        reqwest::Method::PUT,
        &pin,
        &demo,
        Some(r#"{"primary_weight": 101, "reason": "x"}"#),
    )
    .await
    .expect_error(422, "validation_failed", Some("primary_weight"));
    app.request(
        reqwest::Method::PUT,
        &pin,
        &demo,
        Some(r#"{"primary_weight": 30, "reason": " "}"#),
    )
    .await
    .expect_error(422, "validation_failed", Some("reason"));
    let resp = app
        .request(
            reqwest::Method::PUT,
            &pin,
            &demo,
            Some(r#"{"primary_weight": 30, "reason": "moving to the new CDN"}"#),
        )
        .await
        .expect(200);
    assert_eq!(resp.body["weights"], json!({ "primary": 30, "backup": 70 }));
    assert_eq!(resp.body["pinned_by"], "dev");
    eventually("pin applied", Duration::from_secs(15), || {
        primary_weight(30)
    })
    .await;
    let view = app
        .get(&format!("/v1/services/{service}/dns"), &demo)
        .await
        .expect(200)
        .body;
    assert_eq!(view["domains"][0]["pin"]["reason"], "moving to the new CDN");
    let reason: String = sqlx::query_scalar(
        "select changes->0->>'reason' from dns_changes order by submitted_at desc limit 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reason, "manual");

    app.delete(&pin, &demo).await.expect(204);
    app.delete(&pin, &demo)
        .await
        .expect_error(404, "not_found", None);
    eventually(
        "released: back to the storm machine's 100/0",
        Duration::from_secs(15),
        || primary_weight(100),
    )
    .await;
    let events: Vec<String> = sqlx::query_scalar("select action from dns_pin_events order by at")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, vec!["pin", "release"]);
    // Another customer cannot pin it.
    let (_, other) = app.create_customer("other").await;
    app.request(
        reqwest::Method::PUT,
        &pin,
        &Auth::Key(other),
        Some(r#"{"primary_weight": 0, "reason": "x"}"#),
    )
    .await
    .expect_error(404, "not_found", None);
}

/// Fifty domains in ten zones fail over and recover together under the shipped rate limit
/// (4 requests/s, burst 8): each zone's failovers leave in few ChangeBatches, and every domain
/// visits every ramp step *at the provider* — none is coalesced away — before its storm closes.
#[tokio::test]
async fn fifty_domains_recovering_together_visit_every_ramp_step_at_route53() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tranche::demo::edge::{Behaviour, FakeEdge};
    use tranche::prober::NetworkProber;

    use crate::dns_faults::{Faults, fault_proxy};
    use crate::helpers::spawn_app;

    const ZONES: usize = 10;
    const PER_ZONE: usize = 5;
    const N: i64 = (ZONES * PER_ZONE) as i64;
    let moto = moto().await;
    let setup = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    for k in 0..ZONES {
        create_zone(&setup, &format!("z{k}.mass.test")).await;
    }
    let proxy = fault_proxy(moto.url.clone(), Faults::None).await;
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let app = spawn_app().await;
    let service = crate::helpers::fast_service(&app).await;
    let mut names = Vec::new();
    for k in 0..ZONES {
        let zone = format!("z{k}.mass.test");
        let edges = (primary.addr(), backup.addr());
        names.extend(crate::helpers::add_zone_domains(&app, service, &zone, PER_ZONE, edges).await);
    }
    let engine = tranche::node::start(
        crate::helpers::test_engine_config("mass-node"),
        app.pool.clone(),
        Arc::new(NetworkProber::new(&[], true).unwrap()),
        Some(tranche::node::DnsOptions {
            provider: Arc::new(Route53Provider::for_endpoint(&proxy.url, DEFAULT_TTL)),
            rate_per_sec: 4.0,
            burst: 8,
        }),
    )
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually("initial records", Duration::from_secs(60), || async {
        (count("select count(*) from dns_records where applied_primary_weight = 100").await == N)
            .then_some(())
    })
    .await;

    // Mass failover: the zone's domains probe in the same part of the interval and the zone
    // actor lingers, so each zone's failovers leave together.
    let before = proxy.calls.load(Ordering::SeqCst);
    proxy.bodies.lock().unwrap().clear();
    primary.set(Behaviour::Status(503));
    eventually(
        "all failed over at Route53",
        Duration::from_secs(60),
        || async {
            (count("select count(*) from dns_records where applied_primary_weight = 0").await == N)
                .then_some(())
        },
    )
    .await;
    let failover_calls = proxy.calls.load(Ordering::SeqCst) - before;
    assert!(
        failover_calls <= 2 * ZONES,
        "{failover_calls} ChangeResourceRecordSets calls to fail {N} domains over in {ZONES} zones"
    );

    primary.set(Behaviour::Healthy);
    eventually("all recovered", Duration::from_secs(90), || async {
        let open = count("select count(*) from storm_events where ended_at is null").await;
        let back =
            count("select count(*) from dns_records where applied_primary_weight = 100").await;
        (open == 0 && back == N).then_some(())
    })
    .await;
    let sent = primary_weights_in(&proxy.bodies.lock().unwrap());
    assert_eq!(sent.len(), names.len());
    for (name, weights) in &sent {
        let mut steps = weights.clone();
        steps.dedup();
        assert_eq!(steps, vec![0, 25, 50, 100], "{name}: {weights:?}");
    }
    for name in &names {
        assert_eq!(weight_pair(&setup, name).await, Some((100, 0)), "{name}");
    }
    engine.shutdown().await;
}

/// A hosted zone created after the engine started is found without a restart: the miss is
/// retried with backoff and the zone list re-read.
#[tokio::test]
async fn a_hosted_zone_created_after_start_up_is_picked_up() {
    use std::sync::Arc;

    use serde_json::json;
    use tranche::demo::edge::FakeEdge;
    use tranche::prober::NetworkProber;

    use crate::helpers::{Auth, spawn_app};

    let moto = moto().await;
    let provider = Arc::new(Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL));
    let edge = FakeEdge::http().await.unwrap();
    let mut app = spawn_app().await;
    let demo = Auth::Header(1);
    let service = app.create_service(&demo, "web").await;
    app.post(
        &format!("/v1/services/{service}/domains"),
        &demo,
        json!({ "name": "app.late.test", "primary_target": edge.addr().to_string(),
                "backup_target": edge.addr().to_string(), "probe_scheme": "http" }),
    )
    .await
    .expect(201);
    app.start_engine_with_dns(
        Arc::new(NetworkProber::new(&[], true).unwrap()),
        Some(provider.clone()),
    )
    .await;
    let error: String = eventually("the miss", Duration::from_secs(15), || async {
        sqlx::query_scalar("select error from dns_changes where status = 'failed' limit 1")
            .fetch_optional(&app.pool)
            .await
            .unwrap()
    })
    .await;
    assert!(
        error.contains("no Route53 hosted zone contains app.late.test"),
        "{error}"
    );
    let will_retry: bool =
        sqlx::query_scalar("select bool_and(will_retry) from dns_changes where status = 'failed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(will_retry, "a missing zone is retried, not given up on");

    // The operator creates the zone; nothing is restarted.
    let setup = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    create_zone(&setup, "late.test").await;
    eventually(
        "applied in the new zone",
        Duration::from_secs(45),
        || async { (weight_pair(&setup, "app.late.test").await == Some((100, 0))).then_some(()) },
    )
    .await;
}
