//! The HTTP edge under abuse: oversized bodies refused while reading, slow and idle
//! connections closed, a flood of them unable to starve health checks, and input PostgreSQL
//! cannot store (NUL characters, times out of range, an over-long URL) refused with a 4xx
//! naming the field.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::{Auth, TestApp, spawn_app, spawn_app_with};

const DEMO: Auth = Auth::Header(1);

/// Resident memory of this process (the server runs in it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Sends `head` then up to `body_bytes` of body in 64 KiB writes (stopping when the server
/// stops reading), and returns the response the server sent.
async fn send_raw(app: &TestApp, head: &str, body_bytes: usize, chunked: bool) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < body_bytes {
        let result = if chunked {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            stream.write_all(&framed).await
        } else {
            stream.write_all(&chunk).await
        };
        if result.is_err() {
            break;
        }
        sent += chunk.len();
        // The server answers as soon as it has refused: stop writing once it has.
        let mut peek = [0u8; 1];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut peek)).await
            && n > 0
        {
            break;
        }
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn oversized_bodies_are_refused_while_reading() {
    let app = spawn_app().await;
    let before = rss();
    // Announced: refused from Content-Length, before the body is read.
    let started = Instant::now();
    let announced = send_raw(
        &app,
        "POST /v1/services HTTP/1.1\r\nHost: t\r\nX-Customer-ID: 1\r\nContent-Type: application/json\r\nContent-Length: 524288000\r\n\r\n",
        500 * 1024 * 1024,
        false,
    )
    .await;
    assert!(announced.starts_with("HTTP/1.1 413"), "{announced}");
    assert!(
        announced.contains("\"code\":\"payload_too_large\""),
        "{announced}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Unannounced (chunked): refused once more than the limit has arrived.
    let chunked = send_raw(
        &app,
        "POST /v1/services HTTP/1.1\r\nHost: t\r\nX-Customer-ID: 1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        500 * 1024 * 1024,
        true,
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains("payload_too_large"), "{chunked}");
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "the server buffered {} MiB",
        grown / (1024 * 1024)
    );
    // A body within the limit still works.
    app.post(
        "/v1/services",
        &DEMO,
        json!({ "name": "fine", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn slow_and_idle_connections_cannot_starve_health_checks() {
    let app = spawn_app_with(|s| {
        s.http_max_connections = Some(20);
        s.http_header_timeout = tranche::config::HumanDuration(Duration::from_secs(2));
    })
    .await;
    // Twice the limit of slowloris connections: a request line and headers that never end,
    // a byte every 300 ms, plus idle ones that send nothing.
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            for s in slow.iter_mut() {
                let _ = s.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        slow
    });
    // Health checks keep answering meanwhile.
    for _ in 0..10 {
        let started = Instant::now();
        let health = app.get("/healthz", &Auth::None).await;
        assert_eq!(health.status.as_u16(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let ready = app.get("/readyz", &Auth::None).await;
        assert_eq!(ready.status.as_u16(), 200, "{}", ready.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every slow connection is closed by the server within the header timeout (the trickle
    // lasted 9 s, far beyond the 2 s timeout).
    let slow = trickle.await.unwrap();
    for mut s in slow {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                // Closed (an error response may come first).
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) | Err(_) => {}
            }
            assert!(Instant::now() < deadline, "a slow connection is still open");
        }
    }
}

#[tokio::test]
async fn nul_characters_and_out_of_range_times_are_4xx_naming_the_field() {
    let app = spawn_app().await;
    // Bodies.
    let r = app
        .post(
            "/v1/services",
            &DEMO,
            json!({ "name": "a\u{0}b", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
        )
        .await;
    r.expect_error(422, "validation_failed", Some("name"));
    app.post(
        "/v1/admin/customers",
        &Auth::Admin,
        json!({ "name": "acme", "key_name": "k\u{0}" }),
    )
    .await
    .expect_error(422, "validation_failed", Some("key_name"));
    let (_, key) = app.create_customer("acme").await;
    let key = Auth::Key(key);
    app.post(
        "/v1/api-keys",
        &key,
        json!({ "name": "n\u{0}", "scopes": ["read"] }),
    )
    .await
    .expect_error(422, "validation_failed", Some("name"));
    // Query filters.
    for (path, field) in [
        ("/v1/events?type=%00", "type"),
        ("/v1/job-status?application=a%00b", "application"),
        ("/v1/job-status?run_id=%00", "run_id"),
        ("/v1/invoices?before=-200000-01-01T00:00:00Z", "before"),
        ("/v1/storms?since=-5000-01-01T00:00:00Z", "since"),
        ("/v1/dns/changes?until=%2B20000-01-01T00:00:00Z", "until"),
        ("/v1/job-status?business_date=-10000-01-01", "business_date"),
    ] {
        let r = app.get(path, &key).await;
        assert!(
            r.status.as_u16() == 400 || r.status.as_u16() == 422,
            "{path}: {} {}",
            r.status,
            r.text
        );
        assert_eq!(r.body["field"], field, "{path}: {}", r.text);
    }
    // Times in bodies, bounded to what the product means.
    let service = app.create_service(&key, "web").await;
    app.post(
        &format!("/v1/services/{service}/usage-snapshots"),
        &key,
        json!({ "snapshots": [{ "window_start": "-5000-01-01T00:00:00Z",
                                "window_end": "-5000-01-01T01:00:00Z",
                                "primary_bytes": 1, "backup_bytes": 0 }] }),
    )
    .await
    .expect_error(422, "validation_failed", Some("snapshots[0].window_start"));
    app.post(
        &format!("/v1/services/{service}/usage-snapshots"),
        &key,
        json!({ "snapshots": [{ "window_start": "1999-12-31T23:00:00Z",
                                "window_end": "2000-01-01T00:00:00Z",
                                "primary_bytes": 1, "backup_bytes": 0 }] }),
    )
    .await
    .expect_error(422, "validation_failed", Some("snapshots[0].window_start"));
    // An over-long webhook URL.
    let url = format!("https://hooks.example.com/{}", "a".repeat(2_100));
    app.post(
        "/v1/webhooks",
        &key,
        json!({ "url": url, "event_types": ["storm.started"] }),
    )
    .await
    .expect_error(422, "validation_failed", Some("url"));
}

#[tokio::test]
async fn a_production_node_without_dns_steering_says_so_on_readyz() {
    let app = spawn_app_with(|s| {
        s.dev = false;
        s.dns_provider = tranche::config::DnsProviderKind::Noop;
    })
    .await;
    let ready = app.get("/readyz", &Auth::None).await.expect(200);
    assert!(
        ready
            .text
            .starts_with("ready; warning: the DNS provider is noop"),
        "{}",
        ready.text
    );
    // Dev mode is for trying Tranche out: no warning there.
    let dev = spawn_app().await;
    assert_eq!(
        dev.get("/readyz", &Auth::None).await.expect(200).text,
        "ready"
    );
}

/// Heads the HTTP library would refuse with a bare status get the API's JSON error body.
#[tokio::test]
async fn malformed_heads_get_the_json_error_body() {
    let app = spawn_app().await;
    let long_path = format!(
        "GET /v1/services?x={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(20_000)
    );
    let huge_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-Filler-{i}: {}\r\n", "b".repeat(500)))
            .collect::<String>()
    );
    for (head, status, code) in [
        (long_path.as_bytes().to_vec(), "414", "uri_too_long"),
        (huge_headers.as_bytes().to_vec(), "431", "headers_too_large"),
        (
            b"GET /v1/serv\xffices HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            "400",
            "bad_request",
        ),
        (
            b"GET /v1/ser vices/x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            "400",
            "bad_request",
        ),
    ] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let _ = stream.write_all(&head).await;
        let mut response = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{response}"
        );
        assert!(
            response.contains("application/json"),
            "{status} {code}: {response}"
        );
        let body: serde_json::Value =
            serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["code"], code, "{response}");
    }
    // The server is fine afterwards.
    app.get("/healthz", &Auth::None).await.expect(200);
}

/// Probe targets follow the one address policy at creation too (unless the operator allows
/// private ones).
#[tokio::test]
async fn private_probe_targets_are_refused_at_creation() {
    let app = spawn_app_with(|s| s.probe_allow_private = false).await;
    let service = app.create_service(&DEMO, "web").await;
    for (target, ok) in [
        ("127.0.0.1", false),
        ("10.0.0.7:8443", false),
        ("[64:ff9b::7f00:1]", false),
        ("localhost.", false),
        ("edge.localhost", false),
        ("151.101.1.57", true),
        ("edge.cdn.example.net", true),
    ] {
        let r = app
            .post(
                &format!("/v1/services/{service}/domains"),
                &DEMO,
                json!({ "name": format!("d{}.example.com", target.len()), "primary_target": target }),
            )
            .await;
        if ok {
            r.expect(201);
        } else {
            r.expect_error(422, "validation_failed", Some("primary_target"));
        }
    }
}
