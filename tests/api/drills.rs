//! Failover drills and maintenance windows on the real engine, with local HTTP edges: a drill
//! moves traffic to the backup and ramps it back without a storm (so nothing is billed as storm
//! time); a maintenance window keeps a real outage from opening a storm or alerting.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tranche::demo::edge::{Behaviour, FakeEdge};
use tranche::prober::NetworkProber;

use crate::helpers::{Auth, TestApp, eventually, spawn_app};

const DEMO: Auth = Auth::Header(1);

struct Setup {
    app: TestApp,
    primary: FakeEdge,
    _backup: FakeEdge,
    service: i64,
    domain: i64,
}

async fn setup() -> Setup {
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let mut app = spawn_app().await;
    let service = app.create_service(&DEMO, "web").await;
    app.post(
        &format!("/v1/services/{service}/storm-policies"),
        &DEMO,
        json!({ "window_seconds": 3, "min_samples": 2, "probe_interval_seconds": 1, "cooldown_seconds": 2 }),
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
                "probe_scheme": "http",
                "probe_timeout_ms": 500,
            }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    app.start_engine(Arc::new(NetworkProber::new(&[], true).unwrap()))
        .await;
    let s = Setup {
        app,
        primary,
        _backup: backup,
        service,
        domain,
    };
    eventually("both CDNs probed OK", Duration::from_secs(15), || async {
        let st = s.state().await;
        (st["primary"]["availability"] == json!(1.0) && st["backup"]["availability"] == json!(1.0))
            .then_some(())
    })
    .await;
    s
}

impl Setup {
    async fn state(&self) -> Value {
        self.app
            .get(&format!("/v1/services/{}/state", self.service), &DEMO)
            .await
            .expect(200)
            .body["domains"][0]
            .clone()
    }

    fn drills(&self) -> String {
        format!(
            "/v1/services/{}/domains/{}/drills",
            self.service, self.domain
        )
    }

    async fn storms(&self) -> i64 {
        sqlx::query_scalar("select count(*) from storm_events")
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    /// Waits for the domain to be back on its primary, healthy.
    async fn back_to_normal(&self, what: &str, within: Duration) -> Value {
        eventually(what, within, || async {
            let st = self.state().await;
            (st["state"] == "healthy"
                && st["desired_weights"] == json!({"primary": 100, "backup": 0}))
            .then_some(st)
        })
        .await
    }
}

#[tokio::test]
async fn a_drill_fails_over_then_ramps_back_without_a_storm_and_can_be_cancelled() {
    let s = setup().await;
    let app = &s.app;

    // Bad requests name their field.
    app.post(
        &s.drills(),
        &DEMO,
        json!({ "duration_seconds": 5, "reason": "x" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("duration_seconds"));
    app.post(
        &s.drills(),
        &DEMO,
        json!({ "duration_seconds": 60, "reason": " " }),
    )
    .await
    .expect_error(422, "validation_failed", Some("reason"));
    app.post(
        &format!("/v1/services/{}/domains/999999/drills", s.service),
        &DEMO,
        json!({ "duration_seconds": 60, "reason": "x" }),
    )
    .await
    .expect_error(404, "not_found", None);

    let drill = app
        .post(
            &s.drills(),
            &DEMO,
            json!({ "duration_seconds": 10, "reason": "quarterly drill" }),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(drill["status"], "pending", "{drill}");
    assert_eq!(drill["requested_by"], "dev");
    // One at a time.
    app.post(
        &s.drills(),
        &DEMO,
        json!({ "duration_seconds": 60, "reason": "again" }),
    )
    .await
    .expect_error(409, "conflict", None);

    // Traffic moves to the backup, visibly, without a storm.
    let st = eventually("drill under way", Duration::from_secs(15), || async {
        let st = s.state().await;
        (st["state"] == "drill" && st["drill"]["began_at"].is_string()).then_some(st)
    })
    .await;
    assert_eq!(
        st["desired_weights"],
        json!({"primary": 0, "backup": 100}),
        "{st}"
    );
    assert_eq!(st["drill"]["drill_id"], drill["id"]);
    assert_eq!(st["drill"]["reason"], "quarterly drill");
    let listed = app.get(&s.drills(), &DEMO).await.expect(200).body;
    assert_eq!(listed[0]["status"], "active", "{listed}");

    // At its end it ramps back through the normal steps.
    s.back_to_normal("ramped back after the drill", Duration::from_secs(40))
        .await;
    let listed = app.get(&s.drills(), &DEMO).await.expect(200).body;
    assert_eq!(listed[0]["status"], "finished", "{listed}");
    assert_eq!(listed[0]["outcome"], "completed", "{listed}");
    assert_eq!(
        s.storms().await,
        0,
        "a drill opens no storm, so it is never billed as one"
    );

    // Cancelled mid-drill: the ramp back starts at once.
    let long = app
        .post(
            &s.drills(),
            &DEMO,
            json!({ "duration_seconds": 3600, "reason": "long drill" }),
        )
        .await
        .expect(201)
        .body;
    eventually(
        "second drill under way",
        Duration::from_secs(15),
        || async { (s.state().await["state"] == "drill").then_some(()) },
    )
    .await;
    let cancelled = app
        .delete(
            &format!("{}/{}", s.drills(), long["id"].as_str().unwrap()),
            &DEMO,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(cancelled["cancelled_by"], "dev", "{cancelled}");
    s.back_to_normal(
        "ramped back after the cancellation",
        Duration::from_secs(30),
    )
    .await;
    let listed = app.get(&s.drills(), &DEMO).await.expect(200).body;
    assert_eq!(listed[0]["outcome"], "cancelled", "{listed}");
    app.delete(
        &format!("{}/{}", s.drills(), long["id"].as_str().unwrap()),
        &DEMO,
    )
    .await
    .expect_error(409, "conflict", None);
    assert_eq!(s.storms().await, 0);

    crate::helpers::assert_events_conform(&app.pool, &["drill.started", "drill.ended"]).await;
    let events: Vec<(String, Value)> =
        sqlx::query_as("select type, payload from events order by occurred_at, id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let drills: Vec<&str> = events
        .iter()
        .filter(|(t, _)| t.starts_with("drill."))
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        drills,
        [
            "drill.started",
            "drill.ended",
            "drill.started",
            "drill.ended"
        ]
    );
    let ended: Vec<&Value> = events
        .iter()
        .filter(|(t, _)| t == "drill.ended")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(ended[0]["outcome"], "completed", "{:?}", ended);
    assert_eq!(ended[1]["outcome"], "cancelled", "{:?}", ended);
    assert!(
        events.iter().all(|(t, _)| !t.starts_with("storm.")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_maintenance_window_keeps_an_outage_from_opening_a_storm_until_it_is_cancelled() {
    let s = setup().await;
    let app = &s.app;
    let windows = format!("/v1/services/{}/maintenance-windows", s.service);
    let in_an_hour = chrono::Utc::now() + chrono::TimeDelta::hours(1);

    // Bad requests name their field.
    app.post(
        &windows,
        &DEMO,
        json!({ "ends_at": "2001-01-01T00:00:00Z", "reason": "x" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("ends_at"));
    app.post(
        &windows,
        &DEMO,
        json!({ "ends_at": chrono::Utc::now() + chrono::TimeDelta::days(8), "reason": "x" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("ends_at"));
    app.post(
        &windows,
        &DEMO,
        json!({ "ends_at": in_an_hour, "reason": "x", "domain_id": 999999 }),
    )
    .await
    .expect_error(422, "validation_failed", Some("domain_id"));

    let window = app
        .post(
            &windows,
            &DEMO,
            json!({ "ends_at": in_an_hour, "reason": "CDN vendor upgrade", "domain_id": s.domain }),
        )
        .await
        .expect(201)
        .body;
    assert_eq!(window["status"], "active", "{window}");
    eventually("maintenance shown", Duration::from_secs(5), || async {
        (s.state().await["maintenance"]["window_id"] == window["id"]).then_some(())
    })
    .await;

    // The primary fails: probes show it, but no storm opens and nothing is announced.
    s.primary.set(Behaviour::Status(503));
    let failing_since = eventually("primary seen failing", Duration::from_secs(15), || async {
        let st = s.state().await;
        (st["primary"]["availability"] == json!(0.0)).then(|| st["observed_at"].clone())
    })
    .await;
    // Several more windows of a fully failing primary (well past the flap damping).
    eventually(
        "more probes of the failing primary",
        Duration::from_secs(20),
        || async {
            let st = s.state().await;
            let seen = st["observed_at"]
                .as_str()?
                .parse::<chrono::DateTime<chrono::Utc>>()
                .ok()?;
            let since = failing_since
                .as_str()?
                .parse::<chrono::DateTime<chrono::Utc>>()
                .ok()?;
            (seen - since >= chrono::TimeDelta::seconds(6)).then_some(())
        },
    )
    .await;
    let st = s.state().await;
    assert_eq!(st["state"], "healthy", "{st}");
    assert_eq!(st["desired_weights"], json!({"primary": 100, "backup": 0}));
    assert_eq!(s.storms().await, 0);
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "nothing is alerted on during maintenance");

    // Cancelled: the outage is acted on.
    let cancelled = app
        .delete(
            &format!("{windows}/{}", window["id"].as_str().unwrap()),
            &DEMO,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    eventually(
        "storm after the window",
        Duration::from_secs(15),
        || async { (s.state().await["state"] == "storm").then_some(()) },
    )
    .await;
    let listed = app.get(&windows, &DEMO).await.expect(200).body;
    assert_eq!(listed[0]["cancelled_by"], "dev", "{listed}");
    app.delete(
        &format!("{windows}/{}", window["id"].as_str().unwrap()),
        &DEMO,
    )
    .await
    .expect_error(409, "conflict", None);
}
