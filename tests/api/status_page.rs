//! The live status page: read-only links (create, list, revoke), the sign-in with an API key,
//! and — in a real headless Chromium — a page that shows a storm appear when a fake edge
//! breaks, without a reload.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tranche::demo::edge::{Behaviour, FakeEdge};
use tranche::prober::NetworkProber;

use crate::browser::Browser;
use crate::helpers::{Auth, spawn_app};

const DEMO: Auth = Auth::Header(1);

#[tokio::test]
async fn the_status_page_shows_a_storm_appear_live_in_a_browser() {
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let mut app = spawn_app().await;
    let service = app.create_service(&DEMO, "checkout").await;
    app.post(
        &format!("/v1/services/{service}/storm-policies"),
        &DEMO,
        json!({ "window_seconds": 3, "min_samples": 2, "probe_interval_seconds": 1, "cooldown_seconds": 60 }),
    )
    .await
    .expect(201);
    for (name, p, b) in [
        ("shop.example.test", &primary, &backup),
        ("api.example.test", &backup, &backup),
    ] {
        app.post(
            &format!("/v1/services/{service}/domains"),
            &DEMO,
            json!({ "name": name, "primary_target": p.addr().to_string(),
                    "backup_target": b.addr().to_string(), "probe_scheme": "http", "probe_timeout_ms": 500 }),
        )
        .await
        .expect(201);
    }
    app.start_engine(Arc::new(NetworkProber::new(&[], true).unwrap()))
        .await;

    let link = app
        .post(
            "/v1/status-links",
            &DEMO,
            json!({ "label": "ops screen", "service_id": service }),
        )
        .await
        .expect(201)
        .body;
    let path = link["path"].as_str().unwrap().to_owned();
    assert!(path.starts_with("/status/"), "{link}");
    let url = format!("http://{}{path}", app.addr);

    // Served as a page, with the URL kept out of referrers and only this origin's script.
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert!(resp.text().await.unwrap().contains("shop.example.test"));

    let mut browser = Browser::open(&url).await;
    // The state of a domain's row, by name.
    let state_of = |name: &str| {
        format!(
            "((Array.from(document.querySelectorAll('tr.domain'))\
               .find(r => r.cells[0].textContent === '{name}') || {{dataset: {{}}}}).dataset.state || null)"
        )
    };
    let cell = |row: usize, col: usize| {
        format!("document.querySelectorAll('tr.domain')[{row}].cells[{col}].textContent")
    };
    browser
        .wait_for(
            "the page live, the domain healthy",
            Duration::from_secs(30),
            &format!(
                "document.getElementById('conn').textContent === 'live' && {} === 'healthy'",
                state_of("shop.example.test")
            ),
        )
        .await;
    // Mark this document: a reload would lose the mark.
    browser.eval("window.trancheMark = 42").await;

    primary.set(Behaviour::Status(503));
    let row = browser
        .wait_for(
            "the storm shown without a reload",
            Duration::from_secs(30),
            &format!(
                "{} === 'storm' && document.querySelectorAll('tr.storm').length === 1 \
                   && document.querySelector('tr.storm').textContent",
                state_of("shop.example.test")
            ),
        )
        .await;
    let row = row.as_str().unwrap();
    assert!(
        row.contains("shop.example.test") && row.contains("failures in a row"),
        "{row}"
    );
    assert_eq!(
        browser.eval("window.trancheMark").await,
        42,
        "the page was not reloaded"
    );
    assert_eq!(browser.eval(&state_of("api.example.test")).await, "healthy");
    let shop = browser
        .eval("Array.from(document.querySelectorAll('tr.domain')).findIndex(r => r.cells[0].textContent === 'shop.example.test')")
        .await
        .as_u64()
        .unwrap() as usize;
    let weights = browser.eval(&cell(shop, 4)).await;
    assert!(weights.as_str().unwrap().starts_with("0/100"), "{weights}");
    let probe = browser.eval(&cell(shop, 2)).await;
    assert!(
        probe.as_str().unwrap().contains("503"),
        "says 503, not http_status: {probe}"
    );

    if let Some(file) = std::env::var_os("TRANCHE_SCREENSHOT") {
        std::fs::write(file, browser.screenshot().await).unwrap();
    }

    // Revoked: the page says so at its next update, and the link answers 404.
    app.delete(
        &format!("/v1/status-links/{}", link["id"].as_str().unwrap()),
        &DEMO,
    )
    .await
    .expect(200);
    browser
        .wait_for(
            "the page saying the link is gone",
            Duration::from_secs(15),
            "document.getElementById('conn').textContent.includes('revoked')",
        )
        .await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn status_links_are_admin_only_and_signing_in_with_a_key_opens_an_account_page() {
    let app = spawn_app().await;
    let (_, key) = app.create_customer("acme").await;
    let admin = Auth::Key(key.clone());
    let (_, reader) = app
        .create_key(&admin, json!({ "name": "ro", "scopes": ["read"] }))
        .await;
    let service = app.create_service(&admin, "web").await;

    app.post("/v1/status-links", &reader, json!({ "label": "x" }))
        .await
        .expect_error(403, "forbidden", None);
    app.post("/v1/status-links", &admin, json!({ "label": "" }))
        .await
        .expect_error(422, "validation_failed", Some("label"));
    app.post(
        "/v1/status-links",
        &admin,
        json!({ "label": "x", "expires_in_seconds": 5 }),
    )
    .await
    .expect_error(422, "validation_failed", Some("expires_in_seconds"));
    app.post(
        "/v1/status-links",
        &admin,
        json!({ "label": "x", "service_id": 999999 }),
    )
    .await
    .expect_error(404, "not_found", None);
    let link = app
        .post(
            "/v1/status-links",
            &admin,
            json!({ "label": "board", "service_id": service }),
        )
        .await
        .expect(201)
        .body;
    let listed = app.get("/v1/status-links", &admin).await.expect(200).body;
    assert_eq!(listed[0]["id"], link["id"]);
    assert!(
        listed[0].get("path").is_none(),
        "the token is shown once: {listed}"
    );

    // Unknown tokens are a page saying so.
    let unknown = app
        .client
        .get(format!("http://{}/status/{}", app.addr, "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(
        unknown
            .text()
            .await
            .unwrap()
            .contains("unknown, revoked or expired")
    );

    // Signing in with a key: a bad key is refused on the form; a good one leads to the page.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = format!("http://{}/status", app.addr);
    assert_eq!(client.get(&form).send().await.unwrap().status(), 200);
    let bad = client
        .post(&form)
        .form(&[("key", "tr_nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert!(bad.text().await.unwrap().contains("not valid"));
    let Auth::Key(reader_key) = reader else {
        unreachable!()
    };
    let good = client
        .post(&form)
        .form(&[("key", reader_key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 303);
    let to = good.headers()["location"].to_str().unwrap().to_owned();
    let page = client
        .get(format!("http://{}{to}", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Read-only account link"), "{html}");
    assert!(html.contains(">web "), "{html}");
    // Sign-in sessions are not listed as shared links.
    let listed = app.get("/v1/status-links", &admin).await.expect(200).body;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}
