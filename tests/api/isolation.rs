//! Tenant isolation: another customer's objects answer 404 on every route and stay unchanged.

use reqwest::Method;
use serde_json::json;
use tranche::config::Settings;

use crate::helpers::{Auth, spawn_app_with};

#[tokio::test]
async fn a_customer_cannot_see_change_or_delete_another_customers_objects() {
    let app = spawn_app_with(|s: &mut Settings| s.dev = false).await;
    let (_, owner_key) = app.create_customer("owner").await;
    let (_, intruder_key) = app.create_customer("intruder").await;
    let owner = Auth::Key(owner_key);
    let intruder = Auth::Key(intruder_key);

    let sid = app.create_service(&owner, "web").await;
    let did = app
        .post(
            &format!("/v1/services/{sid}/domains"),
            &owner,
            json!({ "name": "app.example.com" }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    let pid = app
        .post(
            &format!("/v1/services/{sid}/storm-policies"),
            &owner,
            json!({}),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    let before = app
        .get(&format!("/v1/services/{sid}"), &owner)
        .await
        .expect(200)
        .body;

    let svc = format!("/v1/services/{sid}");
    let attempts: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, svc.clone(), None),
        (Method::PATCH, svc.clone(), Some(json!({ "name": "pwned" }))),
        (Method::DELETE, svc.clone(), None),
        (Method::GET, format!("{svc}/domains"), None),
        (
            Method::POST,
            format!("{svc}/domains"),
            Some(json!({ "name": "evil.example.com" })),
        ),
        (Method::DELETE, format!("{svc}/domains/{did}"), None),
        (Method::GET, format!("{svc}/storm-policies"), None),
        (
            Method::POST,
            format!("{svc}/storm-policies"),
            Some(json!({ "kind": "http_availability" })),
        ),
        (
            Method::PATCH,
            format!("{svc}/storm-policies/{pid}"),
            Some(json!({ "threshold_avail": 0.1 })),
        ),
        (Method::DELETE, format!("{svc}/storm-policies/{pid}"), None),
    ];
    for (method, path, body) in attempts {
        let body = body.map(|b| b.to_string());
        let resp = app
            .request(method.clone(), &path, &intruder, body.as_deref())
            .await;
        assert_eq!(resp.status.as_u16(), 404, "{method} {path}: {}", resp.text);
        assert_eq!(resp.body["code"], "not_found");
    }
    let intruder_list = app.get("/v1/services", &intruder).await.expect(200).body;
    assert_eq!(intruder_list, json!([]));

    let after = app
        .get(&format!("/v1/services/{sid}"), &owner)
        .await
        .expect(200)
        .body;
    assert_eq!(before, after, "the owner's objects are untouched");
}
