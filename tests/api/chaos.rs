//! Faults a cluster meets in production, on real `tranche serve` processes sharing the test
//! database, with Route53 on `moto_server` behind a recording proxy and local HTTP edges:
//! the owner of a zone killed with SIGKILL in the middle of a ramp step, and frozen with
//! SIGSTOP in the middle of a storm, then woken.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::PgPool;
use tokio::time::Instant;
use tranche::demo::edge::{Behaviour, FakeEdge};
use tranche::route53::{DEFAULT_TTL, Route53Provider};
use tranche_actors::config::LEASE_DEADLINE;
use tranche_core::domain::shard_of;

use crate::dns_faults::{Faults, Route53Proxy, fault_proxy};
use crate::helpers::{ADMIN_TOKEN, TestApp, add_zone_domains, eventually, fast_service, spawn_app};
use crate::route53::{Moto, moto};

const DOMAINS: usize = 5;

/// A `tranche serve` process on the test database.
pub(crate) struct Node {
    pub(crate) id: String,
    child: Child,
    port: u16,
}

impl Node {
    /// A node steering Route53 at `route53`.
    fn start(id: &str, database_url: &str, route53: &str) -> Self {
        Self::spawn(
            id,
            database_url,
            &[
                ("TRANCHE_DNS_PROVIDER", "route53"),
                ("TRANCHE_ROUTE53_ENDPOINT_URL", route53),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_REGION", "us-east-1"),
            ],
        )
    }

    /// A node with `env` on top of the common settings (dev mode, the admin token, private
    /// probe targets allowed, no invoicing).
    pub(crate) fn spawn(id: &str, database_url: &str, env: &[(&str, &str)]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_tranche"))
            .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--node-id", id])
            .env("DATABASE_URL", database_url)
            .env("TRANCHE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TRANCHE_PROBE_ALLOW_PRIVATE", "true")
            .env("TRANCHE_BILLING", "false")
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            id: id.to_owned(),
            child,
            port,
        }
    }

    /// The node's API.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub(crate) async fn cluster(&self, client: &reqwest::Client) -> Option<serde_json::Value> {
        let resp = client
            .get(format!("http://127.0.0.1:{}/v1/cluster", self.port))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A URL the child processes connect to the test database with (a Unix socket).
pub(crate) fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@localhost:{}/{}?host={}",
        o.get_username(),
        o.get_port(),
        o.get_database().unwrap(),
        o.get_socket().unwrap().display()
    )
}

/// The node whose lease session holds `shard`'s lock now (from `pg_locks`).
pub(crate) async fn owner_of(pool: &PgPool, shard: u16) -> Option<String> {
    sqlx::query_scalar(concat!(
        "with owners as (",
        tranche::OWNERS_SQL!(),
        ") select n.node_id from owners w join cluster_nodes n on n.backend_pid = w.pid
           where w.shard = $1"
    ))
    .bind(i32::from(shard))
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Sessions of `node`'s notification listener.
async fn listeners(pool: &PgPool, node: &str) -> i64 {
    sqlx::query_scalar("select count(*) from pg_stat_activity where application_name = $1")
        .bind(tranche::postgres::leases::listener_application_name(node))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A zone in moto, `DOMAINS` domains in it through a primary and a backup edge, a fast policy.
struct Setup {
    _moto: Moto,
    proxy: Route53Proxy,
    route53: Route53Provider,
    primary: FakeEdge,
    _backup: FakeEdge,
    app: TestApp,
    zone: &'static str,
}

async fn setup(zone: &'static str) -> Setup {
    let moto = moto().await;
    let route53 = Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL);
    route53
        .client()
        .create_hosted_zone()
        .name(zone)
        .caller_reference(zone)
        .send()
        .await
        .unwrap();
    let proxy = fault_proxy(moto.url.clone(), Faults::None).await;
    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let app = spawn_app().await;
    let service = fast_service(&app).await;
    add_zone_domains(
        &app,
        service,
        zone,
        DOMAINS,
        (primary.addr(), backup.addr()),
    )
    .await;
    Setup {
        _moto: moto,
        proxy,
        route53,
        primary,
        _backup: backup,
        app,
        zone,
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Waits until every domain's storm is open and 0/100 is applied at Route53.
async fn storms_applied(pool: &PgPool) {
    eventually(
        "storms open and failed over at Route53",
        Duration::from_secs(30),
        || async {
            let open = count(
                pool,
                "select count(*) from storm_events where ended_at is null",
            )
            .await;
            let applied = count(
                pool,
                "select count(*) from dns_records where applied_primary_weight = 0",
            )
            .await;
            (open == DOMAINS as i64 && applied == DOMAINS as i64).then_some(())
        },
    )
    .await;
}

/// Waits until every storm is closed and 100/0 is applied, by `by`.
async fn recovered(pool: &PgPool, by: &str) {
    eventually(
        "storms closed and 100/0 applied",
        Duration::from_secs(60),
        || async {
            let closed: i64 = sqlx::query_scalar(
                "select count(*) from storm_events where ended_at is not null and closed_by_node = $1",
            )
            .bind(by)
            .fetch_one(pool)
            .await
            .unwrap();
            let applied = count(
                pool,
                "select count(*) from dns_records where applied_primary_weight = 100",
            )
            .await;
            let open = count(
                pool,
                "select count(*) from storm_events where ended_at is null",
            )
            .await;
            (closed == DOMAINS as i64 && applied == DOMAINS as i64 && open == 0).then_some(())
        },
    )
    .await;
}

/// Two nodes `<prefix>-a` and `<prefix>-b` on the setup's database, once they hold 128 shards
/// each (no shard moves any more); which of them owns the setup's zone; an HTTP client.
async fn two_nodes(s: &Setup, prefix: &str) -> ([Node; 2], usize, reqwest::Client) {
    let url = database_url(&s.app.pool);
    let nodes = [
        Node::start(&format!("{prefix}-a"), &url, &s.proxy.url),
        Node::start(&format!("{prefix}-b"), &url, &s.proxy.url),
    ];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually(
        "both nodes live, holding 128 shards each",
        Duration::from_secs(60),
        || async {
            let cluster = nodes[0].cluster(&client).await?;
            let balanced = cluster["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["alive"] == true && n["shard_count"] == 128)
                .count();
            (balanced == 2 && cluster["unowned_shards"] == 0).then_some(())
        },
    )
    .await;
    let owner = owner_of(&s.app.pool, shard_of(s.zone)).await.unwrap();
    let owner = usize::from(owner != nodes[0].id);
    (nodes, owner, client)
}

/// Asserts every domain went 100 → 0 → 25 → 50 → 100 at the provider.
fn assert_every_step_sent(proxy: &Route53Proxy) {
    for (name, sent) in weights_sent(proxy) {
        let mut steps = sent.clone();
        steps.dedup();
        assert_eq!(steps, vec![100, 0, 25, 50, 100], "{name}: {sent:?}");
    }
}

/// Every domain's weights at the provider, in the order Route53 received them (from the
/// `ChangeResourceRecordSets` bodies the proxy saw).
fn weights_sent(proxy: &Route53Proxy) -> BTreeMap<String, Vec<u8>> {
    crate::route53::primary_weights_in(&proxy.bodies.lock().unwrap())
}

/// The owner of a zone is killed (SIGKILL) while its first ramp step is on the wire: the
/// survivor takes the shard over, settles the change the dead node left `submitted`, applies
/// 25/75 again and finishes the ramp — every step at Route53 — and `/v1/cluster` never counts
/// a shard twice meanwhile.
#[tokio::test]
async fn a_killed_owner_mid_ramp_is_taken_over_and_the_ramp_finishes() {
    let s = setup("ramp.test").await;
    let shard = shard_of(s.zone);
    let (nodes, owner, client) = two_nodes(&s, "kill").await;
    let (victim, survivor) = (&nodes[owner], &nodes[1 - owner]);

    s.primary.set(Behaviour::Status(503));
    storms_applied(&s.app.pool).await;

    // The primary recovers; the owner's first ramp step (25/75) hangs at the provider, and the
    // owner is killed while it does.
    s.proxy.delay_ms.store(5_000, Ordering::SeqCst);
    s.primary.set(Behaviour::Healthy);
    eventually("25/75 on the wire", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from dns_changes where status = 'submitted' and node_id = $1
                and changes @> '[{\"reason\": \"ramp\"}]'",
        )
        .bind(&victim.id)
        .fetch_one(&s.app.pool)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await;
    victim.signal(Signal::SIGKILL);
    s.proxy.delay_ms.store(0, Ordering::SeqCst);
    let killed = Instant::now();

    // While the survivor takes over, the cluster view never counts a shard twice.
    let mut took_over = None;
    while took_over.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no takeover after 30 s"
        );
        if let Some(cluster) = survivor.cluster(&client).await {
            let mut seen = HashSet::new();
            for node in cluster["nodes"].as_array().unwrap() {
                for shard in node["shards"].as_array().unwrap() {
                    assert!(
                        seen.insert(shard.as_i64().unwrap()),
                        "counted twice: {cluster}"
                    );
                }
            }
            let owned = 256 - cluster["unowned_shards"].as_u64().unwrap() as usize;
            assert_eq!(owned, seen.len(), "{cluster}");
        }
        if owner_of(&s.app.pool, shard).await.as_deref() == Some(survivor.id.as_str()) {
            took_over = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The survivor finishes the ramp and closes every storm.
    recovered(&s.app.pool, &survivor.id).await;
    let (status, error): (String, Option<String>) = sqlx::query_as(
        "select status, error from dns_changes where node_id = $1 and changes @> '[{\"reason\": \"ramp\"}]'",
    )
    .bind(&victim.id)
    .fetch_one(&s.app.pool)
    .await
    .unwrap();
    assert_eq!(status, "superseded", "{error:?}");
    let orphans = count(
        &s.app.pool,
        "select count(*) from dns_changes where status = 'submitted'",
    )
    .await;
    assert_eq!(orphans, 0, "no change is left submitted");
    // Every domain went 0 → 25 → 50 → 100 at the provider.
    assert_every_step_sent(&s.proxy);
    // Route53 holds the final weights.
    for i in 0..DOMAINS {
        let name = format!("d{i}.{}", s.zone);
        assert_eq!(
            crate::route53::weight_pair(&s.route53, &name).await,
            Some((100, 0)),
            "{name}"
        );
    }
    eprintln!("takeover after SIGKILL: {took_over:?}");
}

/// The owner of a zone is frozen (SIGSTOP) in the middle of a storm. The survivor deposes it
/// once its heartbeat is older than the deadline, takes its shards over within 5 s of the
/// deadline, and carries the storm on; woken (SIGCONT), the frozen node changes nothing —
/// no DNS change, no storm row, no decision — until it legitimately owns the zone again.
#[tokio::test]
async fn a_frozen_owner_is_deposed_and_does_not_act_when_it_wakes() {
    let s = setup("frozen.test").await;
    let shard = shard_of(s.zone);
    let (nodes, owner, client) = two_nodes(&s, "freeze").await;
    let (frozen, survivor) = (&nodes[owner], &nodes[1 - owner]);

    s.primary.set(Behaviour::Status(503));
    storms_applied(&s.app.pool).await;
    assert_eq!(
        listeners(&s.app.pool, &frozen.id).await,
        1,
        "the node listens"
    );

    frozen.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    eventually(
        "the survivor owns the frozen node's shards",
        LEASE_DEADLINE + Duration::from_secs(15),
        || async {
            (owner_of(&s.app.pool, shard).await.as_deref() == Some(survivor.id.as_str()))
                .then_some(())
        },
    )
    .await;
    let takeover = stopped.elapsed();
    assert!(
        takeover <= LEASE_DEADLINE + Duration::from_secs(5),
        "takeover {takeover:?} after the freeze (deadline {LEASE_DEADLINE:?} + 5 s)"
    );
    // The survivor takes the freed shards one lock at a time: poll until its acquisition loop
    // has gone round, then check what the cluster view says of both nodes.
    let cluster = eventually(
        "the survivor holds every shard",
        Duration::from_secs(5),
        || async {
            let cluster = survivor.cluster(&client).await.unwrap();
            (cluster["unowned_shards"] == 0).then_some(cluster)
        },
    )
    .await;
    let frozen_view = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == frozen.id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(frozen_view["alive"], false, "{cluster}");
    assert_eq!(frozen_view["shard_count"], 0, "{cluster}");
    assert_eq!(frozen_view["deposed_by"], survivor.id.as_str(), "{cluster}");
    // Its notification listener was ended with it: a frozen listener would hold PostgreSQL's
    // notification queue back for everyone.
    assert_eq!(
        listeners(&s.app.pool, &frozen.id).await,
        0,
        "the frozen node's listener still runs"
    );
    let deposed_at: DateTime<Utc> =
        sqlx::query_scalar("select deposed_at from cluster_nodes where node_id = $1")
            .bind(&frozen.id)
            .fetch_one(&s.app.pool)
            .await
            .unwrap();

    // The primary recovers while the frozen node still believes it is in a storm at 0/100;
    // once the survivor has started the ramp, the frozen node wakes up.
    s.primary.set(Behaviour::Healthy);
    eventually("the survivor ramps", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from domain_states where state = 'recovering' and decided_by_node = $1",
        )
        .bind(&survivor.id)
        .fetch_one(&s.app.pool)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await;
    frozen.signal(Signal::SIGCONT);
    let woke = Utc::now();
    // Watch when (if ever) the woken node legitimately owns the zone again.
    let mut owns_again: Option<DateTime<Utc>> = None;
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        if owns_again.is_none()
            && owner_of(&s.app.pool, shard).await.as_deref() == Some(frozen.id.as_str())
        {
            owns_again = Some(Utc::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = owns_again.unwrap_or_else(Utc::now);
    let acted: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from dns_changes where node_id = $1 and submitted_at > $2 and submitted_at < $3),
                (select count(*) from storm_events
                  where (opened_by_node = $1 and started_at > $2 and started_at < $3)
                     or (closed_by_node = $1 and ended_at > $2 and ended_at < $3)),
                (select count(*) from domain_states where decided_by_node = $1 and updated_at > $2 and updated_at < $3)",
    )
    .bind(&frozen.id)
    .bind(deposed_at)
    .bind(until)
    .fetch_one(&s.app.pool)
    .await
    .unwrap();
    assert_eq!(
        acted,
        (0, 0, 0),
        "the deposed node acted after {deposed_at} (woke {woke}, owns the zone again: {owns_again:?})"
    );
    // The cluster finishes the recovery (the zone may have moved back to the woken node,
    // which then acts with a new fencing epoch).
    eventually("storms closed", Duration::from_secs(60), || async {
        let open = count(
            &s.app.pool,
            "select count(*) from storm_events where ended_at is null",
        )
        .await;
        let applied = count(
            &s.app.pool,
            "select count(*) from dns_records where applied_primary_weight = 100",
        )
        .await;
        (open == 0 && applied == DOMAINS as i64).then_some(())
    })
    .await;
    assert_every_step_sent(&s.proxy);
    eprintln!("takeover after SIGSTOP: {takeover:?}");
}
