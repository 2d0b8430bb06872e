//! DNS steering under provider faults, with a fault-injecting proxy in front of `moto_server`
//! that speaks Route53's wire format: throttling, 5xx and `PriorRequestNotComplete` are retried
//! until the change lands; a rejected record is isolated while the rest of its zone is applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tranche::demo::edge::FakeEdge;
use tranche::prober::NetworkProber;
use tranche::route53::{DEFAULT_TTL, Route53Provider};

use crate::helpers::{Auth, TestApp, eventually, spawn_app};
use crate::route53::moto;

/// What the proxy does with `ChangeResourceRecordSets` calls.
#[derive(Clone)]
pub enum Faults {
    /// Forward every call.
    None,
    /// Fail the first calls with these (status, Route53 error code), then forward.
    FirstCalls(Vec<(u16, &'static str)>),
    /// Reject (InvalidChangeBatch) any batch that mentions this name.
    RejectName(&'static str),
}

/// A proxy in front of `moto_server` that speaks Route53's wire format.
pub struct Route53Proxy {
    pub url: String,
    /// `ChangeResourceRecordSets` calls seen.
    pub calls: Arc<AtomicUsize>,
    /// The XML body of every `ChangeResourceRecordSets` call, in arrival order.
    pub bodies: Arc<std::sync::Mutex<Vec<String>>>,
    /// While non-zero, the answers to record-change calls are held this many milliseconds after
    /// the change reached moto (a provider slow to answer: a node killed meanwhile never learns
    /// that its change was applied).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Forwards to `upstream`, injecting `faults` into record changes.
pub async fn fault_proxy(upstream: String, faults: Faults) -> Route53Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let proxy = Route53Proxy {
        url,
        calls: calls.clone(),
        bodies: bodies.clone(),
        delay_ms: delay_ms.clone(),
    };
    let seen = calls;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (client, upstream, faults, seen, bodies, delay_ms) = (
                client.clone(),
                upstream.clone(),
                faults.clone(),
                seen.clone(),
                bodies.clone(),
                delay_ms.clone(),
            );
            tokio::spawn(async move {
                // One request per connection (we answer `connection: close`).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, length) = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        break (pos + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let body = buf[head_end..].to_vec();
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or_default().split_whitespace();
                let (method, path) = (
                    first.next().unwrap_or("GET").to_owned(),
                    first.next().unwrap_or("/").to_owned(),
                );
                let is_change =
                    method == "POST" && path.ends_with("/rrset/") || path.ends_with("/rrset");
                let injected = if is_change {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    bodies
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    match &faults {
                        Faults::None => None,
                        Faults::FirstCalls(list) => list.get(n).copied(),
                        Faults::RejectName(name) => String::from_utf8_lossy(&body)
                            .contains(name)
                            .then_some((400, "InvalidChangeBatch")),
                    }
                } else {
                    None
                };
                let (status, content_type, payload) = match injected {
                    Some((status, code)) => (
                        status,
                        "text/xml".to_owned(),
                        format!(
                            "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>injected by the test proxy</Message></Error><RequestId>test</RequestId></ErrorResponse>"
                        )
                        .into_bytes(),
                    ),
                    None => {
                        let mut req = client.request(method.parse().unwrap(), format!("{upstream}{path}")).body(body);
                        for line in lines {
                            if let Some((k, v)) = line.split_once(':')
                                && !["host", "content-length", "connection"].contains(&k.trim().to_ascii_lowercase().as_str())
                            {
                                req = req.header(k.trim(), v.trim());
                            }
                        }
                        let resp = req.send().await.unwrap();
                        let status = resp.status().as_u16();
                        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("text/xml").to_owned();
                        let delay = delay_ms.load(Ordering::SeqCst);
                        if is_change && delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        (status, ct, resp.bytes().await.unwrap().to_vec())
                    }
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    payload.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&payload).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    proxy
}

pub async fn steered_domains(app: &TestApp, edge: &FakeEdge, names: &[&str]) -> i64 {
    let demo = Auth::Header(1);
    let service = app.create_service(&demo, "web").await;
    for name in names {
        app.post(
            &format!("/v1/services/{service}/domains"),
            &demo,
            json!({ "name": name, "primary_target": edge.addr().to_string(), "backup_target": edge.addr().to_string(), "probe_scheme": "http" }),
        )
        .await
        .expect(201);
    }
    service
}

pub async fn applied(app: &TestApp, name: &str) -> Option<i16> {
    sqlx::query_scalar::<_, Option<i16>>(
        "select r.applied_primary_weight from dns_records r join service_domains d on d.id = r.domain_id where d.hostname = $1",
    )
    .bind(name)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
    .flatten()
}

#[tokio::test]
async fn throttling_server_errors_and_prior_requests_are_retried_until_applied() {
    let moto = moto().await;
    let setup = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    setup
        .client()
        .create_hosted_zone()
        .name("example.test")
        .caller_reference("t1")
        .send()
        .await
        .unwrap();
    // Each fault is one attempt of the zone actor, backed off and audited: the SDK's own
    // retries are off, so nothing is retried behind the limiter's and the audit log's back.
    let faults = vec![
        (400, "Throttling"),
        (500, "InternalFailure"),
        (400, "PriorRequestNotComplete"),
        (503, "ServiceUnavailable"),
    ];
    let proxy = fault_proxy(moto.url.clone(), Faults::FirstCalls(faults.clone())).await;
    let (proxy, calls) = (proxy.url, proxy.calls);
    let edge = FakeEdge::http().await.unwrap();
    let mut app = spawn_app().await;
    steered_domains(&app, &edge, &["app.example.test"]).await;
    let provider = Arc::new(Route53Provider::for_endpoint(&proxy, DEFAULT_TTL));
    app.start_engine_with_dns(
        Arc::new(NetworkProber::new(&[], true).unwrap()),
        Some(provider),
    )
    .await;

    eventually(
        "change applied after the faults",
        Duration::from_secs(60),
        || async {
            applied(&app, "app.example.test")
                .await
                .filter(|p| *p == 100)
        },
    )
    .await;
    // Exactly one HTTP call per audited attempt: the four faults and the success.
    let audited: i64 = sqlx::query_scalar("select count(*) from dns_changes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        (calls.load(Ordering::SeqCst), audited),
        (faults.len() + 1, faults.len() as i64 + 1),
        "calls seen by the proxy vs attempts audited"
    );
    let (failed, errors): (i64, Vec<String>) = sqlx::query_as(
        "select count(*), coalesce(array_agg(error), '{}') from dns_changes where status = 'failed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(failed, faults.len() as i64, "failed attempts are audited");
    let all = errors.join(" ");
    assert!(
        all.contains("Throttling")
            || all.contains("PriorRequestNotComplete")
            || all.contains("Internal"),
        "{all}"
    );
    // Transient failures are retried, not reported: dns.change_failed only once they have
    // lasted 5 attempts.
    let (retried, long, told): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where will_retry), count(*) filter (where attempt = 5),
                (select count(*) from events where type = 'dns.change_failed')
           from dns_changes where status = 'failed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        retried, failed,
        "every transient failure is marked will_retry"
    );
    assert_eq!(told, long, "only failures at attempt 5 are reported");
    let last_attempt: i32 = sqlx::query_scalar("select attempt from dns_changes where status <> 'failed' order by submitted_at desc limit 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        last_attempt > 1,
        "the successful change is a retry (attempt {last_attempt})"
    );
    // Exactly one weighted pair exists in moto.
    let sets = setup
        .client()
        .list_resource_record_sets()
        .hosted_zone_id(setup.zone_id_for("app.example.test").await.unwrap())
        .start_record_name("app.example.test")
        .send()
        .await
        .unwrap();
    let pair = sets
        .resource_record_sets()
        .iter()
        .filter(|r| r.name().trim_end_matches('.') == "app.example.test")
        .count();
    assert_eq!(pair, 2);
}

#[tokio::test]
async fn a_rejected_record_is_isolated_and_the_rest_of_the_zone_applied() {
    let moto = moto().await;
    let setup = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    setup
        .client()
        .create_hosted_zone()
        .name("example.test")
        .caller_reference("t2")
        .send()
        .await
        .unwrap();
    let proxy = fault_proxy(moto.url.clone(), Faults::RejectName("bad.example.test"))
        .await
        .url;
    let edge = FakeEdge::http().await.unwrap();
    let mut app = spawn_app().await;
    let service = steered_domains(
        &app,
        &edge,
        &[
            "a.example.test",
            "bad.example.test",
            "c.example.test",
            "d.example.test",
        ],
    )
    .await;
    let provider = Arc::new(Route53Provider::for_endpoint(&proxy, DEFAULT_TTL));
    app.start_engine_with_dns(
        Arc::new(NetworkProber::new(&[], true).unwrap()),
        Some(provider),
    )
    .await;

    eventually(
        "healthy domains applied",
        Duration::from_secs(30),
        || async {
            let mut all = true;
            for name in ["a.example.test", "c.example.test", "d.example.test"] {
                all &= applied(&app, name).await == Some(100);
            }
            all.then_some(())
        },
    )
    .await;
    let view = eventually(
        "bad domain marked failed",
        Duration::from_secs(30),
        || async {
            let view = app
                .get(&format!("/v1/services/{service}/dns"), &Auth::Header(1))
                .await
                .expect(200)
                .body;
            let bad = view["domains"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["name"] == "bad.example.test")
                .cloned()
                .unwrap();
            bad["last_error"].is_string().then_some(bad)
        },
    )
    .await;
    assert!(
        view["last_error"]
            .as_str()
            .unwrap()
            .contains("InvalidChangeBatch"),
        "{view}"
    );
    assert_eq!(view["applied_weights"], serde_json::Value::Null);
    assert_eq!(view["converged"], false);

    // The customer hears of the rejected record once, not of each bisection step.
    crate::helpers::assert_events_conform(&app.pool, &["dns.change_failed"]).await;
    let failed: Vec<serde_json::Value> =
        sqlx::query_scalar("select payload from events where type = 'dns.change_failed'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["will_retry"], false);
    assert_eq!(failed[0]["changes"][0]["name"], "bad.example.test");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("InvalidChangeBatch")
    );
}

/// A provider that accepts a batch and never answers: a node stuck mid-change.
struct Hang;

#[async_trait::async_trait]
impl tranche_actors::ports::DnsProvider for Hang {
    fn name(&self) -> &'static str {
        "route53"
    }
    async fn apply(
        &self,
        _: &str,
        _: &tranche_core::dns::planner::Batch,
    ) -> Result<tranche_core::dns::provider::Submitted, tranche_core::dns::provider::ProviderError>
    {
        std::future::pending().await
    }
    async fn in_sync(&self, _: &str) -> Result<bool, tranche_core::dns::provider::ProviderError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_node_killed_between_desired_and_applied_is_replaced_by_one_that_applies_once() {
    let moto = moto().await;
    let provider = Arc::new(Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL));
    provider
        .client()
        .create_hosted_zone()
        .name("example.test")
        .caller_reference("t3")
        .send()
        .await
        .unwrap();
    let edge = FakeEdge::http().await.unwrap();
    let app = spawn_app().await;
    steered_domains(&app, &edge, &["app.example.test"]).await;
    let node = |name: &'static str, dns: Arc<dyn tranche_actors::ports::DnsProvider>| {
        let pool_of = app.pool.clone();
        async move {
            let pool = tranche::postgres::pool::pool((*pool_of.connect_options()).clone(), 6)
                .await
                .unwrap();
            tranche::node::start(
                crate::helpers::test_engine_config(name),
                pool,
                Arc::new(NetworkProber::new(&[], true).unwrap()),
                Some(tranche::node::DnsOptions {
                    provider: dns,
                    rate_per_sec: 50.0,
                    burst: 50,
                }),
            )
            .await
            .unwrap()
        }
    };

    // Node A owns everything and gets stuck inside the provider call.
    let a = node("node-a", Arc::new(Hang)).await;
    eventually(
        "node a submitted the change",
        Duration::from_secs(15),
        || async {
            let n: i64 =
                sqlx::query_scalar("select count(*) from dns_changes where node_id = 'node-a'")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            (n >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(applied(&app, "app.example.test").await, None);

    // Node B joins; A dies abruptly. B takes the zone's shard over and applies the change.
    let b = node("node-b", provider.clone()).await;
    a.crash();
    eventually("node b applied it", Duration::from_secs(20), || async {
        applied(&app, "app.example.test")
            .await
            .filter(|p| *p == 100)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (by_b, ok_by_b, by_a_reached): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where node_id = 'node-b'),
                count(*) filter (where node_id = 'node-b' and status <> 'failed'),
                count(*) filter (where node_id = 'node-a' and provider_change_id is not null)
           from dns_changes",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (ok_by_b, by_a_reached),
        (1, 0),
        "applied once, by the survivor ({by_b} attempts by b)"
    );
    // A's change, which the provider never answered, is settled by the new owner, not left
    // `submitted` forever.
    let (status, error): (String, Option<String>) =
        sqlx::query_as("select status, error from dns_changes where node_id = 'node-a'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "superseded", "{error:?}");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("node-a") && error.contains("node-b"),
        "{error}"
    );
    let listed = app
        .get("/v1/dns/changes?status=superseded", &Auth::Header(1))
        .await
        .expect(200)
        .body;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    b.shutdown().await;
}
