//! OpenTelemetry export: a real `tranche serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a
//! local OTLP/HTTP receiver sends the spans of an API request (with its request id), of the
//! storm decision, and of the DNS change that applies it — linked to the decision.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use poem::web::Data;
use poem::{EndpointExt, Route, handler, post};
use prost::Message;
use serde_json::json;
use tranche::demo::edge::{Behaviour, FakeEdge};

use crate::chaos::{Node, database_url};
use crate::helpers::{eventually, fresh_database};

type Received = Arc<Mutex<Vec<Span>>>;

#[handler]
fn collect(body: Vec<u8>, spans: Data<&Received>) -> poem::Response {
    if let Ok(req) = ExportTraceServiceRequest::decode(body.as_ref()) {
        let mut all = spans.lock().unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                all.extend(ss.spans);
            }
        }
    }
    poem::Response::builder()
        .content_type("application/x-protobuf")
        .body(Vec::<u8>::new())
}

/// An OTLP/HTTP receiver on a local port; returns its URL and what it received.
async fn receiver() -> (String, Received) {
    let spans: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Route::new()
        .at("/v1/traces", post(collect))
        .data(spans.clone());
    tokio::spawn(
        poem::Server::new_with_acceptor(poem::listener::TcpAcceptor::from_tokio(listener).unwrap())
            .run(app),
    );
    (format!("http://{addr}"), spans)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[tokio::test]
async fn a_node_exports_request_decision_and_dns_change_spans_over_otlp() {
    let (otlp, spans) = receiver().await;
    let pool = fresh_database().await;
    let node = Node::spawn(
        "traced",
        &database_url(&pool),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("TRANCHE_DNS_PROVIDER", "noop"),
        ],
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = node.url();
    eventually("the node answers", Duration::from_secs(30), || async {
        client
            .get(format!("{api}/readyz"))
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let service: serde_json::Value = client
        .post(format!("{api}/v1/services"))
        .header("X-Customer-ID", "1")
        .header("X-Request-Id", "trace-me-1")
        .json(&json!({ "name": "web", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let service = service["id"].as_i64().unwrap();
    for (path, body) in [
        (
            format!("{api}/v1/services/{service}/storm-policies"),
            json!({ "window_seconds": 3, "min_samples": 2, "probe_interval_seconds": 1, "cooldown_seconds": 60 }),
        ),
        (
            format!("{api}/v1/services/{service}/domains"),
            json!({ "name": "app.example.test", "primary_target": primary.addr().to_string(),
                    "backup_target": backup.addr().to_string(), "probe_scheme": "http",
                    "probe_timeout_ms": 500 }),
        ),
    ] {
        let resp = client
            .post(path)
            .header("X-Customer-ID", "1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    eventually("probed healthy", Duration::from_secs(20), || async {
        let st: serde_json::Value = client
            .get(format!("{api}/v1/services/{service}/state"))
            .header("X-Customer-ID", "1")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (st["domains"][0]["primary"]["availability"] == json!(1.0)).then_some(())
    })
    .await;
    primary.set(Behaviour::Status(503));

    // The decision, and the DNS change linked to it, reach the collector.
    let (decision, change) = eventually(
        "the storm's spans exported",
        Duration::from_secs(30),
        || async {
            let all = spans.lock().unwrap().clone();
            let decision = all
                .iter()
                .find(|s| s.name == "storm.decision" && attr(s, "to").as_deref() == Some("storm"))?
                .clone();
            let change = all
                .iter()
                .find(|s| {
                    s.name == "dns.change"
                        && s.links.iter().any(|l| {
                            l.span_id == decision.span_id && l.trace_id == decision.trace_id
                        })
                })?
                .clone();
            Some((decision, change))
        },
    )
    .await;
    assert_eq!(
        attr(&decision, "domain.name").as_deref(),
        Some("app.example.test")
    );
    assert_eq!(attr(&decision, "weights").as_deref(), Some("0/100"));
    assert_eq!(attr(&change, "dns.zone").as_deref(), Some("example.test"));
    assert_eq!(attr(&change, "dns.provider").as_deref(), Some("noop"));
    assert!(attr(&change, "dns.change_id").is_some(), "{change:?}");

    // The API request that created the service, with the caller's request id.
    let all = spans.lock().unwrap().clone();
    assert!(
        all.iter()
            .any(|s| s.name == "request" && attr(s, "request_id").as_deref() == Some("trace-me-1")),
        "{:?}",
        all.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    drop(node);
}
