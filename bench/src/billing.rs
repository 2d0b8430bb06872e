//! `tranche bench billing` and `tranche bench ingest`: invoicing and usage ingestion at scale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use sqlx::PgPool;
use tranche_core::billing::BillingSettings;
use tranche_core::domain::shard_of;
use tranche_core::usage::UsageSettings;

use super::{Env, own_cpu, rss_kib};
use tranche::cloudflare::CloudflareSource;
use tranche::cloudflare::fake::{FakeCloudflare, Row};
use tranche::config::Secret;
use tranche::node::{EngineOptions, RunningEngine, UsageOptions};
use tranche::postgres::customers::DEMO_CUSTOMER_ID;

/// Peak resident set of this process, KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn start_node(env: &Env, options: EngineOptions) -> anyhow::Result<RunningEngine> {
    let prober = Arc::new(env.prober()?);
    tranche::node::start_with(
        super::engine_config("bench-billing"),
        env.pool.clone(),
        prober,
        options,
    )
    .await
}

async fn scalar(pool: &PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Invoice run over `snapshots` snapshots of `customers` customers (one service each), with
/// storms on `storm_percent` % of the services.
pub async fn billing(
    env: &Env,
    customers: usize,
    snapshots: usize,
    storm_percent: usize,
) -> anyhow::Result<()> {
    let per_service = (snapshots / customers).max(1) as i32;
    println!(
        "seeding {customers} customers, {} snapshots ({per_service} hourly windows each), storms on {storm_percent}% of services",
        per_service as usize * customers
    );
    let seeded = Instant::now();
    let pool = &env.pool;
    sqlx::query("insert into customers (name) select 'bench-' || i from generate_series(1, $1) i")
        .bind(customers as i32)
        .execute(pool)
        .await?;
    sqlx::query(
        "insert into services (customer_id, name, primary_cdn, backup_cdn)
         select id, 'site', 'cloudflare', 'fastly' from customers where name like 'bench-%'",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into storm_policies (service_id, max_coverage_factor)
         select id, 1.5 from services where id % 100 < $1",
    )
    .bind(storm_percent as i64)
    .execute(pool)
    .await?;
    // Three storms per stormy service: two overlapping, one still open.
    sqlx::query(
        "insert into storm_events (service_id, kind, started_at, ended_at)
         select s.id, 'http_availability', t.a, t.b
           from services s,
                (values ('2026-11-01T03:10:00Z'::timestamptz, '2026-11-01T05:20:00Z'::timestamptz),
                        ('2026-11-01T04:00:00Z', '2026-11-01T06:45:30Z'),
                        ('2026-11-03T22:00:00Z', null)) t(a, b)
          where s.id % 100 < $1 and s.customer_id <> $2",
    )
    .bind(storm_percent as i64)
    .bind(DEMO_CUSTOMER_ID)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into usage_snapshots (service_id, customer_id, window_start, window_end,
                                      primary_bytes, backup_bytes, source)
         select s.id, s.customer_id,
                '2026-11-01T00:00:00Z'::timestamptz + make_interval(hours => h),
                '2026-11-01T01:00:00Z'::timestamptz + make_interval(hours => h),
                (s.id * 7919 + h * 104729) % 50000000000,
                (s.id * 31 + h * 1299709) % 9000000000,
                'bench'
           from services s, generate_series(0, $1 - 1) h
          where s.customer_id <> $2",
    )
    .bind(per_service)
    .bind(DEMO_CUSTOMER_ID)
    .execute(pool)
    .await?;
    sqlx::query("analyze").execute(pool).await?;
    let total = scalar(pool, "select count(*) from usage_snapshots").await?;
    println!("seeded in {:.1?}", seeded.elapsed());
    env.reset_statements().await?;

    let settings = BillingSettings {
        tick: Duration::from_secs(24 * 3600),
        settle: Duration::ZERO,
        grace: Duration::from_secs(365 * 86_400),
        ..BillingSettings::default()
    };
    let node = start_node(
        env,
        EngineOptions {
            billing: Some(settings),
            ..EngineOptions::default()
        },
    )
    .await?;
    let waited = Instant::now();
    let want = customers + 1; // and the demo customer
    loop {
        let n = node.engine.billed_customers().await.len();
        if n >= want {
            break;
        }
        if waited.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("only {n} of {want} billing actors after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{want} billing actors started in {:.1?}; RSS {} MiB",
        waited.elapsed(),
        rss_kib() / 1024
    );

    let (cpu0, _) = own_cpu();
    let pg0 = env.postgres_cpu();
    let started = Instant::now();
    let run = node
        .engine
        .bill_now()
        .await
        .ok_or_else(|| anyhow::anyhow!("no billing on this node"))?
        .map_err(anyhow::Error::msg)?;
    let wall = started.elapsed();
    let (cpu1, _) = own_cpu();
    let pg1 = env.postgres_cpu();
    let unbilled = scalar(
        pool,
        "select count(*) from usage_snapshots u
          where not exists (select 1 from invoice_line_items l where l.snapshot_id = u.id)",
    )
    .await?;
    let lines = scalar(pool, "select count(*) from invoice_line_items").await?;
    let discounted = scalar(
        pool,
        "select count(*) from invoice_line_items where discount_cents > 0",
    )
    .await?;
    let invoices = scalar(pool, "select count(*) from invoices").await?;
    println!("billing run over {total} snapshots:");
    println!(
        "  wall {:.2} s, {:.0} snapshots/s, {} invoices, {lines} lines ({discounted} discounted), {unbilled} left unbilled",
        wall.as_secs_f64(),
        run.snapshots_billed as f64 / wall.as_secs_f64(),
        invoices
    );
    println!(
        "  CPU: tranche {:.1} s, postgres {:.1} s; peak RSS (tranche) {} MiB",
        cpu1 - cpu0,
        pg1 - pg0,
        peak_rss_kib() / 1024
    );
    // Sequential scans are the usual sign of a plan gone wrong under load.
    let scans: Vec<(String, i64, i64)> = sqlx::query_as(
        "select relname::text, seq_scan, seq_tup_read from pg_stat_user_tables
          where seq_tup_read > 0 order by seq_tup_read desc limit 5",
    )
    .fetch_all(pool)
    .await?;
    for (table, scans, rows) in scans {
        println!("  seq scans: {table} {scans} scans, {rows} rows read");
    }
    env.print_statements().await?;
    node.shutdown().await;
    if unbilled != 0 || lines != total {
        anyhow::bail!(
            "billing incomplete: {unbilled} unbilled, {lines} lines for {total} snapshots"
        );
    }
    Ok(())
}

/// Ingestion of one Cloudflare page of `rows` rows (one hostname per service, one hour each).
pub async fn ingest(env: &Env, rows: usize) -> anyhow::Result<()> {
    let pool = &env.pool;
    let hosts: Vec<String> = (0..rows).map(|i| format!("h{i}.ingest.test")).collect();
    let shards: Vec<i16> = hosts.iter().map(|h| shard_of(h) as i16).collect();
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into services (customer_id, name, primary_cdn, backup_cdn)
         select $1, 's' || i, 'cloudflare', 'fastly' from generate_series(1, $2) i
         returning id",
    )
    .bind(DEMO_CUSTOMER_ID)
    .bind(rows as i32)
    .fetch_all(pool)
    .await?;
    sqlx::query(
        "insert into service_domains (service_id, hostname, dns_zone, shard, verification_token)
         select s, h, h, sh, 'bench' from unnest($1::int8[], $2::text[], $3::int2[]) t(s, h, sh)",
    )
    .bind(&ids)
    .bind(&hosts)
    .bind(&shards)
    .execute(pool)
    .await?;

    let fake = FakeCloudflare::start("bench-account", "bench-token").await?;
    let now = Utc::now();
    let hour = now - TimeDelta::seconds(now.timestamp() % 3600) - TimeDelta::hours(1);
    let hour = hour - TimeDelta::nanoseconds(i64::from(hour.timestamp_subsec_nanos()));
    let data: Vec<Row> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Row {
            host: h.clone(),
            at: hour,
            bytes: 1_000_000 + i as u64,
        })
        .collect();
    fake.set_rows(data);
    let source = CloudflareSource::new(
        Some(&fake.base_url()),
        "bench-account",
        Secret::new("bench-token"),
    )?;
    let node = start_node(
        env,
        EngineOptions {
            usage: Some(UsageOptions {
                settings: UsageSettings {
                    tick: Duration::from_secs(24 * 3600),
                    first_poll: Duration::from_secs(24 * 3600),
                    hostnames_per_query: rows,
                    ..UsageSettings::default()
                },
                sources: vec![Arc::new(source)],
            }),
            ..EngineOptions::default()
        },
    )
    .await?;
    // Wait for the shards (the ingestor reads services of owned customer shards).
    let waited = Instant::now();
    while node.engine.owned_shards().await.len() < usize::from(tranche_core::domain::SHARDS) {
        if waited.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("shards not acquired");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    for label in ["first ingestion", "replay (idempotent)"] {
        let pages = fake.pages();
        let started = Instant::now();
        let summary = node
            .engine
            .ingest_usage_now()
            .await
            .ok_or_else(|| anyhow::anyhow!("no ingestion on this node"))?;
        let wall = started.elapsed();
        if !summary.failures.is_empty() {
            anyhow::bail!("ingestion failed: {:?}", summary.failures);
        }
        println!(
            "{label}: {} rows in {} page(s), {} snapshots written, {:.3} s, {:.0} rows/s",
            summary.rows,
            fake.pages() - pages,
            summary.snapshots_written,
            wall.as_secs_f64(),
            summary.rows as f64 / wall.as_secs_f64()
        );
    }
    let stored = scalar(pool, "select count(*) from usage_snapshots").await?;
    node.shutdown().await;
    if stored != rows as i64 {
        anyhow::bail!("{stored} snapshots stored for {rows} rows");
    }
    Ok(())
}
