//! `tranche bench failover` and `tranche bench nodes`: the failover path end to end with the
//! shipped defaults, and takeover of a node killed or frozen, on real processes.
//!
//! `failover`: N domains in Z zones probed through local HTTP edges with the default storm
//! policy (10 s probes, 60 s window, 3 failures in a row) and Route53 on `moto_server` at the
//! default rate limit (4 requests/s, burst 8). Once every window is full, the primary edge
//! answers 503: per domain, the time from the break to its storm committed and to its failover
//! in sync at Route53; and the ChangeResourceRecordSets calls per zone against the floor (one
//! call per zone per ChangeBatch of at most 250 domains, at most `rate` calls a second).
//!
//! `nodes`: two `tranche serve` processes of this binary on the bench's database; one is
//! killed (SIGKILL) or frozen (SIGSTOP), and the survivor's takeover is timed: every shard lock
//! held by the survivor (`pg_locks`), and every domain of the lost node observed again by it.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{CountingDns, Env, Moto, percentile};
use anyhow::Context;
use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tranche::demo::edge::Behaviour;
use tranche::postgres::{self, customers};
use tranche::route53::{DEFAULT_TTL, Route53Provider};
use tranche_core::domain::{PolicyKind, PolicyParams, shard_of};

async fn scalar(pool: &sqlx::PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Polls `sql` (a count) until it reaches `n`, failing after `timeout`.
async fn wait_count(
    pool: &sqlx::PgPool,
    sql: &'static str,
    n: i64,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let got = scalar(pool, sql).await?;
        if got >= n {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "{what}: {got} of {n} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the hosted zones `z{k}.{suffix}` in moto, and a service under `policy` with `n`
/// steered, verified domains `d{i}.z{i % zones}.{suffix}` probed over HTTP through
/// `targets` (primary, backup); returns their hostnames.
pub(super) async fn steered_domains(
    env: &Env,
    route53: &Route53Provider,
    (n, zones, suffix): (usize, usize, &str),
    policy: &PolicyParams,
    (primary, backup): (&str, &str),
) -> anyhow::Result<Vec<String>> {
    for k in 0..zones {
        route53
            .client()
            .create_hosted_zone()
            .name(format!("z{k}.{suffix}"))
            .caller_reference(format!("{suffix}-{k}"))
            .send()
            .await?;
    }
    route53.refresh_zones().await;
    let service = postgres::services::create(
        &env.pool,
        customers::DEMO_CUSTOMER_ID,
        suffix,
        "cdn-a",
        "cdn-b",
    )
    .await?;
    postgres::policies::create(&env.pool, customers::DEMO_CUSTOMER_ID, service.id, policy).await?;
    let (mut hosts, mut zone_of, mut shards) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let zone = format!("z{}.{suffix}", i % zones);
        hosts.push(format!("d{i}.{zone}"));
        shards.push(shard_of(&zone) as i16);
        zone_of.push(zone);
    }
    sqlx::query(
        "insert into service_domains (service_id, hostname, dns_zone, shard, probe_scheme,
                                      primary_target, backup_target, probe_timeout_ms,
                                      verification_token, steering_enabled, verification_status,
                                      verification_method, verified_at)
         select $1, h, z, s, 'http', $5, $6, 2000, 'bench', true, 'verified', 'dev', now()
           from unnest($2::text[], $3::text[], $4::smallint[]) as t(h, z, s)",
    )
    .bind(service.id)
    .bind(&hosts)
    .bind(&zone_of)
    .bind(&shards)
    .bind(primary)
    .bind(backup)
    .execute(&env.pool)
    .await?;
    Ok(hosts)
}

fn summary(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{name}_p50_s={:.1} {name}_p99_s={:.1} {name}_max_s={:.1}",
        percentile(&ms, 50.0) / 1000.0,
        percentile(&ms, 99.0) / 1000.0,
        ms.last().copied().unwrap_or(f64::NAN) / 1000.0
    )
}

pub async fn failover(
    env: &Env,
    n: usize,
    zones: usize,
    rate: f64,
    burst: u32,
) -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let route53 = Arc::new(Route53Provider::for_endpoint(&moto.url, DEFAULT_TTL));
    let policy = PolicyParams::defaults(PolicyKind::HttpAvailability);
    let (primary, backup) = (
        env.http.addr().to_string(),
        env.backup_http.addr().to_string(),
    );
    steered_domains(
        env,
        &route53,
        (n, zones, "failover.test"),
        &policy,
        (&primary, &backup),
    )
    .await?;
    let calls = Arc::new(CountingDns {
        inner: route53.clone(),
        calls: AtomicU64::new(0),
    });
    let engine = tranche::node::start(
        super::engine_config("bench-node"),
        env.pool.clone(),
        Arc::new(env.prober()?),
        Some(tranche::node::DnsOptions {
            provider: calls.clone(),
            rate_per_sec: rate,
            burst,
        }),
    )
    .await?;
    let timeout = Duration::from_secs(900);
    let initial = wait_count(
        &env.pool,
        "select count(*) from dns_records where applied_primary_weight = 100",
        n as i64,
        timeout,
        "initial records",
    )
    .await?;
    println!(
        "initial records of {n} domains in {zones} zones applied in {:.1}s",
        initial.as_secs_f64()
    );
    // Every primary window known and healthy (the observations are flushed every 2 s).
    wait_count(
        &env.pool,
        "select count(*) from domain_observations where primary_avail = 1 and backup_avail = 1",
        n as i64,
        timeout,
        "windows full",
    )
    .await?;
    // Let the limiter refill.
    tokio::time::sleep(Duration::from_secs_f64(
        (f64::from(burst) / rate).clamp(1.0, 60.0),
    ))
    .await;

    calls.calls.store(0, Ordering::Relaxed);
    let broke: DateTime<Utc> = Utc::now();
    env.http.set(Behaviour::Status(503));
    wait_count(
        &env.pool,
        "select count(*) from storm_events where ended_at is null",
        n as i64,
        timeout,
        "storms",
    )
    .await?;
    wait_count(
        &env.pool,
        "select count(*) from dns_records r join dns_changes c on c.id = r.last_change_id
          where r.applied_primary_weight = 0 and c.status = 'insync'",
        n as i64,
        timeout,
        "failovers in sync",
    )
    .await?;
    let calls_made = calls.calls.load(Ordering::Relaxed);
    let storms: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from created_at - $1)::float8 * 1000 from storm_events",
    )
    .bind(broke)
    .fetch_all(&env.pool)
    .await?;
    let in_sync: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from min(c.insync_at) - $1)::float8 * 1000
           from dns_changes c, unnest(c.domain_ids) as d(id)
          where c.submitted_at > $1 and c.status = 'insync'
          group by d.id",
    )
    .bind(broke)
    .fetch_all(&env.pool)
    .await?;
    let (first_storm, last_submitted): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "select (select min(created_at) from storm_events),
                (select max(submitted_at) from dns_changes where submitted_at > $1)",
    )
    .bind(broke)
    .fetch_one(&env.pool)
    .await?;
    engine.shutdown().await;
    let per_zone = n.div_ceil(zones);
    let min_calls = zones * per_zone.div_ceil(250);
    // The floor: one call per zone, the first `burst` at once, then `rate` a second.
    let floor_s = (min_calls.saturating_sub(burst as usize)) as f64 / rate;
    let sending_s = (last_submitted - first_storm).num_milliseconds() as f64 / 1000.0;
    println!(
        "RESULT failover domains={n} zones={zones} rate={rate}/s burst={burst} policy=interval {}s window {}s consecutive_failures {} {} {}",
        policy.probe_interval_seconds,
        policy.window_seconds,
        policy.consecutive_failures,
        summary("fault_to_storm", storms),
        summary("fault_to_insync", in_sync),
    );
    println!(
        "RESULT failover_calls calls={calls_made} calls_per_zone={:.2} min_calls={min_calls} ratio={:.2} first_storm_to_all_submitted_s={sending_s:.1} floor_s={floor_s:.1} ratio_to_floor={:.2}",
        calls_made as f64 / zones as f64,
        calls_made as f64 / min_calls as f64,
        sending_s / floor_s.max(1e-9),
    );
    drop(moto);
    Ok(())
}

/// A `tranche serve` child process of this binary.
pub(super) struct NodeProcess {
    pub(super) id: String,
    child: Child,
    port: u16,
}

impl NodeProcess {
    fn start(env: &Env, id: &str) -> anyhow::Result<Self> {
        Self::start_with(env, id, &[])
    }

    /// A node with `extra` environment on top of the bench's.
    pub(super) fn start_with(env: &Env, id: &str, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let o = env.pool.connect_options();
        let url = format!(
            "postgres://{}@localhost:{}/{}?host={}",
            o.get_username(),
            o.get_port(),
            o.get_database().context("database name")?,
            o.get_socket().context("socket")?.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(env.dir.join(format!("{id}.log")))?;
        let child = Command::new(tranche_binary()?)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--node-id", id])
            .env("DATABASE_URL", url)
            .env("TRANCHE_PROBE_ALLOW_PRIVATE", "true")
            .env("TRANCHE_DNS_PROVIDER", "noop")
            .env("TRANCHE_BILLING", "false")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Self {
            id: id.to_owned(),
            child,
            port,
        })
    }

    /// The node's API.
    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Process id (for its CPU time in `/proc`).
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), signal)?;
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shards whose lock each node's lease session holds now.
async fn shards_held(pool: &sqlx::PgPool, node: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(concat!(
        "with owners as (",
        tranche::OWNERS_SQL!(),
        ") select count(*) from owners w join cluster_nodes n on n.backend_pid = w.pid
           where n.node_id = $1"
    ))
    .bind(node)
    .fetch_one(pool)
    .await?)
}

pub async fn nodes(env: &Env, n: usize, interval: i32, freeze: bool) -> anyhow::Result<()> {
    // Plain HTTP edges: the child processes need no CA of the bench's.
    env.domains_with(n, interval, interval * 6, true, "http")
        .await?;
    let a = NodeProcess::start(env, "node-a")?;
    let b = NodeProcess::start(env, "node-b")?;
    let settle = Instant::now();
    loop {
        let (sa, sb) = (
            shards_held(&env.pool, &a.id).await?,
            shards_held(&env.pool, &b.id).await?,
        );
        let observed_by_both: i64 = scalar(
            &env.pool,
            "select count(distinct node_id) from domain_observations where observed_at > now() - interval '3 seconds'",
        )
        .await?;
        if sa + sb == 256 && sa > 0 && sb > 0 && observed_by_both == 2 {
            break;
        }
        anyhow::ensure!(
            settle.elapsed() < Duration::from_secs(120),
            "nodes did not settle: {sa} + {sb} shards"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost: i64 =
        sqlx::query_scalar("select count(*) from domain_observations where node_id = $1")
            .bind(&b.id)
            .fetch_one(&env.pool)
            .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at: DateTime<Utc> = Utc::now();
    let started = Instant::now();
    b.signal(if freeze {
        Signal::SIGSTOP
    } else {
        Signal::SIGKILL
    })?;
    let mut shards_s = None;
    let observed_s = loop {
        if shards_s.is_none() && shards_held(&env.pool, &a.id).await? == 256 {
            shards_s = Some(started.elapsed().as_secs_f64());
        }
        let still: i64 = sqlx::query_scalar(
            "select count(*) from domain_observations where node_id <> $1 or observed_at <= $2",
        )
        .bind(&a.id)
        .bind(at)
        .fetch_one(&env.pool)
        .await?;
        if still == 0 && shards_s.is_some() {
            break started.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "no takeover after 120 s ({still} domains not observed by the survivor)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "RESULT takeover_{} domains={n} of_which_on_lost_node={lost} interval={interval}s deadline_s={} all_shards_held_by_survivor_s={:.2} all_domains_observed_again_s={observed_s:.2}",
        if freeze { "freeze" } else { "kill9" },
        tranche_actors::config::LEASE_DEADLINE.as_secs(),
        shards_s.unwrap_or(f64::NAN),
    );
    drop((a, b));
    Ok(())
}

/// The `tranche` binary the node processes run: `TRANCHE_BIN`, or the one built beside this
/// bench (`target/<profile>/tranche`).
fn tranche_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("TRANCHE_BIN") {
        return Ok(path.into());
    }
    let beside = std::env::current_exe()?.with_file_name("tranche");
    anyhow::ensure!(
        beside.exists(),
        "no tranche binary at {} (build it with `cargo build --release --bin tranche`, or set TRANCHE_BIN)",
        beside.display()
    );
    Ok(beside)
}
