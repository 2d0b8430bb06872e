//! `tranche demo`: a self-contained storm on local fake CDN edges, narrated on the terminal.
//!
//! It starts a throwaway embedded PostgreSQL, two HTTPS edges standing in for the primary and
//! backup CDNs ([`edge`]), the API and the engine (fast timings), creates a service with three
//! domains, then breaks the primary edge and narrates what the engine does: failing probes (and
//! the backup's, which must be healthy to take the traffic), the storm, the DNS changes (through
//! the no-op provider, audited in `dns_changes`), the cooldown, the ramp back, and finally the
//! draft invoice with its storm-time discount. About half a minute, then everything is stopped
//! and removed.

pub mod edge;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tranche_actors::EngineConfig;
use tranche_core::domain::{PolicyKind, PolicyParams, PolicyPatch, default_zone, shard_of};

use crate::config::Settings;
use crate::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::postgres::{self, customers};
use crate::prober::NetworkProber;
use crate::startup::Application;
use edge::{Behaviour, FakeEdge, TestCa};

const HOSTS: [&str; 3] = ["shop.demo.test", "api.demo.test", "www.demo.test"];
const WINDOW_SECONDS: i32 = 5;
const INTERVAL_SECONDS: i32 = 1;
const COOLDOWN_SECONDS: i32 = 5;

pub async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |msg: &str| println!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());
    println!("Tranche demo: multi-CDN storm insurance, on your machine, in about 30 seconds.\n");

    let dir = tempfile_dir()?;
    let server =
        tokio::task::block_in_place(|| EmbeddedPostgres::start(&EmbeddedOptions::throwaway(&dir)))?;
    server.ensure_database("tranche").await?;
    let pool = crate::postgres::pool::pool(server.connect_options("tranche"), 8).await?;
    crate::postgres::pool::migrate(&pool).await?;
    customers::ensure_demo(&pool).await?;
    say("started a private PostgreSQL and applied the migrations");

    let ca = TestCa::new(&["*.demo.test"])?;
    let primary = FakeEdge::https(&ca).await?;
    let backup = FakeEdge::https(&ca).await?;
    say(&format!(
        "two fake CDN edges are up: primary \"cloudflare\" at {}, backup \"fastly\" at {}",
        primary.addr(),
        backup.addr()
    ));

    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        dev: true,
        ..Settings::default()
    };
    let app = Application::build(&settings, pool.clone()).await?;
    let api = app.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    let service = postgres::services::create(
        &pool,
        customers::DEMO_CUSTOMER_ID,
        "demo-shop",
        "cloudflare",
        "fastly",
    )
    .await?;
    let policy = PolicyParams::new(
        PolicyKind::HttpAvailability,
        &PolicyPatch {
            window_seconds: Some(WINDOW_SECONDS),
            probe_interval_seconds: Some(INTERVAL_SECONDS),
            min_samples: Some(3),
            cooldown_seconds: Some(COOLDOWN_SECONDS),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    postgres::policies::create(&pool, customers::DEMO_CUSTOMER_ID, service.id, &policy).await?;
    for host in HOSTS {
        let zone = default_zone(
            &tranche_core::domain::Hostname::parse(host).map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let new = postgres::domains::NewDomain {
            hostname: host,
            primary_target: Some(primary.addr().to_string()),
            backup_target: Some(backup.addr().to_string()),
            probe_path: "/",
            probe_scheme: "https",
            expected_statuses: "200-399".into(),
            probe_timeout_ms: 800,
            shard: shard_of(&zone) as i16,
            dns_zone: Some(zone),
            verification_token: "demo",
            steering_enabled: true,
            verified: true,
        };
        postgres::domains::create(&pool, customers::DEMO_CUSTOMER_ID, service.id, &new).await?;
    }
    say(&format!(
        "service \"demo-shop\" protects {} (policy: availability < 90% over {WINDOW_SECONDS}s, probes every {INTERVAL_SECONDS}s, cooldown {COOLDOWN_SECONDS}s)",
        HOSTS.join(", ")
    ));
    say(&format!(
        "API: http://{api}/v1/services/{}/state  (try: curl -H 'X-Customer-ID: 1' ...)",
        service.id
    ));

    let prober = NetworkProber::new(std::slice::from_ref(&ca.ca), true)?;
    let mut config = EngineConfig::new("demo-node");
    config.lease_interval = Duration::from_millis(250);
    config.flush_interval = Duration::from_millis(250);
    let dns = crate::node::DnsOptions {
        provider: Arc::new(tranche_actors::ports::NoopProvider),
        rate_per_sec: 50.0,
        burst: 50,
    };
    let engine = crate::node::start(config, pool.clone(), Arc::new(prober), Some(dns)).await?;
    say(
        "engine started: one actor per domain, probing each through BOTH CDNs (TLS, SNI = the customer hostname); DNS through the no-op provider (every change is audited in dns_changes)",
    );

    let mut narrator = Narrator::default();
    narrator
        .watch(&pool, service.id, Duration::from_secs(6), &say, |_| false)
        .await?;

    say(">>> breaking the primary CDN edge: it now answers 503 Service Unavailable");
    primary.set(Behaviour::Status(503));
    let broke = Instant::now();
    narrator
        .watch(&pool, service.id, Duration::from_secs(30), &say, |states| {
            states.values().all(|s| s == "storm")
        })
        .await?;
    say(&format!(
        "storm declared for every domain {:.1}s after the break; traffic is on the backup",
        broke.elapsed().as_secs_f64()
    ));

    narrator
        .watch(&pool, service.id, Duration::from_secs(3), &say, |_| false)
        .await?;
    say(">>> repairing the primary CDN edge");
    primary.set(Behaviour::Healthy);
    narrator
        .watch(&pool, service.id, Duration::from_secs(40), &say, |states| {
            states.values().all(|s| s == "healthy")
        })
        .await?;

    let storms: Vec<(String, f64)> = sqlx::query_as(
        "select d.hostname, extract(epoch from e.ended_at - e.started_at)::float8
           from storm_events e join service_domains d on d.id = e.domain_id
          where e.service_id = $1 order by d.hostname",
    )
    .bind(service.id)
    .fetch_all(&pool)
    .await?;
    println!();
    for (host, seconds) in storms {
        say(&format!(
            "storm on {host}: {seconds:.1}s, recorded in storm_events (the basis of the storm-time billing discount)"
        ));
    }
    bill(&pool, service.id, &say).await?;
    say("done; stopping everything");

    engine.shutdown().await;
    let _ = stop_tx.send(());
    let _ = server_task.await;
    pool.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Records the traffic of the demo's minutes as one usage snapshot and runs the invoicing now:
/// the draft invoice shows the backup's bytes during the storm discounted.
async fn bill(pool: &sqlx::PgPool, service_id: i64, say: &impl Fn(&str)) -> anyhow::Result<()> {
    use chrono::{TimeDelta, Utc};
    use rust_decimal::Decimal;
    const GB: i64 = 1 << 30;
    let first: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("select min(started_at) from storm_events where service_id = $1")
            .bind(service_id)
            .fetch_one(pool)
            .await?;
    let now = Utc::now();
    let start = first.unwrap_or(now) - TimeDelta::seconds(10);
    let report = tranche_core::usage::UsageReport {
        service_id,
        customer_id: customers::DEMO_CUSTOMER_ID,
        window_start: start,
        window_end: now,
        primary_bytes: 40 * GB,
        backup_bytes: 10 * GB,
        source: "demo".into(),
    };
    postgres::usage::record(pool, &[report]).await?;
    say(&format!(
        "usage recorded for the last {}s: 40 GB through the primary, 10 GB through the backup",
        (now - start).num_seconds()
    ));
    let settings = tranche_core::billing::BillingSettings {
        settle: Duration::ZERO,
        ..Default::default()
    };
    postgres::billing::PgBillingStore::new(pool.clone())
        .run_on_demand(
            customers::DEMO_CUSTOMER_ID,
            now,
            &settings,
            "demo-node",
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let invoice = postgres::invoices::list(
        pool,
        customers::DEMO_CUSTOMER_ID,
        &postgres::invoices::InvoiceFilter {
            status: Some("draft".into()),
            before: None,
            limit: 1,
        },
    )
    .await?
    .into_iter()
    .next()
    .context("the billing run made no invoice")?;
    use crate::wording::dollars;
    for line in postgres::invoices::lines(pool, invoice.id).await? {
        say(&format!(
            "invoice line: primary {} + backup {} at {}¢/GB = {}; the storm covered {}% of the window, so {}% of the backup charge is refunded: −{}",
            dollars(line.primary_charge_cents),
            dollars(line.backup_charge_cents),
            line.rate_cents_per_gb.normalize(),
            dollars(line.subtotal_cents),
            (line.coverage * Decimal::ONE_HUNDRED)
                .round_dp(1)
                .normalize(),
            (line.coverage * line.discount_rate * Decimal::ONE_HUNDRED)
                .round_dp(1)
                .normalize(),
            dollars(line.discount_cents),
        ));
    }
    say(&format!(
        "draft invoice for {} – {}: subtotal {}, storm discount −{}, total {} (GET /v1/invoices/{})",
        invoice.period_start.format("%Y-%m-%d %H:%M"),
        invoice.period_end.format("%Y-%m-%d %H:%M UTC"),
        dollars(invoice.subtotal_cents),
        dollars(invoice.discount_cents),
        dollars(invoice.total_cents),
        invoice.id
    ));
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tranche-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// One domain as the narrator reads it.
#[derive(sqlx::FromRow)]
struct NarratedRow {
    hostname: String,
    state: String,
    weight: i16,
    primary_outcome: Option<String>,
    primary_status: Option<String>,
    primary_avail: Option<String>,
    backup_outcome: Option<String>,
    backup_status: Option<String>,
}

/// Prints what changed since the last look: states, weights, probe outcomes through both CDNs,
/// DNS changes, and why nothing happens while a storm cools down.
#[derive(Default)]
struct Narrator {
    last: HashMap<String, (String, i16, Option<String>, Option<String>)>,
    dns_seen: std::collections::HashSet<uuid::Uuid>,
    cooldown_told: bool,
}

impl Narrator {
    async fn watch(
        &mut self,
        pool: &sqlx::PgPool,
        service_id: i64,
        duration: Duration,
        say: &impl Fn(&str),
        done: impl Fn(&HashMap<String, String>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            let rows: Vec<NarratedRow> = sqlx::query_as(
                "select d.hostname, coalesce(st.state, 'healthy') as state,
                        coalesce(st.desired_primary_weight, 100::smallint) as weight,
                        o.primary_last->>'outcome' as primary_outcome,
                        o.primary_last->>'status' as primary_status,
                        o.primary_avail::text as primary_avail,
                        o.backup_last->>'outcome' as backup_outcome,
                        o.backup_last->>'status' as backup_status
                   from service_domains d
                   left join domain_states st on st.domain_id = d.id
                   left join domain_observations o on o.domain_id = d.id
                  where d.service_id = $1 and d.deleted_at is null order by d.hostname",
            )
            .bind(service_id)
            .fetch_all(pool)
            .await?;
            let mut states = HashMap::new();
            for r in rows {
                let host = r.hostname.clone();
                let entry = (
                    r.state.clone(),
                    r.weight,
                    r.primary_outcome.clone(),
                    r.backup_outcome.clone(),
                );
                if self.last.get(&host) != Some(&entry) {
                    let previous = self.last.get(&host).cloned();
                    if previous.as_ref().map(|p| &p.2) != Some(&r.primary_outcome)
                        && let Some(o) = &r.primary_outcome
                    {
                        let avail = r
                            .primary_avail
                            .as_deref()
                            .and_then(|a| a.parse::<f64>().ok());
                        let avail = avail
                            .map(|a| format!("{:.0}%", a * 100.0))
                            .unwrap_or_else(|| "not enough samples yet".into());
                        say(&format!(
                            "  {host}: the primary answers {}, availability over the window {avail}",
                            crate::wording::outcome(
                                o,
                                r.primary_status.as_deref().and_then(|s| s.parse().ok())
                            )
                        ));
                    }
                    if previous.as_ref().map(|p| &p.3) != Some(&r.backup_outcome)
                        && let Some(o) = &r.backup_outcome
                    {
                        say(&format!(
                            "  {host}: the backup answers {} (traffic only moves to a healthy backup)",
                            crate::wording::outcome(
                                o,
                                r.backup_status.as_deref().and_then(|s| s.parse().ok())
                            )
                        ));
                    }
                    if previous.as_ref().map(|p| (&p.0, p.1)) != Some((&r.state, r.weight))
                        && previous.is_some()
                    {
                        say(&format!(
                            "  {host}: state {}, DNS weights primary/backup = {}/{}",
                            r.state,
                            r.weight,
                            100 - r.weight
                        ));
                    }
                    if r.state == "storm"
                        && r.primary_outcome.as_deref() == Some("ok")
                        && !self.cooldown_told
                    {
                        self.cooldown_told = true;
                        say(&format!(
                            "  the primary answers again, but traffic stays on the backup: Tranche waits out the {COOLDOWN_SECONDS}s cooldown of good probes before ramping back (no flapping)"
                        ));
                    }
                    self.last.insert(host.clone(), entry);
                }
                states.insert(host, r.state);
            }
            self.narrate_dns(pool, say).await?;
            if !states.is_empty() && done(&states) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// New rows of the DNS audit log.
    async fn narrate_dns(
        &mut self,
        pool: &sqlx::PgPool,
        say: &impl Fn(&str),
    ) -> anyhow::Result<()> {
        let changes: Vec<(uuid::Uuid, String, String, serde_json::Value)> = sqlx::query_as(
            "select id, zone, status, changes from dns_changes
              where status <> 'submitted' order by submitted_at",
        )
        .fetch_all(pool)
        .await?;
        for (id, zone, status, records) in changes {
            if !self.dns_seen.insert(id) {
                continue;
            }
            say(&format!(
                "  DNS change in zone {zone}, one batch, {status}: {}",
                crate::wording::change_records(&records)
            ));
        }
        Ok(())
    }
}
