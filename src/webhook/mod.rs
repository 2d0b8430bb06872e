//! Webhook delivery over HTTP: the sender ([`HttpSender`]) — signed JSON or a Slack-compatible
//! `{"text": …}` — and its signing. The outbox it delivers from is
//! [`crate::postgres::outbox::PgWebhookStore`].
//!
//! # Verifying a delivery
//!
//! Every request is signed twice: in the [Standard Webhooks](https://www.standardwebhooks.com)
//! format, which stock verifiers check —
//!
//! ```text
//! webhook-id: <event id>            (dedupe on it: delivery is at least once)
//! webhook-timestamp: <unix seconds>
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>
//! ```
//!
//! where the key is the base64 after `whsec_` in the endpoint's secret (the secret's own bytes
//! for a secret not of that form) — and in Tranche's original header, kept for receivers
//! written against it:
//!
//! ```text
//! Tranche-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
//! ```
//!
//! with `Tranche-Event` (the type), `Tranche-Delivery` (the delivery id) and `Tranche-Event-Id`.
//! Recompute the HMAC, compare in constant time, and reject timestamps older than a few minutes
//! (replays). Secrets are stored sealed when `webhook_secret_keys` is set ([`crate::secrets`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tranche_actors::ports::{Delivery, WebhookSender};

/// `t=<unix>,v1=<hex hmac>` for `body` signed at `t`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The HMAC key of a Standard Webhooks signature: the base64 after `whsec_`, or the secret's
/// bytes when it is not of that form.
pub fn standard_key(secret: &str) -> Vec<u8> {
    use base64::Engine as _;
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<base64 HMAC-SHA256(key, "<id>.<t>.<body>")>`: the Standard Webhooks signature.
pub fn standard_signature(secret: &str, id: &str, t: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    let mut mac = Hmac::<Sha256>::new_from_slice(&standard_key(secret))
        .expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Whether a webhook may not be delivered to `ip` (the product's one address policy).
pub fn is_private(ip: IpAddr) -> bool {
    !tranche_core::address_policy::is_public(ip)
}

/// The envelope of every JSON delivery.
pub fn json_body(d: &Delivery) -> Value {
    envelope(
        &d.event_id,
        &d.event_type,
        d.occurred_at,
        d.customer_id,
        serde_json::from_str::<Value>(&d.payload).unwrap_or(Value::Null),
    )
}

/// An event as delivered: `{id, type, created_at, customer_id, data}` (documented per type as
/// the OpenAPI `Event` schema, `crate::api::events`).
pub fn envelope(
    id: impl serde::Serialize,
    event_type: &str,
    created_at: chrono::DateTime<chrono::Utc>,
    customer_id: i64,
    data: Value,
) -> Value {
    json!({
        "id": id,
        "type": event_type,
        "created_at": created_at,
        "customer_id": customer_id,
        "data": data,
    })
}

/// A sentence for humans (Slack's `{"text": …}`).
pub fn slack_text(d: &Delivery) -> String {
    let data: Value = serde_json::from_str(&d.payload).unwrap_or(Value::Null);
    let s = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    // An SLO alert about one occurrence of a repeating job: (occurrence, its expected end).
    let occurrence = data.get("occurrence").and_then(|o| {
        let field = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        Some((field("job")?, field("expected_end")?))
    });
    match d.event_type.as_str() {
        "slo.late" if let Some((job, end)) = &occurrence => format!(
            ":alarm_clock: SLO {} ({}) for {}: run {job} is late: not finished by {end}.",
            s("slo"),
            s("application"),
            s("business_date"),
        ),
        "slo.breached" if let Some((job, end)) = &occurrence => format!(
            ":rotating_light: SLO {} ({}) for {}: run {job} is breached: it failed, or ran past its tolerance (expected by {end}).",
            s("slo"),
            s("application"),
            s("business_date"),
        ),
        "storm.started" => format!(
            ":rotating_light: Storm on {}: the primary CDN is below its policy, traffic is moving to the backup (since {}).",
            s("domain"),
            s("started_at")
        ),
        "storm.ended" => format!(
            ":white_check_mark: Storm over on {}: the primary CDN is healthy again, traffic is moving back (ended {}).",
            s("domain"),
            s("ended_at")
        ),
        "storm.backup_unhealthy" => format!(
            ":warning: {}: the primary CDN is down but the backup is not healthy either; no failover.",
            s("domain")
        ),
        "domain.health_unknown" => format!(
            ":grey_question: {}: Tranche cannot judge the primary CDN ({}); no storm can be declared until it can.",
            s("domain"),
            s("reason")
        ),
        "dns.change_applied" => format!(
            ":globe_with_meridians: DNS change applied in {}.",
            s("zone")
        ),
        "dns.change_failed" => format!(":x: DNS change failed in {}: {}.", s("zone"), s("error")),
        "invoice.created" => format!(
            ":receipt: Invoice {} opened for {} to {}.",
            s("invoice_id"),
            s("period_start"),
            s("period_end")
        ),
        "domain.verified" => format!(
            ":lock: {} is verified; Tranche may now steer its DNS.",
            s("domain")
        ),
        "domain.verification_failed" => {
            format!(":x: {} could not be verified: {}.", s("domain"), s("error"))
        }
        "certificate.expiring" => format!(
            ":hourglass: The {} CDN serves {} a certificate that expires {} ({} days).",
            s("cdn"),
            s("domain"),
            s("expires_at"),
            data.get("days_left")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into())
        ),
        "vantage.disagrees" => format!(
            ":satellite_antenna: From {} ({}), the {} CDN of {} looks down, but the other vantages disagree: Tranche does not act on it. Check that vantage's network.",
            s("vantage"),
            s("node_id"),
            s("cdn"),
            s("domain")
        ),
        "drill.started" => format!(
            ":fire_drill: Drill on {}: traffic is moving to the backup CDN until {} ({}). No storm is open.",
            s("domain"),
            s("ends_at"),
            s("reason")
        ),
        "drill.ended" => format!(
            ":checkered_flag: Drill over on {} ({}).",
            s("domain"),
            s("outcome")
        ),
        "quota.threshold_crossed" => format!(
            ":bar_chart: {} has reached {}% of its quota: {} of {} ({}%) this period, which ends {}.",
            s("metric"),
            data.get("threshold")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            s("total"),
            s("quota"),
            s("percent_used"),
            s("period_end")
        ),
        "slo.not_started" => format!(
            ":hourglass: SLO {} ({}) for {}: nothing has started; expected from {}.",
            s("slo"),
            s("application"),
            s("business_date"),
            s("expected_start")
        ),
        "slo.late" => format!(
            ":alarm_clock: SLO {} ({}) for {} is late: not finished by {} ({}).",
            s("slo"),
            s("application"),
            s("business_date"),
            s("expected_end"),
            s("status")
        ),
        "slo.breached" => format!(
            ":rotating_light: SLO {} ({}) for {} is breached: {}, expected by {}.",
            s("slo"),
            s("application"),
            s("business_date"),
            s("status"),
            s("expected_end")
        ),
        "ping" => ":wave: Tranche webhook test: this endpoint receives notifications.".to_owned(),
        other => format!("Tranche event {other}."),
    }
}

/// Counts a delivery attempt: `delivered` (2xx), `refused` (another status), `error` (no
/// answer).
fn record_delivery(result: &'static str) {
    crate::metrics::METRICS
        .webhook_deliveries
        .get_or_create(&crate::metrics::ResultLabels { result })
        .inc();
}

/// Sends deliveries over HTTP(S), refusing private destinations unless allowed.
pub struct HttpSender {
    client: reqwest::Client,
    allow_private: bool,
}

impl HttpSender {
    pub fn new(allow_private: bool) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tranche-webhooks/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            // The client connects only to addresses this resolver returned, so the check and
            // the connection see the same answer: no DNS-rebinding window between them.
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
        })
    }

    /// Refuses a URL whose host is a private IP literal (literals never reach the resolver).
    fn literal_allowed(&self, url: &reqwest::Url) -> Result<(), String> {
        let host = url.host_str().ok_or("the URL has no host")?;
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(()); // a name: checked by the resolver
        };
        if !self.allow_private && is_private(ip) {
            return Err(format!(
                "{ip} is a private address; refused (webhook_allow_private)"
            ));
        }
        Ok(())
    }
}

/// A resolver for webhook deliveries that fails when a name resolves to any private address.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(private) = addrs.iter().find(|a| is_private(a.ip())) {
                return Err(format!(
                    "{host} resolves to the private address {}; refused (webhook_allow_private)",
                    private.ip()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An error and its causes, one line (reqwest hides the cause behind "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

#[async_trait::async_trait]
impl WebhookSender for HttpSender {
    async fn send(&self, d: &Delivery) -> Result<u16, (Option<u16>, String)> {
        let url = reqwest::Url::parse(&d.url).map_err(|e| (None, format!("bad URL: {e}")))?;
        self.literal_allowed(&url).map_err(|e| (None, e))?;
        let body = if d.format == tranche_core::webhook::Format::Slack {
            json!({ "text": slack_text(d) })
        } else {
            json_body(d)
        };
        let body = serde_json::to_vec(&body).map_err(|e| (None, e.to_string()))?;
        let t = Utc::now().timestamp();
        let response = self
            .client
            .post(url)
            .header("Content-Type", "application/json")
            .header("Tranche-Event", &d.event_type)
            .header("Tranche-Event-Id", &d.event_id)
            .header("Tranche-Delivery", &d.id)
            .header("Tranche-Signature", signature(&d.secret, t, &body))
            .header("webhook-id", &d.event_id)
            .header("webhook-timestamp", t.to_string())
            .header(
                "webhook-signature",
                standard_signature(&d.secret, &d.event_id, t, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                record_delivery("error");
                (None, format!("request failed: {}", error_chain(&e)))
            })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            record_delivery("delivered");
            Ok(status)
        } else {
            record_delivery("refused");
            Err((Some(status), format!("receiver answered HTTP {status}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // The value Python's hmac module computes for the same input.
        let s = signature("whsec_test_secret_123", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            s,
            "t=1700000000,v1=e89dcbfdce3392fb275033fb083d8c81e095a63bf687d9a2cd50e7d5f55e21f6"
        );
        assert_ne!(
            s,
            signature("other_secret_value_x", 1_700_000_000, br#"{"a":1}"#)
        );
    }

    #[test]
    fn private_destinations_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "100.64.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    /// A one-shot HTTP server on loopback answering 204; counts the connections it accepted.
    async fn receiver() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        (port, hits)
    }

    fn delivery(url: String) -> Delivery {
        Delivery {
            id: Uuid::new_v4().to_string(),
            endpoint_id: 1,
            url,
            secret: "s".repeat(32),
            format: tranche_core::webhook::Format::Json,
            customer_id: 1,
            event_id: Uuid::new_v4().to_string(),
            event_type: "ping".into(),
            occurred_at: Utc::now(),
            payload: r#"{"endpoint_id": 1}"#.into(),
            attempts: 0,
            created_at: Utc::now(),
            next_attempt_at: Utc::now(),
        }
    }

    #[test]
    fn slo_alerts_about_an_occurrence_name_the_run() {
        let mut d = delivery("http://example.invalid".into());
        d.event_type = "slo.late".into();
        let data = |occurrence: Value| {
            json!({"slo": "tx-summary", "application": "foxfire", "business_date": "2026-12-07",
                   "expected_end": "2026-12-07T17:10:00Z", "status": "late",
                   "occurrence": occurrence})
            .to_string()
        };
        d.payload = data(json!({"job": "tx-summary@10:00",
                                "expected_end": "2026-12-07T09:10:00Z", "actual_end": null}));
        assert_eq!(
            slack_text(&d),
            ":alarm_clock: SLO tx-summary (foxfire) for 2026-12-07: run tx-summary@10:00 is \
             late: not finished by 2026-12-07T09:10:00Z."
        );
        d.payload = data(Value::Null);
        assert_eq!(
            slack_text(&d),
            ":alarm_clock: SLO tx-summary (foxfire) for 2026-12-07 is late: not finished by \
             2026-12-07T17:10:00Z (late)."
        );
    }

    /// The address the sender connects to is the one it checked: a name resolving to a private
    /// address fails inside the client's own resolution, before any connection.
    #[tokio::test]
    async fn private_destinations_are_refused_where_the_client_resolves() {
        let (port, hits) = receiver().await;
        let strict = HttpSender::new(false).unwrap();
        for url in [
            format!("http://localhost:{port}/hook"),
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        ] {
            let (status, error) = strict.send(&delivery(url.clone())).await.unwrap_err();
            assert_eq!(status, None);
            assert!(error.contains("private address"), "{url}: {error}");
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Allowed by configuration: delivered.
        let lax = HttpSender::new(true).unwrap();
        let sent = lax
            .send(&delivery(format!("http://localhost:{port}/hook")))
            .await;
        assert_eq!(sent, Ok(204));
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
