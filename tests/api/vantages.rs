//! Probing from several vantages, on real `tranche serve` processes in three regions, each
//! resolving the edges through its own DNS server: a fault that one node's resolver sees (it
//! answers an address where nothing listens) is that node's network problem, not the CDN's.
//! One vantage alone never fails a domain over, and says it disagrees; two of three do; all
//! three do; a vantage that dies mid-storm leaves the quorum to the others, without a flap.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;
use tranche::demo::edge::FakeEdge;
use tranche_core::domain::shard_of;

use crate::chaos::{Node, database_url, owner_of};
use crate::helpers::{Auth, DnsAnswer, LocalDns, TestApp, eventually, fast_service, spawn_app};

const DEMO: Auth = Auth::Header(1);
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
/// Domains per zone.
const DOMAINS: usize = 3;
const REACHABLE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 1);
/// Loopback too, but the edges listen on 127.0.0.1 only: connections are refused.
const UNREACHABLE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// One zone of domains whose primary edge is reached by a name each node resolves itself.
struct Zone {
    zone: &'static str,
    edge_name: &'static str,
}

const A: Zone = Zone {
    zone: "a.vantage.test",
    edge_name: "edge-a.cdn.test",
};
const B: Zone = Zone {
    zone: "b.vantage.test",
    edge_name: "edge-b.cdn.test",
};

async fn add_domains(app: &TestApp, service: i64, z: &Zone, primary: u16, backup: u16) {
    for i in 0..DOMAINS {
        app.post(
            &format!("/v1/services/{service}/domains"),
            &DEMO,
            serde_json::json!({ "name": format!("d{i}.{}", z.zone), "dns_zone": z.zone,
                    "primary_target": format!("{}:{primary}", z.edge_name),
                    "backup_target": format!("127.0.0.1:{backup}"),
                    "probe_scheme": "http", "probe_timeout_ms": 500 }),
        )
        .await
        .expect(201);
    }
}

/// The domains of `zone` as `/state` shows them.
async fn states(app: &TestApp, service: i64, zone: &str) -> Vec<Value> {
    app.domain_states(service)
        .await
        .into_iter()
        .filter(|d| d["name"].as_str().unwrap().ends_with(zone))
        .collect()
}

async fn storms(pool: &PgPool, zone: &str) -> (i64, i64) {
    sqlx::query_as(
        "select count(*) filter (where e.ended_at is null), count(*) filter (where e.ended_at is not null)
           from storm_events e join service_domains d on d.id = e.domain_id
          where d.dns_zone = $1",
    )
    .bind(zone)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Asserts for `period` (polling) that `zone` has exactly `open` open storms and none closed.
async fn holds(pool: &PgPool, zone: &str, open: i64, period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        assert_eq!(storms(pool, zone).await, (open, 0), "{zone} changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn region_of(nodes: &[Node], id: &str) -> usize {
    nodes.iter().position(|n| n.id == id).unwrap()
}

#[tokio::test]
async fn one_vantage_alone_never_fails_over_a_quorum_does_and_a_dying_one_changes_nothing() {
    let app = spawn_app().await;
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let service = fast_service(&app).await;
    for z in [&A, &B] {
        add_domains(
            &app,
            service,
            z,
            primary.addr().port(),
            backup.addr().port(),
        )
        .await;
    }
    let mut resolvers = Vec::new();
    for _ in REGIONS {
        let dns = LocalDns::start().await;
        for z in [&A, &B] {
            dns.set(z.edge_name, vec![DnsAnswer::A(REACHABLE)]);
        }
        resolvers.push(dns);
    }
    let url = database_url(&app.pool);
    let nodes: Vec<Node> = REGIONS
        .iter()
        .zip(&resolvers)
        .map(|(region, dns)| {
            Node::spawn(
                &format!("vq-{region}"),
                &url,
                &[
                    ("TRANCHE_REGION", region),
                    ("TRANCHE_PROBE_NAMESERVERS", &format!("[{}]", dns.addr)),
                    ("TRANCHE_DNS_PROVIDER", "noop"),
                ],
            )
        })
        .collect();

    // The cluster lists three vantages, one live node each, and every shard owned.
    eventually("three vantages", Duration::from_secs(60), || async {
        let c = app.get("/v1/cluster", &Auth::Admin).await.expect(200).body;
        let vantages = c["vantages"].as_array()?;
        (c["unowned_shards"] == 0
            && vantages.len() == 3
            && vantages.iter().all(|v| v["alive_nodes"] == 1))
        .then_some(())
    })
    .await;
    // Every decider hears all three vantages, healthy.
    eventually(
        "three vantages per domain",
        Duration::from_secs(30),
        || async {
            let all: Vec<Value> = [
                states(&app, service, A.zone).await,
                states(&app, service, B.zone).await,
            ]
            .concat();
            all.iter()
                .all(|d| {
                    d["state"] == "healthy"
                        && d["vantages"].as_array().is_some_and(|v| {
                            v.len() == 3 && v.iter().all(|v| v["primary_availability"] == "1")
                        })
                })
                .then_some(())
        },
    )
    .await;

    // 1. The decider of zone A resolves its edge to a dead address: it alone sees the primary
    //    down. No storm; `/state` says it disagrees, and so does an event.
    let owner_a = owner_of(&app.pool, shard_of(A.zone)).await.unwrap();
    let first = region_of(&nodes, &owner_a);
    resolvers[first].set(A.edge_name, vec![DnsAnswer::A(UNREACHABLE)]);
    eventually(
        "the decider's vantage disagrees",
        Duration::from_secs(30),
        || async {
            let ds = states(&app, service, A.zone).await;
            ds.iter()
                .all(|d| {
                    d["vantage_disagrees"].as_array().is_some_and(|v| {
                        v.len() == 1
                            && v[0]["vantage"] == REGIONS[first]
                            && v[0]["cdn"] == "primary"
                    })
                })
                .then_some(())
        },
    )
    .await;
    // Several windows (3 s each) pass without a storm.
    holds(&app.pool, A.zone, 0, Duration::from_secs(6)).await;
    for d in states(&app, service, A.zone).await {
        assert_eq!(d["state"], "healthy", "{d}");
        let down: Vec<bool> = d["vantages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["primary_down"] == true)
            .collect();
        assert_eq!(down.iter().filter(|d| **d).count(), 1, "{d}");
    }
    let announced: i64 = sqlx::query_scalar(
        "select count(*) from events where type = 'vantage.disagrees'
            and payload->>'vantage' = $1 and payload->>'cdn' = 'primary'",
    )
    .bind(REGIONS[first])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(announced, DOMAINS as i64, "one event per domain");

    // 2. A second vantage sees it too: a majority. Storms open, with every vantage's view in
    //    the trigger and the event.
    let second = (first + 1) % 3;
    resolvers[second].set(A.edge_name, vec![DnsAnswer::A(UNREACHABLE)]);
    eventually("storms by a majority", Duration::from_secs(30), || async {
        (storms(&app.pool, A.zone).await.0 == DOMAINS as i64).then_some(())
    })
    .await;
    let triggers: Vec<Value> = sqlx::query_scalar(
        "select e.trigger from storm_events e join service_domains d on d.id = e.domain_id
          where d.dns_zone = $1",
    )
    .bind(A.zone)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for t in &triggers {
        assert_eq!(t["quorum"], "majority", "{t}");
        let vantages = t["vantages"].as_array().unwrap();
        assert_eq!(vantages.len(), 3, "{t}");
        let down = vantages
            .iter()
            .filter(|v| v["primary_down"] == true)
            .count();
        assert!(down >= 2, "{t}");
    }
    let started: Vec<Value> = sqlx::query_scalar(
        "select payload from events where type = 'storm.started' and payload->>'domain' like $1",
    )
    .bind(format!("%.{}", A.zone))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(started.len(), DOMAINS);
    assert!(
        started
            .iter()
            .all(|p| p["trigger"]["vantages"].as_array().unwrap().len() == 3),
        "{started:?}"
    );
    // Zone B saw none of it.
    assert_eq!(storms(&app.pool, B.zone).await, (0, 0));
    for d in states(&app, service, B.zone).await {
        assert_eq!(d["vantage_disagrees"], serde_json::json!([]), "{d}");
    }

    // 3. Every vantage sees zone B's edge down: storms there too.
    for dns in &resolvers {
        dns.set(B.edge_name, vec![DnsAnswer::A(UNREACHABLE)]);
    }
    eventually(
        "storms by every vantage",
        Duration::from_secs(30),
        || async { (storms(&app.pool, B.zone).await.0 == DOMAINS as i64).then_some(()) },
    )
    .await;

    // 4. The vantage that still saw zone A healthy dies (kill -9) in the middle of the storms:
    //    the two left agree, and nothing flaps in either zone, even when the dead node owned a
    //    zone and a survivor takes it over.
    let third = (first + 2) % 3;
    nodes[third].signal(Signal::SIGKILL);
    holds(&app.pool, A.zone, DOMAINS as i64, Duration::from_secs(8)).await;
    assert_eq!(storms(&app.pool, B.zone).await, (DOMAINS as i64, 0));
    eventually("two vantages left", Duration::from_secs(15), || async {
        let c = app.get("/v1/cluster", &Auth::Admin).await.expect(200).body;
        let alive = c["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["alive"] == true)
            .count();
        (alive == 2 && c["unowned_shards"] == 0).then_some(())
    })
    .await;
    holds(&app.pool, B.zone, DOMAINS as i64, Duration::from_secs(4)).await;
    assert_eq!(storms(&app.pool, A.zone).await, (DOMAINS as i64, 0));
    // Every event here matches its documented schema.
    crate::helpers::assert_events_conform(&app.pool, &["vantage.disagrees", "storm.started"]).await;
}
