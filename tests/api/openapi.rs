//! The committed OpenAPI document (`openapi/openapi.json`) must be exactly what the code
//! generates. Regenerate with `cargo run -q -- openapi > openapi/openapi.json`.

use std::path::PathBuf;

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let generated = tranche::api::spec_json();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date with the code.\n\
         Regenerate it with: cargo run -q -- openapi > openapi/openapi.json"
    );
}

#[test]
fn every_operation_documents_its_errors_and_security() {
    let spec: serde_json::Value = serde_json::from_str(&tranche::api::spec_json()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let public = path == "/healthz" || path == "/readyz";
            if public {
                continue;
            }
            for status in ["400", "401", "404", "422", "500"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} does not document {status}"
                );
            }
            assert!(
                op["security"].as_array().is_some_and(|s| !s.is_empty()),
                "{method} {path} has no security"
            );
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
        }
    }
}

/// A property that may be absent is, in our responses, present as `null` — unless it is
/// skipped when empty (the error body's `field`, a webhook's `secret` outside creation): such
/// properties must say `nullable`, so clients and contract checkers accept the nulls they get.
#[test]
fn optional_properties_are_nullable() {
    let spec: serde_json::Value = serde_json::from_str(&tranche::api::spec_json()).unwrap();
    let skipped_when_absent = [
        ("ErrorBody", "field"),
        ("ErrorBody", "quota"),
        ("WebhookEndpoint", "secret"),
    ];
    let mut missing = Vec::new();
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        let Some(properties) = schema["properties"].as_object() else {
            continue;
        };
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for (property, def) in properties {
            if required.contains(&property.as_str())
                || skipped_when_absent.contains(&(name.as_str(), property.as_str()))
            {
                continue;
            }
            if def["nullable"] != true {
                missing.push(format!("{name}.{property}"));
            }
        }
    }
    assert!(missing.is_empty(), "optional but not nullable: {missing:?}");
}

/// Page sizes are bounded in the document, as they are in the code.
#[test]
fn limits_are_declared() {
    let spec: serde_json::Value = serde_json::from_str(&tranche::api::spec_json()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["name"] == "limit" {
                    assert_eq!(
                        p["schema"]["minimum"].as_f64(),
                        Some(1.0),
                        "{method} {path}"
                    );
                    assert_eq!(
                        p["schema"]["maximum"].as_f64(),
                        Some(1000.0),
                        "{method} {path}"
                    );
                }
            }
        }
    }
}

/// The document a server serves tells the truth about that server: dev-mode credentials only in
/// dev mode; request objects closed to unknown properties; 415 where a body can be refused;
/// PATCH bodies that must change something.
#[tokio::test]
async fn the_served_document_matches_the_server() {
    use crate::helpers::{Auth, spawn_app, spawn_app_with};
    let prod = spawn_app_with(|s| s.dev = false).await;
    let served = prod
        .get("/openapi.json", &Auth::None)
        .await
        .expect(200)
        .body;
    assert_eq!(
        served,
        serde_json::from_str::<serde_json::Value>(&tranche::api::spec_json()).unwrap(),
        "a production server serves the committed document"
    );
    let schemes = served["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("ApiKey") && !schemes.contains_key("DevCustomerHeader"));
    let dev = spawn_app().await;
    let dev_doc = dev.get("/openapi.json", &Auth::None).await.expect(200).body;
    assert!(dev_doc["components"]["securitySchemes"]["DevCustomerHeader"].is_object());
    let docs = dev.get("/docs", &Auth::None).await.expect(200);
    assert!(
        docs.text.contains("DevCustomerHeader"),
        "Swagger UI shows the served document"
    );

    let schemas = &served["components"]["schemas"];
    assert_eq!(schemas["CreateService"]["additionalProperties"], false);
    assert_eq!(schemas["UpdateService"]["minProperties"], 1);
    let create = &served["paths"]["/v1/services"]["post"];
    assert!(create["responses"]["415"].is_object());
    let list = &served["paths"]["/v1/services"]["get"];
    assert!(list["responses"].get("415").is_none(), "no body, no 415");
}
