//! The Route53 provider against a real `moto_server` (installed by `.ci/run`): weighted
//! records UPSERTed as planned, hosted zones found by the longest suffix.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use tranche::dns::route53::{DEFAULT_TTL, Route53Provider};
use tranche_actors::dns::planner::{BatchLimits, RecordChange, plan};
use tranche_actors::dns::provider::{DnsProvider, ProviderError};
use tranche_actors::storm::Weights;

use crate::helpers::eventually;

/// A `moto_server` on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is not installed: pip install 'moto[server]' (.ci/run does this)");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually("moto_server answering", Duration::from_secs(30), || async {
        client
            .get(format!("{url}/moto-api/"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    Moto { child, url }
}

async fn create_zone(provider: &Route53Provider, name: &str) -> String {
    let out = provider
        .client()
        .create_hosted_zone()
        .name(name)
        .caller_reference(uuid::Uuid::new_v4().to_string())
        .send()
        .await
        .unwrap();
    provider.refresh_zones().await;
    out.hosted_zone()
        .unwrap()
        .id()
        .trim_start_matches("/hostedzone/")
        .to_owned()
}

fn change(id: i64, name: &str, primary: u8, applied: Option<u8>) -> RecordChange {
    RecordChange {
        domain_id: id,
        name: name.to_owned(),
        primary_value: format!("{name}.cdn.cloudflare.net"),
        backup_value: format!("{name}.global.prod.fastly.net"),
        weights: Weights::new(primary),
        applied: applied.map(Weights::new),
        decided_at: Utc::now(),
    }
}

/// (set identifier, weight, value) of every weighted CNAME named `name` in the zone.
async fn weights_of(
    provider: &Route53Provider,
    zone_id: &str,
    name: &str,
) -> Vec<(String, i64, String)> {
    let out = provider
        .client()
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .start_record_name(name)
        .send()
        .await
        .unwrap();
    let mut sets: Vec<(String, i64, String)> = out
        .resource_record_sets()
        .iter()
        .filter(|r| r.name().trim_end_matches('.') == name)
        .map(|r| {
            (
                r.set_identifier().unwrap_or_default().to_owned(),
                r.weight().unwrap_or(-1),
                r.resource_records()[0].value().to_owned(),
            )
        })
        .collect();
    sets.sort();
    sets
}

#[tokio::test]
async fn storms_and_ramps_become_weighted_records_in_route53() {
    let moto = moto().await;
    let provider = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    let zone = create_zone(&provider, "example.com").await;

    // A storm: 0/100, both record sets of the domain in one request.
    let plan_1 = plan(
        vec![change(1, "app.example.com", 0, None)],
        &BatchLimits::ROUTE53,
    );
    assert_eq!(plan_1.batches.len(), 1);
    let submitted = provider
        .apply("example.com", &plan_1.batches[0])
        .await
        .unwrap();
    assert!(!submitted.change_id.is_empty());
    assert_eq!(
        weights_of(&provider, &zone, "app.example.com").await,
        vec![
            (
                "backup".into(),
                100,
                "app.example.com.global.prod.fastly.net".into()
            ),
            (
                "primary".into(),
                0,
                "app.example.com.cdn.cloudflare.net".into()
            ),
        ]
    );
    eventually("change in sync", Duration::from_secs(10), || async {
        provider
            .in_sync(&submitted.change_id)
            .await
            .unwrap()
            .then_some(())
    })
    .await;

    // The ramp back, step by step, ends at 100/0 (UPSERT replaces the weights in place).
    for (primary, applied) in [(25, 0), (50, 25), (100, 50)] {
        let p = plan(
            vec![change(1, "app.example.com", primary, Some(applied))],
            &BatchLimits::ROUTE53,
        );
        provider.apply("example.com", &p.batches[0]).await.unwrap();
        let sets = weights_of(&provider, &zone, "app.example.com").await;
        assert_eq!(
            (sets[1].1, sets[0].1),
            (i64::from(primary), i64::from(100 - primary)),
            "{sets:?}"
        );
    }
}

#[tokio::test]
async fn hosted_zone_is_the_longest_matching_suffix() {
    let moto = moto().await;
    let provider = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    let outer = create_zone(&provider, "example.com").await;
    let inner = create_zone(&provider, "eu.example.com").await;
    assert_eq!(
        provider.zone_id_for("app.eu.example.com").await.unwrap(),
        inner
    );
    assert_eq!(
        provider.zone_id_for("app.example.com").await.unwrap(),
        outer
    );
    assert_eq!(provider.zone_id_for("eu.example.com").await.unwrap(), inner);
    assert!(matches!(
        provider.zone_id_for("app.example.org").await,
        Err(ProviderError::Permanent(_))
    ));
    // "xample.com" is not a label suffix of anything here.
    assert!(provider.zone_id_for("notexample.com").await.is_err());
}

#[tokio::test]
async fn many_domains_of_a_zone_go_in_few_requests() {
    let moto = moto().await;
    let provider = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    let zone = create_zone(&provider, "example.com").await;
    let changes: Vec<_> = (0..600)
        .map(|i| change(i, &format!("d{i}.example.com"), 0, Some(100)))
        .collect();
    let p = plan(changes, &BatchLimits::ROUTE53);
    // 600 domains × 4 counted records / 1,000 per request.
    assert_eq!(p.batches.len(), 3);
    for batch in &p.batches {
        provider.apply("example.com", batch).await.unwrap();
    }
    assert_eq!(
        weights_of(&provider, &zone, "d599.example.com").await[0].1,
        100
    );
    assert_eq!(weights_of(&provider, &zone, "d0.example.com").await[1].1, 0);
}
