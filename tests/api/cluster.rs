//! Several nodes over one database: every domain is probed by exactly one node, a node that
//! dies abruptly has its domains taken over by the survivors, and storms are never duplicated.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tranche::demo::edge::{Behaviour, FakeEdge};
use tranche::node::RunningEngine;
use tranche::prober::NetworkProber;
use tranche_actors::ports::Prober;
use tranche_core::probe::{ProbeRequest, ProbeResult};

use crate::helpers::{Auth, eventually, spawn_app, test_engine_config};

const DEMO: Auth = Auth::Header(1);
const DOMAINS: usize = 300;

type Log = Arc<Mutex<Vec<(Instant, String, String)>>>;

/// The network prober, recording which node probed which hostname when.
struct Recording {
    inner: NetworkProber,
    node: String,
    log: Log,
}

#[async_trait::async_trait]
impl Prober for Recording {
    async fn probe(&self, request: &ProbeRequest) -> ProbeResult {
        self.log.lock().unwrap().push((
            Instant::now(),
            self.node.clone(),
            request.hostname.clone(),
        ));
        self.inner.probe(request).await
    }
}

async fn start_node(pool_of: &sqlx::PgPool, node: &str, log: &Log) -> RunningEngine {
    // Each node has its own connections, as separate processes would.
    let pool = tranche::postgres::pool::pool((*pool_of.connect_options()).clone(), 8)
        .await
        .unwrap();
    let prober = Recording {
        inner: NetworkProber::new(&[], true).unwrap(),
        node: node.to_owned(),
        log: log.clone(),
    };
    tranche::node::start(test_engine_config(node), pool, Arc::new(prober), None)
        .await
        .unwrap()
}

/// Which node probed each hostname since `since`.
fn probers_since(log: &Log, since: Instant) -> HashMap<String, HashSet<String>> {
    let mut by_host: HashMap<String, HashSet<String>> = HashMap::new();
    for (at, node, host) in log.lock().unwrap().iter() {
        if *at >= since {
            by_host
                .entry(host.clone())
                .or_default()
                .insert(node.clone());
        }
    }
    by_host
}

async fn running(nodes: &[&RunningEngine]) -> Vec<Vec<i64>> {
    let mut all = Vec::new();
    for n in nodes {
        all.push(n.engine.running_domains().await);
    }
    all
}

#[tokio::test]
async fn three_nodes_share_the_work_and_survive_a_crash() {
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    primary.set(Behaviour::Status(503));
    let app = spawn_app().await;
    let service = app.create_service(&DEMO, "fleet").await;
    app.post(
        &format!("/v1/services/{service}/storm-policies"),
        &DEMO,
        json!({ "window_seconds": 4, "min_samples": 2, "probe_interval_seconds": 2, "cooldown_seconds": 600 }),
    )
    .await
    .expect(201);
    for i in 0..DOMAINS {
        app.post(
            &format!("/v1/services/{service}/domains"),
            &DEMO,
            json!({
                "name": format!("app.zone{i}.test"),
                "primary_target": primary.addr().to_string(),
                "backup_target": backup.addr().to_string(),
                "probe_scheme": "http",
                "probe_timeout_ms": 1000,
            }),
        )
        .await
        .expect(201);
    }

    let log: Log = Arc::default();
    let a = start_node(&app.pool, "node-a", &log).await;
    let b = start_node(&app.pool, "node-b", &log).await;
    let c = start_node(&app.pool, "node-c", &log).await;

    // Every domain runs on exactly one node, and every node has a share.
    eventually(
        "300 domains spread over 3 nodes",
        Duration::from_secs(30),
        || async {
            let per_node = running(&[&a, &b, &c]).await;
            let total: usize = per_node.iter().map(Vec::len).sum();
            let distinct: HashSet<i64> = per_node.iter().flatten().copied().collect();
            (total == DOMAINS
                && distinct.len() == DOMAINS
                && per_node.iter().all(|n| !n.is_empty()))
            .then_some(())
        },
    )
    .await;
    // All storms open (the primary edge answers 503, the backup is fine).
    eventually("a storm per domain", Duration::from_secs(30), || async {
        let open: i64 =
            sqlx::query_scalar("select count(*) from storm_events where ended_at is null")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        (open == DOMAINS as i64).then_some(())
    })
    .await;

    // In a steady window each hostname is probed by exactly one node.
    let since = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probers = probers_since(&log, since);
    assert_eq!(probers.len(), DOMAINS, "every domain was probed");
    let shared: Vec<_> = probers
        .iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .collect();
    assert!(
        shared.is_empty(),
        "domains probed by more than one node: {shared:?}"
    );

    // Node b dies abruptly (no clean release: its lock connection just closes).
    let b_domains: HashSet<i64> = b.engine.running_domains().await.into_iter().collect();
    assert!(!b_domains.is_empty());
    let killed = Instant::now();
    b.crash();
    eventually(
        "survivors run every domain",
        Duration::from_secs(10),
        || async {
            let per_node = running(&[&a, &c]).await;
            let total: usize = per_node.iter().map(Vec::len).sum();
            let distinct: HashSet<i64> = per_node.iter().flatten().copied().collect();
            (total == DOMAINS && distinct.len() == DOMAINS).then_some(())
        },
    )
    .await;
    let b_hosts: HashSet<String> =
        sqlx::query_scalar::<_, String>("select hostname from service_domains where id = any($1)")
            .bind(b_domains.iter().copied().collect::<Vec<_>>())
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    eventually(
        "b's domains probed again by survivors",
        Duration::from_secs(10),
        || async {
            let probed: HashSet<String> = probers_since(&log, killed)
                .into_iter()
                .filter(|(_, nodes)| nodes.iter().any(|n| n != "node-b"))
                .map(|(host, _)| host)
                .collect();
            b_hosts.is_subset(&probed).then_some(())
        },
    )
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover <= Duration::from_secs(10),
        "takeover took {takeover:?}"
    );

    // The survivors restored the storm state: no storm was opened twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (open, total): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where ended_at is null), count(*) from storm_events",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (open, total),
        (DOMAINS as i64, DOMAINS as i64),
        "exactly one storm per domain, still open"
    );

    a.shutdown().await;
    c.shutdown().await;
}
