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
