//! Live SLO tracking on a real engine and PostgreSQL: each SLO's tracker wakes on job reports
//! (the `job_status` NOTIFY) and at its timers, keeps `slo_performance` current and raises
//! `slo.not_started` / `slo.late` / `slo.breached` once per SLO and business date (and per
//! occurrence of a repeating job) — across a restart of the node.
//!
//! Expected times are whole minutes, so the test aims its SLOs at the next whole minute `M` and
//! runs the engine's injected clock 12 seconds short of `M` (the API and the reports keep the
//! real clock, which is behind it): the timers fire within seconds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde_json::json;
use tranche::node::EngineOptions;

use crate::helpers::{Auth, eventually, spawn_app, test_engine_config};

const DEV: Auth = Auth::Header(1);

fn hhmm(minutes: i64) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

async fn start(
    app: &crate::helpers::TestApp,
    shift: chrono::Duration,
) -> tranche::node::RunningEngine {
    let node = format!(
        "slo-node-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut config = test_engine_config(&node);
    config.clock = Arc::new(move || Utc::now() + shift);
    let prober = Arc::new(tranche::prober::NetworkProber::new(&[], true).unwrap());
    tranche::node::start_with(
        config,
        app.pool.clone(),
        prober,
        EngineOptions {
            slos: true,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap()
}

/// (SLO name, alert kind, occurrence or '') of every alert raised, in order.
async fn alerts(pool: &sqlx::PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "select s.name, a.kind, a.occurrence from slo_alerts a join slos s on s.id = a.slo_id
          where a.event_id is not null order by s.name, a.kind, a.occurrence",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The SLO's status on the business date `D` (the test's; the tracker also keeps a row for the
/// day after, which has opened).
async fn status(pool: &sqlx::PgPool, slo: &str) -> Option<String> {
    sqlx::query_scalar(
        "select p.status from slo_performance p join slos s on s.id = p.slo_id
          where s.name = $1 and p.business_date = (select min(business_date) from slo_performance)",
    )
    .bind(slo)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn trackers_raise_each_alert_once_from_reports_and_timers_across_a_restart() {
    let app = spawn_app().await;
    let now = Utc::now();
    let m: DateTime<Utc> = (now + chrono::Duration::seconds(20))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap()
        + chrono::Duration::minutes(1);
    // The business date is M's day before, so every offset is past 24:00 (never negative).
    let date = m.date_naive() - chrono::Duration::days(1);
    let midnight = date.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let end = (m - midnight).num_minutes();
    // M is 12 s away on the engine's clock: room for the set-up below (the SLOs, the engine,
    // the reports) to finish before it, even on a loaded machine.
    let shift = (m - chrono::Duration::seconds(12)) - now;

    let calendar = app
        .create(
            "/v1/calendars",
            &DEV,
            json!({ "name": "utc-daily", "kind": "every_day", "time_zone": "UTC" }),
        )
        .await;
    let application = app
        .create("/v1/applications", &DEV, json!({ "name": "nightly" }))
        .await;
    for (name, job, start) in [
        ("ok", "extract", end - 5),
        ("stuck", "load", end - 5),
        ("failing", "transform", end - 5),
        ("silent", "publish", end),
    ] {
        app.post(
            "/v1/slos",
            &DEV,
            json!({ "name": name, "application_id": application, "calendar_id": calendar,
                    "start_grace_minutes": if name == "silent" { 0 } else { 10 },
                    "tolerance_minutes": 0,
                    "jobs": [{ "job": job, "expected_start": hhmm(start),
                               "expected_end": hhmm(end) }] }),
        )
        .await
        .expect(201);
    }
    // A job repeating every minute: `sync@<M-2>` (due M-1, already past: it never runs) and
    // `sync@<M-1>` (due M: the run reported below is assigned to it, the nearest start).
    app.post(
        "/v1/slos",
        &DEV,
        json!({ "name": "repeating", "application_id": application, "calendar_id": calendar,
                "start_grace_minutes": 10, "tolerance_minutes": 0,
                "jobs": [{ "job": "sync", "expected_start": hhmm(end - 2),
                           "expected_end": hhmm(end - 1), "every_minutes": 1,
                           "until": hhmm(end - 1) }] }),
    )
    .await
    .expect(201);
    let engine = start(&app, shift).await;
    eventually("five trackers", Duration::from_secs(20), || async {
        (engine.engine.tracked_slos().await.len() == 5).then_some(())
    })
    .await;

    let report = |job: &str, run: &str, status: &str| {
        json!({ "application": "nightly", "job": job, "status": status,
                "status_time": Utc::now().to_rfc3339(), "business_date": date.to_string(),
                "run_id": run, "host": "batch-1" })
    };
    for body in [
        report("extract", "r1", "start"),
        report("extract", "r1", "succeed"),
        report("load", "r1", "start"),
        report("transform", "r1", "start"),
        report("transform", "r1", "fail"),
        report("sync", "s1", "start"),
        report("sync", "s1", "succeed"),
    ] {
        app.post("/v1/job-status", &DEV, body).await.expect(201);
    }
    // Reports alone: on time, and a failure breaches at once.
    eventually("the reports evaluated", Duration::from_secs(20), || async {
        (status(&app.pool, "ok").await.as_deref() == Some("on_time")
            && status(&app.pool, "failing").await.as_deref() == Some("failed"))
        .then_some(())
    })
    .await;
    // Then the timers at M: the stuck and the silent SLOs are late and breached (tolerance 0),
    // the silent one never started. The repeating one: its first occurrence at once, and the
    // SLO itself at M (that occurrence never finished); its second occurrence ran in time.
    let missed_run = format!("sync@{}", hhmm(end - 2));
    let expected: Vec<(String, String, String)> = [
        ("failing", "breached", ""),
        ("repeating", "breached", ""),
        ("repeating", "breached", missed_run.as_str()),
        ("repeating", "late", ""),
        ("repeating", "late", missed_run.as_str()),
        ("silent", "breached", ""),
        ("silent", "late", ""),
        ("silent", "not_started", ""),
        ("stuck", "breached", ""),
        ("stuck", "late", ""),
    ]
    .iter()
    .map(|(s, k, o)| (s.to_string(), k.to_string(), o.to_string()))
    .collect();
    eventually("ten alerts", Duration::from_secs(45), || async {
        (alerts(&app.pool).await == expected).then_some(())
    })
    .await;
    // Counted for the operator (the registry is the process's: at least these two).
    let exposition = app
        .client
        .get(format!("http://{}/metrics", app.addr))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let late = exposition
        .lines()
        .find_map(|l| l.strip_prefix("tranche_slo_alerts_total{alert=\"late\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(late.is_some_and(|n| n >= 2.0), "{exposition}");
    assert_eq!(status(&app.pool, "stuck").await.as_deref(), Some("missed"));
    assert_eq!(status(&app.pool, "silent").await.as_deref(), Some("missed"));
    assert_eq!(status(&app.pool, "ok").await.as_deref(), Some("on_time"));
    // The live board shows the tracked rows with the alerts raised.
    let board = app
        .get(&format!("/v1/slo-board?business_date={date}"), &DEV)
        .await
        .expect(200)
        .body;
    let rows = board["slos"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{board}");
    let row = |name: &str| rows.iter().find(|r| r["slo"] == name).unwrap().clone();
    assert_eq!(row("ok")["alerts"], json!([]));
    assert_eq!(row("silent")["alerts"].as_array().unwrap().len(), 3);
    assert_eq!(row("failing")["status"], "failed");
    let occurrences: Vec<serde_json::Value> = row("repeating")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["occurrence"].clone())
        .filter(|o| !o.is_null())
        .collect();
    assert_eq!(occurrences, [json!(missed_run), json!(missed_run)]);
    let missed = app
        .get(
            &format!("/v1/slo-board?business_date={date}&status=missed"),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(missed["slos"].as_array().unwrap().len(), 3, "{missed}");
    app.get("/v1/slo-board?status=sideways", &DEV)
        .await
        .expect_error(422, "validation_failed", Some("status"));

    // Restart the node: the new trackers re-evaluate every live date and owe nothing new.
    engine.shutdown().await;
    let restarted_at = Utc::now();
    let engine = start(&app, shift).await;
    eventually(
        "re-evaluated after the restart",
        Duration::from_secs(20),
        || async {
            let n: i64 =
                sqlx::query_scalar("select count(*) from slo_performance where evaluated_at > $1")
                    .bind(restarted_at + shift)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            // Each SLO's two dates (D and the day after, opened).
            (n == 10).then_some(())
        },
    )
    .await;
    // The stuck job finally finishes, a minute after M: late, and no new alert. (Written
    // straight to the table: the API refuses status times ahead of the real clock, which runs
    // behind the engine's here; the table's trigger wakes the tracker all the same.)
    sqlx::query(
        "insert into job_status (customer_id, application, job, business_date, run_id, status,
                                 status_time, host)
         values (1, 'nightly', 'load', $1, 'r1', 'succeed', $2, 'batch-1')",
    )
    .bind(date)
    .bind(m + chrono::Duration::minutes(1))
    .execute(&app.pool)
    .await
    .unwrap();
    eventually("the late finish", Duration::from_secs(20), || async {
        (status(&app.pool, "stuck").await.as_deref() == Some("late")).then_some(())
    })
    .await;
    let events: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "select type, payload from events where type like 'slo.%'
          order by type, payload->>'slo', payload->'occurrence' nulls first",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 10, "{events:?}");
    let late: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(t, p)| t == "slo.late" && p["slo"] != "repeating")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(late.len(), 2);
    // The occurrence's own event names it, with its own expected end.
    let run_late = events
        .iter()
        .find(|(t, p)| t == "slo.late" && !p["occurrence"].is_null())
        .map(|(_, p)| &p["occurrence"])
        .unwrap();
    assert_eq!(run_late["job"], json!(missed_run));
    assert_eq!(
        run_late["expected_end"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        m - chrono::Duration::minutes(1)
    );
    assert!(run_late["actual_end"].is_null());
    assert_eq!(late[0]["application"], "nightly");
    assert_eq!(late[0]["business_date"], date.to_string());
    assert_eq!(
        late[0]["expected_end"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        m
    );
    crate::helpers::assert_events_conform(
        &app.pool,
        &["slo.breached", "slo.late", "slo.not_started"],
    )
    .await;
    engine.shutdown().await;
}
