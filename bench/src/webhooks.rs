//! `tranche bench webhooks`: the fan-out of a mass storm to a local receiver, with probing and
//! DNS steering measured in the same run.
//!
//! Two groups of live domains are probed every second through their own fake primary edge and
//! steered through Route53 (moto_server). The run has two phases:
//!
//! 1. **baseline** — group A's primary breaks: storms, DNS failover, no webhook load;
//! 2. **fan-out** — group B's primary breaks *and*, in the same instant, storms open on
//!    `domains` domains of `customers` customers, each with a webhook endpoint on the receiver.
//!
//! Per phase it reports probe latency (p50/p99) and rate, break → storm committed, and break →
//! failover in sync at Route53; for phase 2 also the time until every `storm.started` was
//! delivered. Probing and DNS are unaffected when phase 2's numbers match phase 1's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tranche::postgres::outbox::{NewEvent, emit};
use tranche_core::events::EventType;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tranche_actors::ports::Prober;
use tranche_core::domain::{PolicyKind, PolicyParams, PolicyPatch};
use tranche_core::probe::{ProbeRequest, ProbeResult};

use super::{CountingDns, Env, Moto, percentile};
use tranche::demo::edge::{Behaviour, FakeEdge};
use tranche::node::{DnsOptions, EngineOptions, WebhookOptions};
use tranche::postgres::{self, customers};

/// Records when each probe finished and how long it took.
struct Timed {
    inner: tranche::prober::NetworkProber,
    samples: Mutex<Vec<(Instant, f64)>>,
}

#[async_trait::async_trait]
impl Prober for Timed {
    async fn probe(&self, request: &ProbeRequest) -> ProbeResult {
        let started = Instant::now();
        let result = self.inner.probe(request).await;
        let done = Instant::now();
        self.samples
            .lock()
            .unwrap()
            .push((done, (done - started).as_secs_f64() * 1000.0));
        result
    }
}

impl Timed {
    /// Probe latencies (ms, sorted) of probes finished in `[from, to)`.
    fn between(&self, from: Instant, to: Instant) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
}

const ZONE: &str = "live.bench.test";

/// Creates `n` live domains (`{prefix}{i}.live.bench.test`) on `primary`, verified and steered.
async fn live_group(
    pool: &PgPool,
    service: i64,
    prefix: &str,
    n: usize,
    primary: &FakeEdge,
    backup: &FakeEdge,
) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "insert into service_domains (service_id, hostname, dns_zone, shard, probe_scheme,
                                      primary_target, backup_target, probe_timeout_ms,
                                      verification_token, steering_enabled, verification_status)
         select $1, $2 || i || '.' || $3, $3, $4, 'http', $5, $6, 2000, 'bench', true, 'verified'
           from generate_series(1, $7) i
         returning id",
    )
    .bind(service)
    .bind(prefix)
    .bind(ZONE)
    .bind(tranche_core::domain::shard_of(ZONE) as i16)
    .bind(primary.addr().to_string())
    .bind(backup.addr().to_string())
    .bind(n as i32)
    .fetch_all(pool)
    .await?)
}

/// Milliseconds from `since` to a per-domain time, sorted.
async fn latencies(
    pool: &PgPool,
    sql: &'static str,
    ids: &[i64],
    since: DateTime<Utc>,
) -> Vec<f64> {
    let mut v: Vec<f64> = sqlx::query_scalar(sql)
        .bind(ids)
        .bind(since)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

const STORMS_SQL: &str = "select extract(epoch from s.created_at - $2)::float8 * 1000
                            from storm_events s where s.domain_id = any($1) and s.started_at >= $2";
const INSYNC_SQL: &str = "select extract(epoch from min(c.insync_at) - $2)::float8 * 1000
                            from dns_changes c, unnest(c.domain_ids) d(id)
                           where d.id = any($1) and c.status = 'insync' and c.submitted_at >= $2
                           group by d.id";

/// Breaks `edge` at `broke` and waits for every domain of `ids` to be failed over in Route53;
/// prints the phase's numbers.
async fn measure(
    phase: &str,
    pool: &PgPool,
    prober: &Timed,
    ids: &[i64],
    broke: (Instant, DateTime<Utc>),
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "select count(*) from dns_records
              where domain_id = any($1) and applied_primary_weight = 0 and applied_at >= $2",
        )
        .bind(ids)
        .bind(broke.1)
        .fetch_one(pool)
        .await?;
        if applied as usize >= ids.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{phase}: only {applied} of {} domains failed over",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = Instant::now();
    let probes = prober.between(broke.0, done);
    let storms = latencies(pool, STORMS_SQL, ids, broke.1).await;
    let insync = latencies(pool, INSYNC_SQL, ids, broke.1).await;
    println!(
        "RESULT {phase} probes={} probes_per_s={:.0} probe_p50_ms={:.1} probe_p99_ms={:.1} \
         storm_p50_ms={:.0} storm_max_ms={:.0} dns_insync_p50_ms={:.0} dns_insync_max_ms={:.0}",
        probes.len(),
        probes.len() as f64 / (done - broke.0).as_secs_f64(),
        percentile(&probes, 50.0),
        percentile(&probes, 99.0),
        percentile(&storms, 50.0),
        storms.last().copied().unwrap_or(f64::NAN),
        percentile(&insync, 50.0),
        insync.last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

pub async fn webhooks(
    env: &Env,
    customers: usize,
    domains: usize,
    live: usize,
) -> anyhow::Result<()> {
    let pool = &env.pool;
    // The receiver and the two groups' primaries on the edges' runtime (not Tranche's CPU).
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let (receiver_addr, edge_a, edge_b) = env
        .edge_runtime
        .spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let app = poem::Route::new().at(
                "/hook",
                poem::post(poem::endpoint::make(move |_req| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::Relaxed);
                        "ok"
                    }
                })),
            );
            let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
            tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
            anyhow::Ok((addr, FakeEdge::http().await?, FakeEdge::http().await?))
        })
        .await??;

    // Route53 with the live zone; the live service probed every second.
    let moto = Moto::start().await?;
    let route53 = Arc::new(tranche::route53::Route53Provider::for_endpoint(
        &moto.url,
        tranche::route53::DEFAULT_TTL,
    ));
    route53
        .client()
        .create_hosted_zone()
        .name(ZONE)
        .caller_reference("bench-live")
        .send()
        .await?;
    route53.refresh_zones().await;
    let service =
        postgres::services::create(pool, customers::DEMO_CUSTOMER_ID, "live", "cdn-a", "cdn-b")
            .await?;
    let policy = PolicyParams::new(
        PolicyKind::HttpAvailability,
        &PolicyPatch {
            probe_interval_seconds: Some(1),
            window_seconds: Some(3),
            min_samples: Some(2),
            cooldown_seconds: Some(3600),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    postgres::policies::create(pool, customers::DEMO_CUSTOMER_ID, service.id, &policy).await?;
    let group_a = live_group(pool, service.id, "a", live, &edge_a, &env.backup_http).await?;
    let group_b = live_group(pool, service.id, "b", live, &edge_b, &env.backup_http).await?;

    // The fan-out's customers: one endpoint each, `domains` domains between them (not probed).
    let url = format!("http://{receiver_addr}/hook");
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into customers (name) select 'hooks-' || i from generate_series(1, $1) i returning id",
    )
    .bind(customers as i32)
    .fetch_all(pool)
    .await?;
    sqlx::query(
        "insert into webhook_endpoints (customer_id, url, secret, event_types)
         select c, $2, 'bench-secret-0123456789', '{storm.started}' from unnest($1::int8[]) c",
    )
    .bind(&ids)
    .bind(&url)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into services (customer_id, name, primary_cdn, backup_cdn)
         select c, 'site', 'cloudflare', 'fastly' from unnest($1::int8[]) c",
    )
    .bind(&ids)
    .execute(pool)
    .await?;
    let per_customer = (domains / customers).max(1) as i32;
    sqlx::query(
        "insert into service_domains (service_id, hostname, dns_zone, shard, verification_token)
         select s.id, 'd' || i || '-' || s.id || '.hooks.test', 'hooks.test', 0, 'bench'
           from services s, generate_series(1, $2) i where s.customer_id = any($1)",
    )
    .bind(&ids)
    .bind(per_customer)
    .execute(pool)
    .await?;

    let prober = Arc::new(Timed {
        inner: env.prober()?,
        samples: Mutex::default(),
    });
    let dns = CountingDns {
        inner: route53.clone(),
        calls: AtomicU64::new(0),
    };
    let node = tranche::node::start_with(
        super::engine_config("bench-webhooks"),
        pool.clone(),
        prober.clone(),
        EngineOptions {
            dns: Some(DnsOptions {
                provider: Arc::new(dns),
                rate_per_sec: 5.0,
                burst: 8,
            }),
            webhooks: Some(WebhookOptions {
                secrets: Arc::new(tranche::secrets::SecretBox::plaintext()),
                allow_private: true,
                idle: Duration::from_millis(100),
                retention: tranche::node::EVENT_RETENTION,
            }),
            ..EngineOptions::default()
        },
    )
    .await?;
    // Settled: initial records for both groups in Route53, windows full of healthy samples.
    let settled = Instant::now();
    loop {
        let applied: i64 = sqlx::query_scalar(
            "select count(*) from dns_records where applied_primary_weight = 100",
        )
        .fetch_one(pool)
        .await?;
        if applied as usize >= 2 * live {
            break;
        }
        anyhow::ensure!(
            settled.elapsed() < Duration::from_secs(120),
            "initial records not applied ({applied})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Phase 1: group A breaks, nothing else happens.
    let broke = (Instant::now(), Utc::now());
    edge_a.set(Behaviour::Status(503));
    measure("baseline", pool, &prober, &group_a, broke).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Phase 2: group B breaks as storms open on every fan-out domain.
    let broke = (Instant::now(), Utc::now());
    edge_b.set(Behaviour::Status(503));
    // As the engine commits storms: the facts and their events in one transaction.
    let mut tx = pool.begin().await?;
    let opened: Vec<(uuid::Uuid, i64, i64, String, i64, DateTime<Utc>)> = sqlx::query_as(
        "with opened as (
             insert into storm_events (service_id, domain_id, kind, started_at, trigger)
             select d.service_id, d.id, 'http_availability', now(), '{}'
               from service_domains d join services s on s.id = d.service_id
              where s.customer_id = any($1)
             returning id, service_id, domain_id, started_at
         )
         select o.id, o.service_id, o.domain_id, d.hostname, s.customer_id, o.started_at
           from opened o join service_domains d on d.id = o.domain_id
           join services s on s.id = o.service_id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let events: Vec<NewEvent> = opened
        .into_iter()
        .map(
            |(storm_id, service_id, domain_id, host, customer, started_at)| {
                NewEvent::new(
                    customer,
                    EventType::StormStarted,
                    serde_json::json!({
                        "storm_id": storm_id, "service_id": service_id, "domain_id": domain_id,
                        "domain": host, "kind": "http_availability",
                        "started_at": started_at.to_rfc3339(), "trigger": {},
                    }),
                )
            },
        )
        .collect();
    emit(&mut tx, &events).await?;
    tx.commit().await?;
    let storms = events.len() as u64;
    let committed = broke.0.elapsed();
    measure("during_fanout", pool, &prober, &group_b, broke).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < storms {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {storms} deliveries after 300 s",
            received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = broke.0.elapsed();
    println!(
        "RESULT webhooks storms={storms} customers={customers} committed_s={:.2} all_delivered_s={:.2} deliveries_per_s={:.0}",
        committed.as_secs_f64(),
        all.as_secs_f64(),
        storms as f64 / (all - committed).as_secs_f64()
    );
    node.shutdown().await;
    drop((edge_a, edge_b, moto));
    Ok(())
}
