use crate::helpers::{Auth, spawn_app};

#[tokio::test]
async fn healthz_readyz_docs_and_spec_are_served() {
    let app = spawn_app().await;
    let resp = app.get("/healthz", &Auth::None).await.expect(200);
    assert_eq!(resp.text, "ok");
    let resp = app.get("/readyz", &Auth::None).await.expect(200);
    assert_eq!(resp.text, "ready");
    let resp = app.get("/openapi.json", &Auth::None).await.expect(200);
    assert_eq!(resp.body["info"]["title"], "Tranche");
    assert!(resp.body["paths"]["/v1/services/{id}"].is_object());
    let resp = app.get("/docs", &Auth::None).await.expect(200);
    assert!(resp.text.contains("Swagger UI"));
}

#[tokio::test]
async fn readyz_reports_an_unreachable_database() {
    let app = spawn_app().await;
    app.pool.close().await;
    let resp = app.get("/readyz", &Auth::None).await.expect(503);
    assert_eq!(resp.text, "database unavailable");
    // API calls answer with the JSON error shape, never a hang or a crash.
    app.get("/v1/services", &Auth::Header(1))
        .await
        .expect_error(503, "unavailable", None);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    app.get("/v2/nothing", &Auth::None)
        .await
        .expect_error(404, "not_found", None);
    app.request(reqwest::Method::PUT, "/v1/services", &Auth::Header(1), None)
        .await
        .expect_error(405, "method_not_allowed", None);
}

/// Every response carries a request id — the caller's when it sent a sane one — errors too.
#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let url = |path: &str| format!("http://{}{path}", app.addr);
    let resp = app.client.get(url("/healthz")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let again = app.client.get(url("/healthz")).send().await.unwrap();
    assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), id);
    // A proxy's id is kept, on errors as well.
    let resp = app
        .client
        .get(url("/v1/services/999999"))
        .header("X-Customer-ID", "1")
        .header("X-Request-Id", "edge-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "edge-7f3a");
    // One that is not sane is replaced.
    let resp = app
        .client
        .get(url("/healthz"))
        .header("X-Request-Id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}
