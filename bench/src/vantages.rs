//! `tranche-bench vantages`: what probing from several vantages costs, and what it does to
//! detection.
//!
//! `--regions V` starts V `tranche serve` processes of this build (or `--nodes`, spread over the
//! V regions), each in its own region, on
//! the bench's database (V = 1: the single-vantage baseline), with N domains probed over HTTP
//! through the bench's local edges. Once every domain is probed (and, with V > 1, every decider
//! hears V vantages), it measures a steady-state window: probes per second at the edges (and
//! per domain and CDN per interval), the nodes' CPU, and what PostgreSQL does — transactions,
//! rows written and WAL bytes per second. Then the primary edge answers 503 for everyone and it
//! times every domain's storm from the break.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tranche::demo::edge::Behaviour;

use super::failover::NodeProcess;
use super::{Env, percentile};

/// PostgreSQL's cumulative counters for the bench database.
#[derive(Debug, Clone)]
struct PgCounters {
    commits: i64,
    rows_written: i64,
    wal_bytes: i64,
    /// Rows written per table.
    tables: std::collections::BTreeMap<String, i64>,
}

async fn pg_counters(env: &Env) -> anyhow::Result<PgCounters> {
    // Statistics are reported when a backend's transaction ends (and at most every
    // `stats_fetch_consistency` snapshot): clear our snapshot so each read is current.
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&env.pool)
        .await?;
    let (commits, rows_written, wal_bytes): (i64, i64, i64) = sqlx::query_as(
        "select xact_commit, tup_inserted + tup_updated + tup_deleted,
                pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8
           from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&env.pool)
    .await?;
    let tables: Vec<(String, i64)> = sqlx::query_as(
        "select relname::text, n_tup_ins + n_tup_upd + n_tup_del from pg_stat_user_tables",
    )
    .fetch_all(&env.pool)
    .await?;
    Ok(PgCounters {
        commits,
        rows_written,
        wal_bytes,
        tables: tables.into_iter().collect(),
    })
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

pub async fn vantages(
    env: &Env,
    n: usize,
    nodes: usize,
    regions: usize,
    interval: i32,
    seconds: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=8).contains(&regions) && (regions..=8).contains(&nodes),
        "--regions must be 1 to 8 and --nodes between it and 8"
    );
    env.domains_with(n, interval, interval * 6, true, "http")
        .await?;
    // Node i is in region i mod `regions`; every domain is probed from every region.
    let per_domain = regions.to_string();
    let node_count = nodes;
    let nodes: Vec<NodeProcess> = (0..nodes)
        .map(|i| {
            let region = format!("region-{}", i % regions);
            NodeProcess::start_with(
                env,
                &format!("node-{i}"),
                &[
                    ("TRANCHE_REGION", region.as_str()),
                    ("TRANCHE_VANTAGES_PER_DOMAIN", per_domain.as_str()),
                ],
            )
        })
        .collect::<anyhow::Result<_>>()?;

    // Settled: every domain probed lately by its decider and, with several regions, every
    // decider hearing every vantage with a known window.
    let settle = Instant::now();
    loop {
        let observed: i64 = sqlx::query_scalar(
            "select count(*) from domain_observations where observed_at > now() - make_interval(secs => $1)",
        )
        .bind(f64::from(interval * 2))
        .fetch_one(&env.pool)
        .await?;
        let heard: i64 = if regions > 1 {
            sqlx::query_scalar(
                "select count(*) from domain_observations where jsonb_array_length(vantages) = $1
                    and not exists (select 1 from jsonb_array_elements(vantages) v
                                     where v->>'primary_availability' is null)",
            )
            .bind(regions as i32)
            .fetch_one(&env.pool)
            .await?
        } else {
            n as i64
        };
        if observed as usize >= n && heard as usize >= n {
            break;
        }
        anyhow::ensure!(
            settle.elapsed() < Duration::from_secs(300),
            "not settled after 300 s: {observed} of {n} domains observed, {heard} hear {regions} vantages"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled_s = settle.elapsed().as_secs_f64();
    // One more interval so observers' first reports are behind us.
    tokio::time::sleep(Duration::from_secs(interval as u64)).await;

    let probes = || env.http.requests() + env.backup_http.requests();
    let cpu = || nodes.iter().map(|n| cpu_seconds(n.pid())).sum::<f64>();
    let (p0, c0, pg0, t0) = (probes(), cpu(), pg_counters(env).await?, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (p1, c1, pg1, elapsed) = (
        probes(),
        cpu(),
        pg_counters(env).await?,
        t0.elapsed().as_secs_f64(),
    );
    let probes_per_s = (p1 - p0) as f64 / elapsed;
    let per_domain_cdn_interval = probes_per_s * f64::from(interval) / (2.0 * n as f64);
    let mut by_table: Vec<(String, f64)> = pg1
        .tables
        .iter()
        .map(|(t, rows)| {
            let before = pg0.tables.get(t).copied().unwrap_or(0);
            (t.clone(), (rows - before) as f64 / elapsed)
        })
        .filter(|(_, r)| *r >= 0.5)
        .collect();
    by_table.sort_by(|a, b| b.1.total_cmp(&a.1));
    let by_table: Vec<String> = by_table
        .iter()
        .map(|(t, r)| format!("{t}:{r:.0}"))
        .collect();
    println!(
        "RESULT vantages_cost nodes={node_count} regions={regions} domains={n} interval={interval}s settled_s={settled_s:.0} probes_per_s={probes_per_s:.0} probes_per_domain_per_cdn_per_interval={per_domain_cdn_interval:.2} node_cpu_percent={:.0} pg_commits_per_s={:.0} pg_rows_written_per_s={:.0} pg_wal_kb_per_s={:.1}",
        (c1 - c0) / elapsed * 100.0,
        (pg1.commits - pg0.commits) as f64 / elapsed,
        (pg1.rows_written - pg0.rows_written) as f64 / elapsed,
        (pg1.wal_bytes - pg0.wal_bytes) as f64 / elapsed / 1024.0,
    );
    println!("  rows written per second by table: {}", by_table.join(" "));

    // The CDN breaks for every vantage.
    let broke: DateTime<Utc> = Utc::now();
    env.http.set(Behaviour::Status(503));
    // Reported rather than failed when not every storm opens in time (an overloaded machine):
    // how many did, and the states of the rest.
    let deadline = Instant::now() + Duration::from_secs(interval as u64 * 12 + 60);
    let opened = loop {
        let open: i64 =
            sqlx::query_scalar("select count(*) from storm_events where ended_at is null")
                .fetch_one(&env.pool)
                .await?;
        if open as usize >= n || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let states: Vec<(String, i64)> = sqlx::query_as(
        "select coalesce(st.state, 'healthy'), count(*) from service_domains d
           left join domain_states st on st.domain_id = d.id group by 1 order by 1",
    )
    .fetch_all(&env.pool)
    .await?;
    let mut latencies: Vec<f64> = sqlx::query_scalar::<_, f64>(
        "select extract(epoch from started_at - $1)::float8 * 1000 from storm_events",
    )
    .bind(broke)
    .fetch_all(&env.pool)
    .await?;
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "RESULT vantages_detection nodes={node_count} regions={regions} domains={n} interval={interval}s storms={opened} p50_s={:.1} p99_s={:.1} max_s={:.1} states={states:?}",
        percentile(&latencies, 50.0) / 1000.0,
        percentile(&latencies, 99.0) / 1000.0,
        latencies.last().copied().unwrap_or(f64::NAN) / 1000.0,
    );
    drop(nodes);
    Ok(())
}
