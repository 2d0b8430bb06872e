//! The engine end to end: real PostgreSQL, real HTTPS edges on loopback, the network prober,
//! the actor tree. A storm opens when the primary breaks (not when only the backup does),
//! closes after the cooldown, and ramps the weights back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tranche::demo::edge::{Behaviour, FakeEdge, TestCa};
use tranche::prober::NetworkProber;

use crate::helpers::{Auth, TestApp, eventually, spawn_app};

const DEMO: Auth = Auth::Header(1);

struct Scenario {
    app: TestApp,
    primary: FakeEdge,
    backup: FakeEdge,
    service: i64,
    domain: i64,
}

async fn scenario(cooldown_seconds: i32) -> Scenario {
    scenario_with(cooldown_seconds, |_| {}).await
}

async fn scenario_with(
    cooldown_seconds: i32,
    configure: impl FnOnce(&mut tranche::config::Settings),
) -> Scenario {
    let ca = TestCa::new(&["*.example.test"]).unwrap();
    let primary = FakeEdge::https(&ca).await.unwrap();
    let backup = FakeEdge::https(&ca).await.unwrap();
    let mut app = crate::helpers::spawn_app_with(configure).await;
    let service = app.create_service(&DEMO, "web").await;
    app.post(
        &format!("/v1/services/{service}/storm-policies"),
        &DEMO,
        json!({ "threshold_avail": 0.9, "window_seconds": 3, "min_samples": 2, "probe_interval_seconds": 1, "cooldown_seconds": cooldown_seconds }),
    )
    .await
    .expect(201);
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &DEMO,
            json!({
                "name": "app.example.test",
                "primary_target": primary.addr().to_string(),
                "backup_target": backup.addr().to_string(),
                "probe_timeout_ms": 500,
            }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    let prober = NetworkProber::new(std::slice::from_ref(&ca.ca), true).unwrap();
    app.start_engine(Arc::new(prober)).await;
    Scenario {
        app,
        primary,
        backup,
        service,
        domain,
    }
}

impl Scenario {
    async fn state(&self) -> Value {
        let body = self
            .app
            .get(&format!("/v1/services/{}/state", self.service), &DEMO)
            .await
            .expect(200)
            .body;
        body["domains"][0].clone()
    }

    async fn storms(&self) -> Vec<Value> {
        let body = self
            .app
            .get(&format!("/v1/storms?service_id={}", self.service), &DEMO)
            .await
            .expect(200)
            .body;
        body.as_array().unwrap().clone()
    }
}

#[tokio::test]
async fn storm_opens_on_primary_failure_only_and_recovers_with_a_ramp() {
    let s = scenario(2).await;

    // Probing through both CDNs, over TLS, with the customer hostname as SNI.
    let state = eventually("both CDNs probed OK", Duration::from_secs(15), || async {
        let st = s.state().await;
        (st["primary"]["availability"] == json!(1.0) && st["backup"]["availability"] == json!(1.0))
            .then_some(st)
    })
    .await;
    assert_eq!(state["state"], "healthy");
    assert_eq!(
        state["desired_weights"],
        json!({ "primary": 100, "backup": 0 })
    );
    assert_eq!(state["primary"]["last_probe"]["outcome"], "ok");
    assert_eq!(state["primary"]["last_probe"]["status"], 200);
    assert!(
        state["primary"]["last_probe"]["cert_expires_at"].is_string(),
        "{state}"
    );
    assert!(
        state["owning_node"]
            .as_str()
            .is_some_and(|n| n.starts_with("test-node-")),
        "{state}"
    );

    // Only the backup breaks: its availability drops, but no storm.
    s.backup.set(Behaviour::Status(503));
    eventually("backup seen failing", Duration::from_secs(10), || async {
        let st = s.state().await;
        (st["backup"]["availability"].as_f64() == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(s.state().await["state"], "healthy");
    assert!(
        s.storms().await.is_empty(),
        "a backup outage must not open a storm"
    );
    s.backup.set(Behaviour::Healthy);
    eventually("backup healthy again", Duration::from_secs(10), || async {
        (s.state().await["backup"]["availability"] == json!(1.0)).then_some(())
    })
    .await;

    // The primary breaks: a storm opens within window + interval (+ slack for a shared machine).
    s.primary.set(Behaviour::Status(503));
    let broke = tokio::time::Instant::now();
    let storm = eventually("storm opened", Duration::from_secs(15), || async {
        s.storms()
            .await
            .into_iter()
            .find(|st| st["active"] == json!(true))
    })
    .await;
    let detected = broke.elapsed();
    assert!(
        detected < Duration::from_secs(10),
        "storm took {detected:?}"
    );
    assert_eq!(storm["domain_id"], s.domain);
    assert_eq!(storm["domain"], "app.example.test");
    assert_eq!(storm["kind"], "http_availability");
    assert!(
        storm["trigger"]["primary_availability"]
            .as_str()
            .is_some_and(|a| a.parse::<f64>().unwrap() < 0.9),
        "{storm}"
    );
    assert_eq!(storm["trigger"]["backup_availability"], "1");
    let st = s.state().await;
    assert_eq!(st["state"], "storm");
    assert_eq!(
        st["desired_weights"],
        json!({ "primary": 0, "backup": 100 })
    );
    // Observations are written in batches, a moment after the decision.
    eventually("failing probe recorded", Duration::from_secs(5), || async {
        (s.state().await["primary"]["last_probe"]["outcome"] == "http_status").then_some(())
    })
    .await;

    // Recovery: cooldown, then the ramp back, one step per interval, then the storm closes.
    s.primary.set(Behaviour::Healthy);
    let seen = std::sync::Mutex::new(Vec::<(i64, String)>::new());
    let closed = eventually("storm closed", Duration::from_secs(30), || async {
        let st = s.state().await;
        let w = (
            st["desired_weights"]["primary"].as_i64().unwrap(),
            st["state"].as_str().unwrap().to_owned(),
        );
        {
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&w) {
                seen.push(w);
            }
        }
        let storms = s.storms().await;
        storms
            .iter()
            .find(|x| x["id"] == storm["id"] && x["active"] == json!(false))
            .cloned()
    })
    .await;
    let mut seen = seen.into_inner().unwrap();
    let st = s.state().await;
    let last = (
        st["desired_weights"]["primary"].as_i64().unwrap(),
        st["state"].as_str().unwrap().to_owned(),
    );
    if seen.last() != Some(&last) {
        seen.push(last);
    }
    assert_eq!(seen.last().unwrap().1, "healthy");
    assert!(closed["ended_at"].is_string());
    // Ratios in the trigger are decimal strings, the closing one too; counts are integers.
    assert_eq!(
        closed["trigger"]["closing_primary_availability"].as_str(),
        Some("1"),
        "{closed}"
    );
    assert!(
        closed["trigger"]["primary_consecutive_failures"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "{closed}"
    );
    assert_eq!(closed["trigger"]["consecutive_failures"], 3, "{closed}");
    let weights: Vec<i64> = seen.iter().map(|(w, _)| *w).collect();
    assert_eq!(weights.first(), Some(&0), "{seen:?}");
    assert_eq!(weights.last(), Some(&100), "{seen:?}");
    assert!(
        weights.windows(2).all(|w| w[0] < w[1]),
        "weights only ramp up: {seen:?}"
    );
    assert!(
        seen.iter().any(|(_, state)| state == "recovering") || weights.contains(&50),
        "ramped through recovering: {seen:?}"
    );

    // The storm through the API: by id, by filter, and not for anyone else.
    let id = storm["id"].as_str().unwrap();
    let one = s
        .app
        .get(&format!("/v1/storms/{id}"), &DEMO)
        .await
        .expect(200)
        .body;
    assert_eq!(
        (one["id"].as_str(), one["active"].as_bool()),
        (Some(id), Some(false))
    );
    assert_eq!(
        s.app
            .get("/v1/storms?active=true", &DEMO)
            .await
            .expect(200)
            .body,
        json!([])
    );
    assert_eq!(
        s.app
            .get("/v1/storms?active=false", &DEMO)
            .await
            .expect(200)
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.app
        .get("/v1/storms?limit=0", &DEMO)
        .await
        .expect_error(400, "bad_request", Some("limit"));
    s.app
        .get("/v1/storms/not-a-uuid", &DEMO)
        .await
        .expect_error(400, "bad_request", Some("id"));
    let (_, other_key) = s.app.create_customer("other").await;
    s.app
        .get(&format!("/v1/storms/{id}"), &Auth::Key(other_key.clone()))
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(
        s.app
            .get("/v1/storms", &Auth::Key(other_key.clone()))
            .await
            .expect(200)
            .body,
        json!([])
    );
    s.app
        .get(
            &format!("/v1/services/{}/state", s.service),
            &Auth::Key(other_key),
        )
        .await
        .expect_error(404, "not_found", None);
    // The cluster view (operator): one live node holding every shard.
    let cluster = s
        .app
        .get("/v1/cluster", &Auth::Admin)
        .await
        .expect(200)
        .body;
    assert_eq!(cluster["shards"], 256);
    assert_eq!(cluster["unowned_shards"], 0);
    assert_eq!(cluster["nodes"][0]["alive"], true);
    assert_eq!(cluster["nodes"][0]["shard_count"], 256);
    s.app
        .get("/v1/cluster", &DEMO)
        .await
        .expect_error(401, "unauthorized", None);

    // The decisions are in the database, with one storm, now closed.
    let (open, total): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where ended_at is null), count(*) from storm_events where domain_id = $1",
    )
    .bind(s.domain)
    .fetch_one(&s.app.pool)
    .await
    .unwrap();
    assert_eq!((open, total), (0, 1));
    let minutes: i64 = sqlx::query_scalar(
        "select coalesce(sum(attempts), 0) from probe_minutes where domain_id = $1",
    )
    .bind(s.domain)
    .fetch_one(&s.app.pool)
    .await
    .unwrap();
    assert!(
        minutes > 10,
        "per-minute aggregates are written ({minutes})"
    );

    // Both CDNs down, the backup first: no failover, the customer is told.
    s.backup.set(Behaviour::Status(503));
    eventually("backup seen failing", Duration::from_secs(10), || async {
        let st = s.state().await;
        (st["backup"]["availability"].as_f64() == Some(0.0)).then_some(())
    })
    .await;
    s.primary.set(Behaviour::Status(503));
    eventually("backup_unhealthy", Duration::from_secs(10), || async {
        (s.state().await["state"] == "backup_unhealthy").then_some(())
    })
    .await;
    // Every event the engine produced here matches its documented schema.
    crate::helpers::assert_events_conform(
        &s.app.pool,
        &["storm.started", "storm.ended", "storm.backup_unhealthy"],
    )
    .await;
}

#[tokio::test]
async fn config_changes_reach_the_running_engine() {
    let s = scenario(60).await;
    eventually("domain probed", Duration::from_secs(15), || async {
        (s.state().await["primary"]["availability"] == json!(1.0)).then_some(())
    })
    .await;
    // Deleting the domain stops its actor.
    let engine = s.app.engine.as_ref().unwrap().engine.clone();
    assert_eq!(engine.running_domains().await, vec![s.domain]);
    s.app
        .delete(
            &format!("/v1/services/{}/domains/{}", s.service, s.domain),
            &DEMO,
        )
        .await
        .expect(204);
    eventually("actor stopped", Duration::from_secs(5), || async {
        engine.running_domains().await.is_empty().then_some(())
    })
    .await;
    // A new domain starts one.
    let id = s
        .app
        .post(
            &format!("/v1/services/{}/domains", s.service),
            &DEMO,
            json!({ "name": "www.example.test", "primary_target": s.primary.addr().to_string(), "backup_target": s.backup.addr().to_string() }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    eventually("actor started", Duration::from_secs(5), || async {
        (engine.running_domains().await == vec![id]).then_some(())
    })
    .await;
    // Changed probe settings reach the running actor: a primary target where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    s.app
        .patch(
            &format!("/v1/services/{}/domains/{id}", s.service),
            &DEMO,
            json!({ "primary_target": dead.to_string(), "probe_timeout_ms": 500 }),
        )
        .await
        .expect(200);
    eventually(
        "probes follow the new target",
        Duration::from_secs(10),
        || async {
            (s.state().await["primary"]["last_probe"]["outcome"] == "connect").then_some(())
        },
    )
    .await;
    // Deleting the service stops everything.
    s.app
        .delete(&format!("/v1/services/{}", s.service), &DEMO)
        .await
        .expect(204);
    eventually("all actors stopped", Duration::from_secs(5), || async {
        engine.running_domains().await.is_empty().then_some(())
    })
    .await;
}

/// A domain with a fast policy (1 s probes, a 6 s window of at least 3 probes, threshold 0.9,
/// the default 3 failures in a row) through two plain HTTP edges; `allow_private` decides
/// whether the prober may reach the loopback edges.
async fn fast_domains(names: &[(&str, bool)], allow_private: bool) -> (TestApp, FakeEdge, i64) {
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let mut app = spawn_app().await;
    let service = app.create_service(&DEMO, "web").await;
    app.post(
        &format!("/v1/services/{service}/storm-policies"),
        &DEMO,
        json!({ "threshold_avail": 0.9, "window_seconds": 6, "min_samples": 3,
                "probe_interval_seconds": 1, "cooldown_seconds": 2 }),
    )
    .await
    .expect(201);
    for (name, with_targets) in names {
        let body = if *with_targets {
            json!({ "name": name, "primary_target": primary.addr().to_string(),
                    "backup_target": backup.addr().to_string(), "probe_scheme": "http",
                    "probe_timeout_ms": 500 })
        } else {
            json!({ "name": name })
        };
        app.post(&format!("/v1/services/{service}/domains"), &DEMO, body)
            .await
            .expect(201);
    }
    let prober = NetworkProber::new(&[], allow_private).unwrap();
    app.start_engine(Arc::new(prober)).await;
    // Keep the backup edge alive as long as the app.
    std::mem::forget(backup);
    (app, primary, service)
}

async fn domain_state(app: &TestApp, service: i64, name: &str) -> Value {
    app.domain_states(service)
        .await
        .into_iter()
        .find(|d| d["name"] == name)
        .unwrap()
}

/// Fails the next `n` probes of `edge` exactly, then answers 200 again.
async fn fail_next_probes(edge: &FakeEdge, n: u64) {
    let start = edge.requests();
    edge.fail_next(n);
    eventually("the failing probes", Duration::from_secs(10), || async {
        (edge.requests() >= start + n).then_some(())
    })
    .await;
}

async fn storm_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from storm_events")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn blips_shorter_than_the_failure_threshold_never_fail_over() {
    let (app, primary, service) = fast_domains(&[("app.example.test", true)], true).await;
    eventually(
        "window full and healthy",
        Duration::from_secs(15),
        || async {
            let st = domain_state(&app, service, "app.example.test").await;
            (st["primary"]["availability"] == json!(1.0)).then_some(())
        },
    )
    .await;
    // One failed probe takes the window to 5/6 (below 0.9), then two in a row: neither is the
    // 3 failures in a row the policy asks for.
    for blip in [1, 2] {
        fail_next_probes(&primary, blip).await;
        let after = primary.requests();
        // The failure is in the window, and later probes succeeded.
        eventually(
            "the blip seen and passed",
            Duration::from_secs(10),
            || async {
                let st = domain_state(&app, service, "app.example.test").await;
                let below = st["primary"]["availability"]
                    .as_f64()
                    .is_some_and(|a| a < 0.9);
                (primary.requests() > after && below).then_some(())
            },
        )
        .await;
        assert_eq!(
            storm_count(&app).await,
            0,
            "a {blip}-probe blip opened a storm"
        );
        assert_eq!(
            domain_state(&app, service, "app.example.test").await["state"],
            "healthy"
        );
        // Let the window forget the blip.
        eventually("window healthy again", Duration::from_secs(15), || async {
            let st = domain_state(&app, service, "app.example.test").await;
            (st["primary"]["availability"] == json!(1.0)).then_some(())
        })
        .await;
    }
    // Three in a row is an outage.
    primary.set(Behaviour::Status(503));
    eventually("storm opened", Duration::from_secs(10), || async {
        (storm_count(&app).await == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_domain_that_cannot_be_probed_is_unknown_with_the_reason() {
    // The prober refuses private addresses, and the edges are on loopback.
    let (app, _primary, service) = fast_domains(
        &[("blocked.example.test", true), ("bare.example.test", false)],
        false,
    )
    .await;
    let (blocked, bare) = eventually("both unknown", Duration::from_secs(20), || async {
        let blocked = domain_state(&app, service, "blocked.example.test").await;
        let bare = domain_state(&app, service, "bare.example.test").await;
        (blocked["state"] == "unknown" && bare["state"] == "unknown").then_some((blocked, bare))
    })
    .await;
    assert!(
        blocked["reason"]
            .as_str()
            .is_some_and(|r| r.contains("blocked") && r.contains("not a public address")),
        "{blocked}"
    );
    assert_eq!(blocked["primary"]["last_probe"]["outcome"], "blocked");
    assert_eq!(bare["reason"], "no primary target is configured", "{bare}");
    assert_eq!(
        blocked["desired_weights"],
        json!({ "primary": 100, "backup": 0 })
    );
    assert_eq!(storm_count(&app).await, 0);
    crate::helpers::assert_events_conform(&app.pool, &["domain.health_unknown"]).await;
    let told: i64 =
        sqlx::query_scalar("select count(*) from events where type = 'domain.health_unknown'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(told, 2, "one event per domain");
}

/// `/metrics` (admin token): probes by CDN, scheme and outcome, storms, HTTP requests by
/// operation, domains by state — in Prometheus' text format.
#[tokio::test]
async fn metrics_show_probes_storms_and_requests() {
    let s = scenario(60).await;
    s.primary.set(Behaviour::Status(503));
    eventually("storm", Duration::from_secs(20), || async {
        (s.state().await["state"] == "storm").then_some(())
    })
    .await;
    let url = format!("http://{}/metrics", s.app.addr);
    let anonymous = s.app.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let resp = s
        .app
        .client
        .get(&url)
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for expected in [
        r#"tranche_probes_total{cdn="primary",scheme="https",outcome="http_status"}"#,
        r#"tranche_probes_total{cdn="backup",scheme="https",outcome="ok"}"#,
        "tranche_probe_duration_seconds_bucket{",
        "tranche_storms_opened_total ",
        r#"tranche_http_requests_total{method="GET",route="get_service_state",status="200"}"#,
        r#"tranche_http_requests_total{method="GET",route="metrics",status="401"}"#,
        r#"tranche_domains{state="storm"}"#,
        "tranche_outbox_pending ",
        r#"tranche_db_connections{state="idle"}"#,
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    // Counters count: the storm this test opened is in the total, and its detection latency
    // (from the first failed probe in the window) was observed.
    assert!(
        sample(&text, "tranche_storms_opened_total") >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "tranche_storm_detection_seconds_count") >= 1.0,
        "{text}"
    );
    // The edges' test certificates are valid for a while; the earliest expiry is in the future.
    let earliest = sample(
        &text,
        r#"tranche_cert_earliest_expiry_timestamp_seconds{cdn="primary"}"#,
    );
    assert!(earliest > chrono::Utc::now().timestamp() as f64, "{text}");
    // No per-domain series unless asked for.
    assert!(
        !text.contains("tranche_domain_availability_ratio{"),
        "{text}"
    );
}

/// The value of the sample named `series` (with its labels) in a text exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
        .parse()
        .unwrap()
}

/// `metrics_listen` serves `/metrics` without a token (and nothing else); with
/// `metrics_per_domain`, each domain has its availability and certificate expiry per CDN.
#[tokio::test]
async fn a_separate_metrics_listener_needs_no_token_and_per_domain_series_are_opt_in() {
    let s = scenario_with(60, |settings| {
        settings.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        settings.metrics_per_domain = true;
    })
    .await;
    let addr = s.app.metrics_addr.expect("metrics_listen is bound");
    assert_ne!(addr, s.app.addr);
    let url = format!("http://{addr}/metrics");
    let text = eventually("per-domain series", Duration::from_secs(20), || async {
        let resp = s.app.client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        text.contains(
            r#"tranche_domain_availability_ratio{domain="app.example.test",cdn="primary"}"#,
        )
        .then_some(text)
    })
    .await;
    assert!(
        text.contains(r#"tranche_domain_cert_expiry_timestamp_seconds{domain="app.example.test",cdn="backup"}"#),
        "{text}"
    );
    // Only /metrics is served there: the API is not reachable without its own listener.
    let api = s
        .app
        .client
        .get(format!("http://{addr}/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
}
