//! `tranche demo`: a self-contained storm on local fake CDN edges, narrated on the terminal.
//!
//! It starts a throwaway embedded PostgreSQL, two HTTPS edges standing in for the primary and
//! backup CDNs ([`edge`]), the API and the engine (fast timings), creates a service with three
//! domains, then breaks the primary edge and narrates what the engine does: failing probes, the
//! storm, the DNS weights moving to the backup, the recovery and the ramp back. About half a
//! minute, then everything is stopped and removed.

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
            steering_enabled: false,
            verified: false,
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
    let engine = crate::node::start(config, pool.clone(), Arc::new(prober), None).await?;
    say(
        "engine started: one actor per domain, probing each through BOTH CDNs (TLS, SNI = the customer hostname)",
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
    say("done; stopping everything");

    engine.shutdown().await;
    let _ = stop_tx.send(());
    let _ = server_task.await;
    pool.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tranche-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Hostname, state, primary weight, last primary outcome, primary availability.
type NarratedRow = (String, String, i16, Option<String>, Option<String>);

/// Prints what changed since the last look: states, weights, probe outcomes.
#[derive(Default)]
struct Narrator {
    last: HashMap<String, (String, i16, Option<String>)>,
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
                "select d.hostname, coalesce(st.state, 'healthy'), coalesce(st.desired_primary_weight, 100::smallint),
                        o.primary_last->>'outcome', o.primary_avail::text
                   from service_domains d
                   left join domain_states st on st.domain_id = d.id
                   left join domain_observations o on o.domain_id = d.id
                  where d.service_id = $1 and d.deleted_at is null order by d.hostname",
            )
            .bind(service_id)
            .fetch_all(pool)
            .await?;
            let mut states = HashMap::new();
            for (host, state, weight, outcome, avail) in rows {
                let entry = (state.clone(), weight, outcome.clone());
                if self.last.get(&host) != Some(&entry) {
                    let previous = self.last.get(&host);
                    if previous.map(|p| &p.2) != Some(&outcome)
                        && let Some(o) = &outcome
                    {
                        let avail = avail.as_deref().and_then(|a| a.parse::<f64>().ok());
                        let avail = avail
                            .map(|a| format!("{:.0}%", a * 100.0))
                            .unwrap_or_else(|| "not enough samples yet".into());
                        say(&format!(
                            "  {host}: primary probe {o}, primary availability {avail}"
                        ));
                    }
                    if previous.map(|p| (&p.0, p.1)) != Some((&state, weight)) && previous.is_some()
                    {
                        say(&format!(
                            "  {host}: state {state}, DNS weights primary/backup = {weight}/{}",
                            100 - weight
                        ));
                    }
                    self.last.insert(host.clone(), entry);
                }
                states.insert(host, state);
            }
            if !states.is_empty() && done(&states) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }
}
