//! SLO tracking's first resources against the real application: business calendars with
//! holidays (and the business dates they give), and applications.

use serde_json::json;

use crate::helpers::{Auth, spawn_app};

const DEV: Auth = Auth::Header(1);

#[tokio::test]
async fn a_calendar_gives_its_business_dates_and_is_validated_field_by_field() {
    let app = spawn_app().await;
    let created = app
        .post(
            "/v1/calendars",
            &DEV,
            json!({ "name": "fr-bank", "kind": "standard", "time_zone": "Europe/Paris",
                    "holidays": [{ "date": "2026-12-25", "name": "Noël" }] }),
        )
        .await
        .expect(201)
        .body;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["holidays"][0]["date"], "2026-12-25");
    assert_eq!(created["holidays"][0]["name"], "Noël");

    // 24 Dec is a Thursday, 25 a holiday, 26–27 a weekend, 28 a Monday.
    let dates = app
        .get(
            &format!("/v1/calendars/{id}/business-dates?from=2026-12-24&to=2026-12-28"),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(dates["dates"], json!(["2026-12-24", "2026-12-28"]));

    // Every day, holidays and all, once replaced.
    let replaced = app
        .request(
            reqwest::Method::PUT,
            &format!("/v1/calendars/{id}"),
            &DEV,
            Some(
                &json!({ "name": "fr-bank", "kind": "every_day", "time_zone": "Europe/Paris" })
                    .to_string(),
            ),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(replaced["holidays"], json!([]));
    let dates = app
        .get(
            &format!("/v1/calendars/{id}/business-dates?from=2026-12-24&to=2026-12-28"),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    assert_eq!(dates["dates"].as_array().unwrap().len(), 5);

    for (body, field) in [
        (
            json!({ "name": "x", "kind": "weekly", "time_zone": "UTC" }),
            "kind",
        ),
        (
            json!({ "name": "x", "kind": "standard", "time_zone": "Mars/Olympus" }),
            "time_zone",
        ),
        (
            json!({ "name": "a b", "kind": "standard", "time_zone": "UTC" }),
            "name",
        ),
        (
            json!({ "name": "x", "kind": "standard", "time_zone": "UTC",
                    "holidays": [{ "date": "2026-01-01" }, { "date": "2026-01-01" }] }),
            "holidays[1].date",
        ),
    ] {
        app.post("/v1/calendars", &DEV, body).await.expect_error(
            422,
            "validation_failed",
            Some(field),
        );
    }
    app.post(
        "/v1/calendars",
        &DEV,
        json!({ "name": "fr-bank", "kind": "standard", "time_zone": "UTC" }),
    )
    .await
    .expect_error(409, "conflict", Some("name"));
    app.get(
        &format!("/v1/calendars/{id}/business-dates?from=2026-01-01&to=2027-06-01"),
        &DEV,
    )
    .await
    .expect_error(422, "validation_failed", Some("to"));
    app.get(
        &format!("/v1/calendars/{id}/business-dates?from=1850-01-01&to=1850-01-02"),
        &DEV,
    )
    .await
    .expect_error(400, "bad_request", Some("from"));

    // Another customer sees nothing.
    let (_, key) = app.create_customer("other").await;
    let other = Auth::Key(key);
    app.get(&format!("/v1/calendars/{id}"), &other)
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(
        app.get("/v1/calendars", &other).await.expect(200).body,
        json!([])
    );

    app.delete(&format!("/v1/calendars/{id}"), &DEV)
        .await
        .expect(204);
    app.get(&format!("/v1/calendars/{id}"), &DEV)
        .await
        .expect_error(404, "not_found", None);
}

#[tokio::test]
async fn applications_are_named_once_per_customer() {
    let app = spawn_app().await;
    let created = app
        .post(
            "/v1/applications",
            &DEV,
            json!({ "name": "overdraft-batch", "description": "Nightly overdraft chain" }),
        )
        .await
        .expect(201)
        .body;
    let id = created["id"].as_i64().unwrap();
    app.post(
        "/v1/applications",
        &DEV,
        json!({ "name": "overdraft-batch" }),
    )
    .await
    .expect_error(409, "conflict", Some("name"));
    app.post("/v1/applications", &DEV, json!({ "name": "" }))
        .await
        .expect_error(422, "validation_failed", Some("name"));
    let list = app.get("/v1/applications", &DEV).await.expect(200).body;
    assert_eq!(list[0]["name"], "overdraft-batch");
    assert_eq!(
        app.get(&format!("/v1/applications/{id}"), &DEV)
            .await
            .expect(200)
            .body["description"],
        "Nightly overdraft chain"
    );
    app.delete(&format!("/v1/applications/{id}"), &DEV)
        .await
        .expect(204);
    app.delete(&format!("/v1/applications/{id}"), &DEV)
        .await
        .expect_error(404, "not_found", None);
}

/// The Foxfire chain as a worked example: the overdraft calculation by 03:00 the next day and
/// the DSS load by 05:00, on Paris business days; one date on time, one failed, one missed.
#[tokio::test]
async fn an_slo_reports_its_performance_per_business_date_from_the_job_reports() {
    let app = spawn_app().await;
    let calendar = app
        .create(
            "/v1/calendars",
            &DEV,
            json!({ "name": "paris", "kind": "standard", "time_zone": "Europe/Paris" }),
        )
        .await;
    let application = app
        .create("/v1/applications", &DEV, json!({ "name": "foxfire" }))
        .await;
    let slo = app
        .post(
            "/v1/slos",
            &DEV,
            json!({ "name": "overnight", "application_id": application, "calendar_id": calendar,
                    "tolerance_minutes": 60,
                    "jobs": [
                        { "job": "overdraft", "expected_start": "23:00", "expected_end": "27:00",
                          "min_duration_seconds": 600 },
                        { "job": "dss-load", "expected_start": "27:00", "expected_end": "29:00" },
                    ] }),
        )
        .await
        .expect(201)
        .body;
    // Jobs are listed by name.
    assert_eq!(slo["jobs"][0]["job"], "dss-load", "{slo}");
    assert_eq!(slo["jobs"][0]["expected_end"], "29:00", "{slo}");
    let id = slo["id"].as_i64().unwrap();

    let report = |job: &str, date: &str, run: &str, status: &str, at: &str| {
        json!({ "application": "foxfire", "job": job, "status": status, "status_time": at,
                "business_date": date, "run_id": run, "host": "batch-1" })
    };
    for body in [
        // Thursday 5 Nov: on time (Paris is UTC+1: the end is due 04:00 UTC on the 6th).
        report(
            "overdraft",
            "2026-11-05",
            "r1",
            "start",
            "2026-11-05T22:10:00Z",
        ),
        report(
            "overdraft",
            "2026-11-05",
            "r1",
            "succeed",
            "2026-11-06T01:00:00Z",
        ),
        report(
            "dss-load",
            "2026-11-05",
            "r1",
            "start",
            "2026-11-06T02:00:00Z",
        ),
        report(
            "dss-load",
            "2026-11-05",
            "r1",
            "succeed",
            "2026-11-06T03:30:00Z",
        ),
        // Friday 6 Nov: the overdraft run fails after 55 minutes.
        report(
            "overdraft",
            "2026-11-06",
            "r1",
            "start",
            "2026-11-06T22:05:00Z",
        ),
        report(
            "overdraft",
            "2026-11-06",
            "r1",
            "fail",
            "2026-11-06T23:00:00Z",
        ),
        // A job the SLO does not name is stored and ignored.
        report(
            "unrelated",
            "2026-11-05",
            "x",
            "start",
            "2026-11-05T10:00:00Z",
        ),
    ] {
        app.post("/v1/job-status", &DEV, body).await.expect(201);
    }
    let perf = app
        .get(
            &format!("/v1/slos/{id}/performance?from=2026-11-04&to=2026-11-08"),
            &DEV,
        )
        .await
        .expect(200)
        .body;
    let dates = perf["dates"].as_array().unwrap();
    // Wednesday to Friday: the weekend is not a business date.
    let summary: Vec<(&str, &str)> = dates
        .iter()
        .map(|d| {
            (
                d["business_date"].as_str().unwrap(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("2026-11-04", "missed"),
            ("2026-11-05", "on_time"),
            ("2026-11-06", "failed")
        ],
        "{perf}"
    );
    assert_eq!(
        dates[0]["alerts"],
        json!(["not_started", "late", "breached"])
    );
    let at = |v: &serde_json::Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    assert_eq!(
        at(&dates[1]["expected_end"]),
        at(&json!("2026-11-06T04:00:00Z"))
    );
    assert_eq!(
        at(&dates[1]["actual_end"]),
        at(&json!("2026-11-06T03:30:00Z"))
    );
    assert_eq!(dates[1]["alerts"], json!([]));
    assert_eq!(dates[2]["alerts"], json!(["breached"]));

    // The report over those weeks: one finished date, 30 minutes early (more than the
    // 15-minute margin), ending at 04:30 Paris time the next day.
    let report = app
        .get(&format!("/v1/slos/{id}/report?days=60"), &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(report["finished"], 1, "{report}");
    assert_eq!(report["late_share_percent"], "0.00");
    assert_eq!(report["early_share_percent"], "100.00");
    assert_eq!(report["suggested_expected_end"], "28:30");
    let overdraft = &report["jobs"][1];
    assert_eq!(overdraft["job"], "overdraft", "{report}");
    assert_eq!(overdraft["samples"], 1, "the failed date has no duration");
    assert_eq!(overdraft["p50_seconds"], 10_200);
    assert_eq!(
        overdraft["slope_seconds_per_date"],
        json!(null),
        "one sample: no trend"
    );
    app.get(&format!("/v1/slos/{id}/report?days=0"), &DEV)
        .await
        .expect_error(400, "bad_request", Some("days"));
    // Across the account: routinely early (every finished date), nothing slowing yet.
    let account = app
        .get("/v1/slo-reports?days=60", &DEV)
        .await
        .expect(200)
        .body;
    assert_eq!(
        account["routinely_early"][0]["slo"], "overnight",
        "{account}"
    );
    assert_eq!(
        account["routinely_early"][0]["suggested_expected_end"],
        "28:30"
    );
    assert_eq!(account["routinely_late"], json!([]));
    assert_eq!(account["slowing"], json!([]));
    assert_eq!(account["slos"][0]["slo_id"], id);
    app.get("/v1/slo-reports?share_percent=0", &DEV)
        .await
        .expect_error(400, "bad_request", Some("share_percent"));

    // Replaced whole: a new tolerance and one job; a name taken or a foreign calendar refused.
    let replaced = app
        .request(
            reqwest::Method::PUT,
            &format!("/v1/slos/{id}"),
            &DEV,
            Some(
                &json!({ "name": "overnight", "application_id": application, "calendar_id": calendar,
                         "tolerance_minutes": 30,
                         "jobs": [{ "job": "overdraft", "expected_start": "23:00", "expected_end": "27:30" }] })
                .to_string(),
            ),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(replaced["tolerance_minutes"], 30, "{replaced}");
    assert_eq!(replaced["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(replaced["jobs"][0]["expected_end"], "27:30");
    app.request(
        reqwest::Method::PUT,
        &format!("/v1/slos/{id}"),
        &DEV,
        Some(
            &json!({ "name": "overnight", "application_id": application, "calendar_id": 999_999,
                     "jobs": [{ "job": "a", "expected_start": "01:00", "expected_end": "02:00" }] })
            .to_string(),
        ),
    )
    .await
    .expect_error(422, "validation_failed", Some("calendar_id"));
    app.request(
        reqwest::Method::PUT,
        "/v1/slos/999999",
        &DEV,
        Some(
            &json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                     "jobs": [{ "job": "a", "expected_start": "01:00", "expected_end": "02:00" }] })
            .to_string(),
        ),
    )
    .await
    .expect_error(404, "not_found", None);

    // A calendar in use cannot be deleted; the SLO can, then the calendar.
    app.delete(&format!("/v1/calendars/{calendar}"), &DEV)
        .await
        .expect_error(409, "conflict", Some("id"));
    for (body, field) in [
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "05:00", "expected_end": "04:00" }] }),
            "jobs[0].expected_end",
        ),
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "5h", "expected_end": "06:00" }] }),
            "jobs[0].expected_start",
        ),
        (
            json!({ "name": "x", "application_id": 999_999, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "05:00", "expected_end": "06:00" }] }),
            "application_id",
        ),
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [] }),
            "jobs",
        ),
        // A repeating job: both fields or neither, a sane period, at most 288 occurrences,
        // the last one ending by 168:00.
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "06:00", "expected_end": "06:10",
                               "every_minutes": 30 }] }),
            "jobs[0].until",
        ),
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "06:00", "expected_end": "06:10",
                               "until": "18:00" }] }),
            "jobs[0].every_minutes",
        ),
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "06:00", "expected_end": "06:10",
                               "every_minutes": 0, "until": "18:00" }] }),
            "jobs[0].every_minutes",
        ),
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "06:00", "expected_end": "06:10",
                               "every_minutes": 30, "until": "05:00" }] }),
            "jobs[0].until",
        ),
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "00:00", "expected_end": "00:01",
                               "every_minutes": 1, "until": "24:00" }] }),
            "jobs[0].until",
        ),
        (
            json!({ "name": "x", "application_id": application, "calendar_id": calendar,
                    "jobs": [{ "job": "a", "expected_start": "06:00", "expected_end": "160:00",
                               "every_minutes": 1440, "until": "150:00" }] }),
            "jobs[0].until",
        ),
    ] {
        app.post("/v1/slos", &DEV, body)
            .await
            .expect_error(422, "validation_failed", Some(field));
    }
    app.delete(&format!("/v1/slos/{id}"), &DEV)
        .await
        .expect(204);
    app.delete(&format!("/v1/calendars/{calendar}"), &DEV)
        .await
        .expect(204);
}
