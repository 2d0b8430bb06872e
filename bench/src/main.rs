//! `tranche-bench …`: the benchmarks recorded in BENCHMARKS.md, kept out of the product binary.
//!
//! Run from the workspace root: `cargo build --release --bin tranche --bin tranche-bench`, then
//! `./target/release/tranche-bench <mode> …` (`--help` lists the modes and their options).
//!
//! Each mode starts a throwaway embedded PostgreSQL and local fake CDN edges (on their own
//! runtime threads, named `bench-edge`, so their CPU is accounted separately from Tranche's),
//! creates domains in bulk, starts the real engine and measures:
//!
//! * `probes`    — sustained probes/s, CPU-seconds per 1,000 probes, RSS, at N domains × 2 CDNs;
//! * `idle`      — RSS per idle domain actor (domains without probe targets);
//! * `detection` — time from breaking the primary edge to each domain's storm being committed;
//! * `takeover`  — time from killing a node to all its domains probed again by the survivor;
//! * `dns`       — a mass storm applied through Route53 (moto_server);
//! * `failover`  — the whole path with the default policy and rate limit: break → storm →
//!   in sync at Route53 per domain, calls per zone against the floor ([`failover`]);
//! * `nodes`     — takeover of a node process killed (SIGKILL) or frozen (SIGSTOP) ([`failover`]);
//! * `billing`   — one invoice run over N snapshots of M customers ([`billing`]);
//! * `ingest`    — ingestion of one Cloudflare analytics page from the local fake ([`billing`]);
//! * `webhooks`  — webhook fan-out of a mass storm to a local receiver, with probing and DNS
//!   latencies measured in the same run ([`webhooks`]);
//! * `metering`  — usage-event ingestion by a `tranche serve` process under a ramp, spike or
//!   soak, batched or single, with loss accounting and optionally a SIGKILL ([`metering`]);
//! * `slos`      — live SLO tracking: N SLOs × M jobs over a compressed day of job reports —
//!   trackers ready, reports/s accepted, expected end → `slo.late` ([`slos`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use sqlx::PgPool;
use tranche_actors::EngineConfig;
use tranche_actors::ports::Prober;
use tranche_core::domain::{PolicyKind, PolicyParams, PolicyPatch, shard_of};
use tranche_core::probe::{ProbeRequest, ProbeResult};

use tranche::demo::edge::{Behaviour, FakeEdge, TestCa};
use tranche::node::RunningEngine;
use tranche::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tranche::postgres::{self, customers};
use tranche::prober::{NetworkProber, TlsOptions};

mod billing;
mod failover;
mod metering;
mod slos;
mod vantages;
mod webhooks;

/// Tranche's benchmarks (see BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(name = "tranche-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The benches narrate on stdout; keep the logs to warnings unless asked.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: single-threaded here, before the runtime and any other thread start.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    tranche::telemetry::init(tranche::config::LogFormat::Text, "bench");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tranche-bench: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tranche-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One invoice run over N snapshots for M customers (storms on a share of services).
    Billing {
        #[arg(long, default_value_t = 10_000)]
        customers: usize,
        #[arg(long, default_value_t = 1_000_000)]
        snapshots: usize,
        /// Percentage of services with storms (and a coverage policy).
        #[arg(long, default_value_t = 10)]
        storm_percent: usize,
        /// Also print where PostgreSQL spent the run (pg_stat_statements, nested included).
        #[arg(long)]
        statements: bool,
        /// A PostgreSQL server setting for the run's cluster, `name=value` (repeatable), e.g.
        /// `--pg-setting shared_buffers=2GB`.
        #[arg(long = "pg-setting")]
        pg_settings: Vec<String>,
    },
    /// Webhook fan-out: N domains of M customers enter storm at once, while live domains are
    /// probed and failed over through Route53 (moto_server).
    Webhooks {
        #[arg(long, default_value_t = 1_000)]
        customers: usize,
        #[arg(long, default_value_t = 10_000)]
        domains: usize,
        /// Live domains per phase, probed every second and steered.
        #[arg(long, default_value_t = 200)]
        live: usize,
    },
    /// Ingestion of one Cloudflare analytics page of N rows from the local fake.
    Ingest {
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
    },
    /// Sustained probing: N domains × 2 CDNs, half over HTTP and half over HTTPS.
    Probes {
        #[arg(long, default_value_t = 10_000)]
        domains: usize,
        /// Probe interval, seconds.
        #[arg(long, default_value_t = 5)]
        interval: i32,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 15)]
        warmup: u64,
        /// `mixed` (half HTTP, half HTTPS), `http` or `https`.
        #[arg(long, default_value = "mixed")]
        scheme: String,
        #[command(flatten)]
        external: External,
    },
    /// Memory of idle domain actors.
    Idle {
        #[arg(long, default_value_t = 100_000)]
        domains: usize,
        /// Measure the actor runtime's own floor instead: as many ractor actors with no state
        /// beyond a counter and no timer (an idle domain's pending probe tick is an entry in the
        /// node's tick wheel, not a timer of its own).
        #[arg(long)]
        floor: bool,
    },
    /// Storm detection latency after the primary edge breaks.
    Detection {
        #[arg(long, default_value_t = 1_000)]
        domains: usize,
        #[arg(long, default_value_t = 2)]
        interval: i32,
        #[arg(long, default_value_t = 10)]
        window: i32,
    },
    /// Mass storm through DNS: N domains in Z zones enter storm at once; Route53 on moto_server.
    Dns {
        #[arg(long, default_value_t = 10_000)]
        domains: usize,
        #[arg(long, default_value_t = 100)]
        zones: usize,
        /// Provider requests per second (default: the product default).
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
        /// Provider burst (default: the product default).
        #[arg(long, default_value_t = 8)]
        burst: u32,
        /// Domains applied one call each for the naive baseline.
        #[arg(long, default_value_t = 300)]
        naive: usize,
    },
    /// The failover path with the shipped defaults: N domains in Z zones probed every 10 s,
    /// the primary breaks; storm and Route53 (moto_server) in-sync latency per domain, calls
    /// per zone against the floor.
    Failover {
        #[arg(long, default_value_t = 10_000)]
        domains: usize,
        #[arg(long, default_value_t = 100)]
        zones: usize,
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
        #[arg(long, default_value_t = 8)]
        burst: u32,
    },
    /// Takeover between two `tranche serve` processes when one is killed (SIGKILL) or frozen
    /// (`--freeze`: SIGSTOP).
    Nodes {
        #[arg(long, default_value_t = 1_000)]
        domains: usize,
        #[arg(long, default_value_t = 5)]
        interval: i32,
        #[arg(long)]
        freeze: bool,
    },
    /// Probing from several regions: V `tranche serve` processes in V regions (1: the
    /// baseline); steady-state probes, CPU and PostgreSQL writes, then detection after the
    /// primary breaks for everyone.
    Vantages {
        #[arg(long, default_value_t = 10_000)]
        domains: usize,
        #[arg(long, default_value_t = 3)]
        regions: usize,
        /// Node processes (default: one per region), spread over the regions.
        #[arg(long)]
        nodes: Option<usize>,
        #[arg(long, default_value_t = 10)]
        interval: i32,
        /// Measured steady-state seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Usage-event ingestion: a `tranche serve` process (release binary) on its own
    /// PostgreSQL, this process generating the load; loss counted against the database.
    Metering {
        #[arg(long, value_enum, default_value = "soak")]
        profile: metering::Profile,
        /// Requests per second at 100 % of the profile.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Events per request: 1 sends single events, more a batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Concurrent requests in flight at most.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// SIGKILL the node this many seconds in, and start another at once.
        #[arg(long)]
        kill_at: Option<u64>,
        /// PostgreSQL with fsync and synchronous commit on (a crash-safe server); without it
        /// the bench's throwaway settings (fsync off) apply.
        #[arg(long)]
        durable: bool,
    },
    /// Live SLO tracking: a `tranche serve` process tracking N SLOs of M jobs while this
    /// process reports a compressed day of runs; reports/s and expected end → `slo.late`.
    Slos {
        #[arg(long, default_value_t = 10_000)]
        slos: usize,
        #[arg(long, default_value_t = 5)]
        jobs: usize,
        /// Percentage of SLOs whose last job never finishes (they go late).
        #[arg(long, default_value_t = 10)]
        late_percent: usize,
        /// Concurrent schedulers reporting.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds from now to the first expected end, at least (the reports must fit).
        #[arg(long, default_value_t = 120)]
        lead: u64,
        /// Minutes the expected ends are spread over.
        #[arg(long, default_value_t = 3)]
        spread: i64,
        /// Also print where PostgreSQL spent the run (pg_stat_statements).
        #[arg(long)]
        statements: bool,
    },
    /// Time for a surviving node to take over a killed node's domains.
    Takeover {
        #[arg(long, default_value_t = 1_000)]
        domains: usize,
        #[arg(long, default_value_t = 5)]
        interval: i32,
    },
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let (statements, settings) = match &cmd {
        BenchCommand::Billing {
            statements,
            pg_settings,
            ..
        } => (*statements, pg_settings.clone()),
        BenchCommand::Slos { statements, .. } => (*statements, Vec::new()),
        BenchCommand::Metering { durable: true, .. } => (
            false,
            vec![
                "fsync=on".into(),
                "synchronous_commit=on".into(),
                "full_page_writes=on".into(),
            ],
        ),
        _ => (false, Vec::new()),
    };
    let env = Env::start(statements, settings).await?;
    let result = match cmd {
        BenchCommand::Probes {
            domains,
            interval,
            seconds,
            warmup,
            scheme,
            external,
        } => probes(&env, domains, interval, seconds, warmup, &scheme, &external).await,
        BenchCommand::Idle { domains, floor } => idle(&env, domains, floor).await,
        BenchCommand::Detection {
            domains,
            interval,
            window,
        } => detection(&env, domains, interval, window).await,
        BenchCommand::Takeover { domains, interval } => takeover(&env, domains, interval).await,
        BenchCommand::Vantages {
            domains,
            regions,
            nodes,
            interval,
            seconds,
        } => {
            let nodes = nodes.unwrap_or(regions);
            vantages::vantages(&env, domains, nodes, regions, interval, seconds).await
        }
        BenchCommand::Failover {
            domains,
            zones,
            rate,
            burst,
        } => failover::failover(&env, domains, zones, rate, burst).await,
        BenchCommand::Slos {
            slos: n,
            jobs,
            late_percent,
            connections,
            lead,
            spread,
            ..
        } => {
            slos::slos(
                &env,
                slos::Options {
                    slos: n,
                    jobs,
                    late_percent,
                    connections,
                    lead,
                    spread,
                },
            )
            .await
        }
        BenchCommand::Nodes {
            domains,
            interval,
            freeze,
        } => failover::nodes(&env, domains, interval, freeze).await,
        BenchCommand::Dns {
            domains,
            zones,
            rate,
            burst,
            naive,
        } => dns_storm(&env, domains, zones, rate, burst, naive).await,
        BenchCommand::Billing {
            customers,
            snapshots,
            storm_percent,
            ..
        } => billing::billing(&env, customers, snapshots, storm_percent).await,
        BenchCommand::Ingest { rows } => billing::ingest(&env, rows).await,
        BenchCommand::Metering {
            profile,
            rate,
            seconds,
            batch,
            connections,
            kill_at,
            durable: _,
        } => {
            metering::metering(
                &env,
                metering::Options {
                    profile,
                    rate,
                    seconds,
                    batch,
                    connections,
                    kill_at,
                },
            )
            .await
        }
        BenchCommand::Webhooks {
            customers,
            domains,
            live,
        } => webhooks::webhooks(&env, customers, domains, live).await,
    };
    env.stop().await;
    result
}

/// Database, edges and their runtime.
struct Env {
    dir: std::path::PathBuf,
    server: EmbeddedPostgres,
    pool: PgPool,
    ca: TestCa,
    edge_runtime: tokio::runtime::Runtime,
    http: FakeEdge,
    https: FakeEdge,
    backup_http: FakeEdge,
    backup_https: FakeEdge,
    /// pg_stat_statements is loaded (`bench billing --statements`).
    statements: bool,
}

impl Env {
    /// With `--statements`: loads pg_stat_statements and forgets what was counted so far.
    async fn reset_statements(&self) -> anyhow::Result<()> {
        if self.statements {
            sqlx::query("create extension if not exists pg_stat_statements")
                .execute(&self.pool)
                .await?;
            sqlx::query("select pg_stat_statements_reset()")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// With `--statements`: where PostgreSQL spent the run, nested statements (triggers, FK
    /// checks) included.
    async fn print_statements(&self) -> anyhow::Result<()> {
        if self.statements {
            let top: Vec<(String, i64, f64)> = sqlx::query_as(
                "select left(regexp_replace(query, '\\s+', ' ', 'g'), 110), calls, total_exec_time
                   from pg_stat_statements order by total_exec_time desc limit 15",
            )
            .fetch_all(&self.pool)
            .await?;
            for (q, calls, ms) in top {
                println!("  {ms:>9.0} ms {calls:>8} {q}");
            }
        }
        Ok(())
    }

    async fn start(statements: bool, settings: Vec<String>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tranche-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut options = EmbeddedOptions::throwaway(&dir);
        options.settings = settings;
        if statements {
            options.settings.extend([
                "shared_preload_libraries=pg_stat_statements".into(),
                "pg_stat_statements.track=all".into(),
            ]);
        }
        let server = tokio::task::block_in_place(|| EmbeddedPostgres::start(&options))?;
        server.ensure_database("tranche").await?;
        let pool = tranche::postgres::pool::pool(server.connect_options("tranche"), 16).await?;
        tranche::postgres::pool::migrate(&pool).await?;
        customers::ensure_demo(&pool).await?;
        let ca = TestCa::new(&["*.bench.test"])?;
        let edge_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-edge")
            .enable_all()
            .build()?;
        let server_tls = TestCa {
            ca: ca.ca.clone(),
            server: ca.server.clone(),
        };
        let (http, https, backup_http, backup_https) = edge_runtime
            .spawn(async move {
                anyhow::Ok((
                    FakeEdge::http().await?,
                    FakeEdge::https(&server_tls).await?,
                    FakeEdge::http().await?,
                    FakeEdge::https(&server_tls).await?,
                ))
            })
            .await??;
        Ok(Self {
            dir,
            server,
            pool,
            ca,
            edge_runtime,
            http,
            https,
            backup_http,
            backup_https,
            statements,
        })
    }

    async fn stop(self) {
        self.pool.close().await;
        self.server.stop().await;
        let Env {
            edge_runtime,
            http,
            https,
            backup_http,
            backup_https,
            ..
        } = self;
        drop((http, https, backup_http, backup_https));
        edge_runtime.shutdown_background();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The product's prober, verifying against the edges' CA.
    fn prober(&self) -> anyhow::Result<NetworkProber> {
        NetworkProber::new(std::slice::from_ref(&self.ca.ca), true)
    }

    /// Creates a service with `n` domains in bulk. `targets`: whether domains get probe targets;
    /// even domains are HTTP, odd ones HTTPS.
    async fn domains(
        &self,
        n: usize,
        interval: i32,
        window: i32,
        targets: bool,
    ) -> anyhow::Result<i64> {
        self.domains_with(n, interval, window, targets, "mixed")
            .await
    }

    async fn domains_with(
        &self,
        n: usize,
        interval: i32,
        window: i32,
        targets: bool,
        scheme: &str,
    ) -> anyhow::Result<i64> {
        let service = postgres::services::create(
            &self.pool,
            customers::DEMO_CUSTOMER_ID,
            "bench",
            "cdn-a",
            "cdn-b",
        )
        .await?;
        let policy = PolicyParams::new(
            PolicyKind::HttpAvailability,
            &PolicyPatch {
                probe_interval_seconds: Some(interval),
                window_seconds: Some(window),
                min_samples: Some(3),
                cooldown_seconds: Some(3600),
                ..Default::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        postgres::policies::create(&self.pool, customers::DEMO_CUSTOMER_ID, service.id, &policy)
            .await?;
        let mut hosts = Vec::with_capacity(n);
        let mut zones = Vec::with_capacity(n);
        let mut shards = Vec::with_capacity(n);
        let mut schemes = Vec::with_capacity(n);
        let mut primaries = Vec::with_capacity(n);
        let mut backups = Vec::with_capacity(n);
        for i in 0..n {
            // The hostname is its own zone (one zone per domain spreads them over all shards) and
            // is covered by the edges' `*.bench.test` certificate.
            let zone = format!("z{i}.bench.test");
            hosts.push(zone.clone());
            shards.push(shard_of(&zone) as i16);
            zones.push(zone);
            let https = match scheme {
                "http" => false,
                "https" => true,
                _ => i % 2 == 1,
            };
            schemes.push(if https { "https" } else { "http" });
            let (p, b) = if https {
                (&self.https, &self.backup_https)
            } else {
                (&self.http, &self.backup_http)
            };
            primaries.push(targets.then(|| p.addr().to_string()));
            backups.push(targets.then(|| b.addr().to_string()));
        }
        sqlx::query(
            "insert into service_domains (service_id, hostname, dns_zone, shard, probe_scheme, primary_target,
                                          backup_target, probe_timeout_ms, verification_token)
             select $1, h, z, s, sc, p, b, 2000, 'bench'
               from unnest($2::text[], $3::text[], $4::smallint[], $5::text[], $6::text[], $7::text[]) as t(h, z, s, sc, p, b)",
        )
        .bind(service.id)
        .bind(&hosts)
        .bind(&zones)
        .bind(&shards)
        .bind(&schemes)
        .bind(&primaries)
        .bind(&backups)
        .execute(&self.pool)
        .await?;
        Ok(service.id)
    }

    /// CPU-seconds of the PostgreSQL server processes.
    fn postgres_cpu(&self) -> f64 {
        let Some(root) = self.server.pid() else {
            return 0.0;
        };
        let mut total = 0.0;
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some((ppid, cpu)) = proc_stat(&format!("/proc/{pid}/stat"))
                    && (pid == root || ppid == root)
                {
                    total += cpu;
                }
            }
        }
        total
    }
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// (parent pid, CPU-seconds) from a `stat` file.
fn proc_stat(path: &str) -> Option<(u32, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((ppid, (utime + stime) / clk_tck()))
}

/// CPU-seconds of this process, and of its threads whose name starts with `bench-edge`.
fn own_cpu() -> (f64, f64) {
    let total = proc_stat("/proc/self/stat").map_or(0.0, |(_, c)| c);
    let mut edges = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.starts_with("bench-edge")
                && let Some((_, cpu)) = proc_stat(&t.path().join("stat").to_string_lossy())
            {
                edges += cpu;
            }
        }
    }
    (total, edges)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `bench probes` against servers outside the bench (the nginx that
/// `bench/probes-vs-blackbox.sh` shares with blackbox_exporter) instead of the in-process
/// edges: every domain's primary and backup CDN target is that server.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct External {
    /// `host:port` of the HTTP server every HTTP probe goes to.
    #[arg(long)]
    target_http: Option<String>,
    /// `host:port` of the HTTPS server; its certificate must cover `*.bench.test` and chain
    /// to `--ca`.
    #[arg(long)]
    target_https: Option<String>,
    /// PEM file of the CA the HTTPS target's certificate chains to (verification stays on).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Path probed (e.g. `/healthz`).
    #[arg(long, default_value = "/")]
    path: String,
    /// Every HTTPS probe a full handshake: no TLS session resumption.
    #[arg(long)]
    no_resumption: bool,
    /// A fresh X25519 key share for every handshake (`probe_tls_reuse_key_share = false`).
    #[arg(long)]
    fresh_key_share: bool,
}

/// Counts completed and successful probes, and remembers who probed what last.
struct Counting {
    inner: Box<dyn Prober>,
    done: AtomicU64,
    ok: AtomicU64,
    last: Mutex<HashMap<String, Instant>>,
    outcomes: Mutex<HashMap<(&'static str, &'static str), u64>>,
    track: bool,
}

impl Counting {
    fn new(inner: Box<dyn Prober>, track: bool) -> Self {
        Self {
            inner,
            done: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            last: Mutex::default(),
            outcomes: Mutex::default(),
            track,
        }
    }
}

#[async_trait::async_trait]
impl Prober for Counting {
    async fn probe(&self, request: &ProbeRequest) -> ProbeResult {
        let result = self.inner.probe(request).await;
        self.done.fetch_add(1, Ordering::Relaxed);
        if result.ok() {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry((request.scheme.as_str(), result.outcome.as_str()))
            .or_default() += 1;
        if self.track {
            self.last
                .lock()
                .unwrap()
                .insert(request.hostname.clone(), Instant::now());
        }
        result
    }
}

fn engine_config(node: &str) -> EngineConfig {
    EngineConfig::new(node)
}

async fn start_engine(
    env: &Env,
    node: &str,
    prober: Arc<dyn Prober>,
    own_pool: bool,
) -> anyhow::Result<RunningEngine> {
    let pool = if own_pool {
        tranche::postgres::pool::pool((*env.pool.connect_options()).clone(), 8).await?
    } else {
        env.pool.clone()
    };
    tranche::node::start(engine_config(node), pool, prober, None).await
}

async fn wait_running(
    engines: &[&RunningEngine],
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut total = 0;
        for e in engines {
            total += e.engine.running_domains().await.len();
        }
        if total == n {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            anyhow::bail!("only {total} of {n} domain actors running after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn probes(
    env: &Env,
    n: usize,
    interval: i32,
    seconds: u64,
    warmup: u64,
    scheme: &str,
    external: &External,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(scheme, "mixed" | "http" | "https"),
        "--scheme must be mixed, http or https"
    );
    env.domains_with(n, interval, interval * 6, true, scheme)
        .await?;
    let roots = match &external.ca {
        Some(path) => tranche::prober::roots_from_pem_file(path)?,
        None => vec![env.ca.ca.clone()],
    };
    let tls = TlsOptions {
        resumption: !external.no_resumption,
        reuse_key_share: !external.fresh_key_share,
    };
    let network = NetworkProber::with_tls(&roots, true, tls)?;
    let prober: Box<dyn Prober> = Box::new(network);
    if external.target_http.is_some() || external.target_https.is_some() {
        // Both CDNs of every domain: the external server of its scheme.
        let target = |t: &Option<String>| t.clone().unwrap_or_else(|| "127.0.0.1:9".into());
        sqlx::query(
            "update service_domains
                set primary_target = case probe_scheme when 'https' then $2 else $1 end,
                    backup_target = case probe_scheme when 'https' then $2 else $1 end,
                    probe_path = $3",
        )
        .bind(target(&external.target_http))
        .bind(target(&external.target_https))
        .bind(&external.path)
        .execute(&env.pool)
        .await?;
    }
    let counting = Arc::new(Counting::new(prober, false));
    let rss_before = rss_kib();
    let engine = start_engine(env, "bench-node", counting.clone(), false).await?;
    let startup = wait_running(&[&engine], n, Duration::from_secs(300)).await?;
    println!("started {n} domain actors in {:.1}s", startup.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(warmup)).await;

    let (cpu0, edge0) = own_cpu();
    let pg0 = env.postgres_cpu();
    let (done0, ok0) = (
        counting.done.load(Ordering::Relaxed),
        counting.ok.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, edge1) = own_cpu();
    let pg1 = env.postgres_cpu();
    let done = counting.done.load(Ordering::Relaxed) - done0;
    let ok = counting.ok.load(Ordering::Relaxed) - ok0;
    let rss = rss_kib();
    engine.shutdown().await;
    println!(
        "outcomes (scheme, outcome): {:?}",
        counting.outcomes.lock().unwrap()
    );

    let tranche_cpu = (cpu1 - cpu0) - (edge1 - edge0);
    let expected = (2 * n) as f64 / f64::from(interval);
    println!(
        "domains={n} cdns=2 scheme={scheme} interval={interval}s measured={elapsed:.1}s (after {warmup}s warm-up)"
    );
    println!(
        "RESULT probes_per_s={:.0} expected_per_s={expected:.0} ok={:.2}% tranche_cpu_s={tranche_cpu:.2} cpu_s_per_1000_probes={:.3} probes_per_cpu_s={:.0} ok_probes_per_cpu_s={:.0} resumption={} key_share_reuse={}",
        done as f64 / elapsed,
        100.0 * ok as f64 / done.max(1) as f64,
        1000.0 * tranche_cpu / done.max(1) as f64,
        done as f64 / tranche_cpu.max(1e-9),
        ok as f64 / tranche_cpu.max(1e-9),
        !external.no_resumption,
        !external.fresh_key_share,
    );
    println!(
        "RESULT edges_cpu_s={:.2} postgres_cpu_s={:.2} rss_mib={:.1} rss_delta_mib={:.1}",
        edge1 - edge0,
        pg1 - pg0,
        rss as f64 / 1024.0,
        (rss.saturating_sub(rss_before)) as f64 / 1024.0
    );
    Ok(())
}

/// The ractor floor under every domain actor: a bare actor with one pending timer.
async fn actor_floor(n: usize) -> anyhow::Result<()> {
    struct Bare;
    impl ractor::Actor for Bare {
        type Msg = u8;
        type State = u64;
        type Arguments = ();
        async fn pre_start(
            &self,
            _: ractor::ActorRef<u8>,
            _: (),
        ) -> Result<u64, ractor::ActorProcessingErr> {
            Ok(0)
        }
        async fn handle(
            &self,
            _: ractor::ActorRef<u8>,
            _: u8,
            state: &mut u64,
        ) -> Result<(), ractor::ActorProcessingErr> {
            *state += 1;
            Ok(())
        }
    }
    let rss_before = rss_kib();
    let mut actors = Vec::with_capacity(n);
    for _ in 0..n {
        actors.push(ractor::Actor::spawn(None, Bare, ()).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib();
    let delta = rss_after.saturating_sub(rss_before);
    println!(
        "RESULT bare_ractor_actors={n} rss_per_actor_bytes={:.0} (the runtime's floor: its ports and task)",
        delta as f64 * 1024.0 / n as f64
    );
    for (actor, handle) in actors {
        actor.stop(None);
        let _ = handle.await;
    }
    Ok(())
}

async fn idle(env: &Env, n: usize, floor: bool) -> anyhow::Result<()> {
    if floor {
        // Alone in its process: memory freed by one measurement would flatter the other.
        return actor_floor(n).await;
    }
    env.domains(n, 10, 60, false).await?;
    let counting = Arc::new(Counting::new(Box::new(env.prober()?), false));
    let rss_before = rss_kib();
    let engine = start_engine(env, "bench-node", counting, false).await?;
    let startup = wait_running(&[&engine], n, Duration::from_secs(900)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_kib();
    engine.shutdown().await;
    let delta = rss_after.saturating_sub(rss_before);
    println!(
        "RESULT idle_actors={n} startup_s={:.1} rss_before_mib={:.1} rss_after_mib={:.1} rss_per_actor_bytes={:.0}",
        startup.as_secs_f64(),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        delta as f64 * 1024.0 / n as f64
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn detection(env: &Env, n: usize, interval: i32, window: i32) -> anyhow::Result<()> {
    env.domains(n, interval, window, true).await?;
    let engine = start_engine(env, "bench-node", Arc::new(env.prober()?), false).await?;
    wait_running(&[&engine], n, Duration::from_secs(120)).await?;
    // Let every window fill with healthy samples.
    tokio::time::sleep(Duration::from_secs(window as u64 + 2)).await;
    let broke: DateTime<Utc> = Utc::now();
    env.http.set(Behaviour::Status(503));
    env.https.set(Behaviour::Status(503));
    let deadline = Instant::now() + Duration::from_secs((window + interval) as u64 * 3 + 10);
    loop {
        let open: i64 =
            sqlx::query_scalar("select count(*) from storm_events where ended_at is null")
                .fetch_one(&env.pool)
                .await?;
        if open as usize >= n {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {open} of {n} storms after the deadline");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies: Vec<f64> = sqlx::query_scalar::<_, f64>(
        "select extract(epoch from created_at - $1)::float8 * 1000 from storm_events",
    )
    .bind(broke)
    .fetch_all(&env.pool)
    .await?;
    latencies.sort_by(|a, b| a.total_cmp(b));
    engine.shutdown().await;
    let bound_ms = f64::from(window + interval) * 1000.0 + 200.0;
    println!(
        "RESULT detection domains={n} window={window}s interval={interval}s p50_ms={:.0} p99_ms={:.0} max_ms={:.0} bound_ms={bound_ms:.0}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

async fn takeover(env: &Env, n: usize, interval: i32) -> anyhow::Result<()> {
    env.domains(n, interval, interval * 6, true).await?;
    let survivor_probes = Arc::new(Counting::new(Box::new(env.prober()?), true));
    let a = start_engine(env, "node-a", survivor_probes.clone(), true).await?;
    let b = start_engine(env, "node-b", Arc::new(env.prober()?), true).await?;
    // Both nodes settled with a share each.
    let settle = Instant::now();
    loop {
        let (ra, rb) = (
            a.engine.running_domains().await.len(),
            b.engine.running_domains().await.len(),
        );
        if ra + rb == n && ra > 0 && rb > 0 {
            break;
        }
        if settle.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("nodes did not settle: {ra} + {rb} of {n}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_ids = b.engine.running_domains().await;
    let b_hosts: Vec<String> =
        sqlx::query_scalar("select hostname from service_domains where id = any($1)")
            .bind(&b_ids)
            .fetch_all(&env.pool)
            .await
            .context("loading node b's domains")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    b.crash();
    let deadline = Duration::from_secs(60);
    let (running_after, probed_after) = loop {
        let running = a.engine.running_domains().await.len() == n;
        let all_probed = {
            let last = survivor_probes.last.lock().unwrap();
            b_hosts
                .iter()
                .all(|h| last.get(h).is_some_and(|t| *t > killed))
        };
        if running && all_probed {
            break (killed.elapsed(), killed.elapsed());
        }
        if killed.elapsed() > deadline {
            anyhow::bail!("takeover did not complete within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.shutdown().await;
    println!(
        "RESULT takeover domains={n} taken_over={} interval={interval}s all_running_s={:.2} all_probed_again_s={:.2}",
        b_hosts.len(),
        running_after.as_secs_f64(),
        probed_after.as_secs_f64()
    );
    Ok(())
}

/// A `moto_server` child process on a free loopback port.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Moto {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("moto_server not found: pip install 'moto[server]'")?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts provider calls.
struct CountingDns {
    inner: Arc<tranche::route53::Route53Provider>,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl tranche_actors::ports::DnsProvider for CountingDns {
    fn name(&self) -> &'static str {
        "route53"
    }
    async fn apply(
        &self,
        zone: &str,
        batch: &tranche_core::dns::planner::Batch,
    ) -> Result<tranche_core::dns::provider::Submitted, tranche_core::dns::provider::ProviderError>
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.apply(zone, batch).await
    }
    async fn in_sync(&self, id: &str) -> Result<bool, tranche_core::dns::provider::ProviderError> {
        self.inner.in_sync(id).await
    }
}

async fn count(pool: &PgPool, sql: &'static str, since: DateTime<Utc>) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(since).fetch_one(pool).await?)
}

async fn dns_storm(
    env: &Env,
    n: usize,
    zones: usize,
    rate: f64,
    burst: u32,
    naive: usize,
) -> anyhow::Result<()> {
    use tranche_actors::ports::DnsProvider;
    use tranche_core::dns::planner::{Batch, RecordChange, RecordType};

    let moto = Moto::start().await?;
    let route53 = Arc::new(tranche::route53::Route53Provider::for_endpoint(
        &moto.url,
        tranche::route53::DEFAULT_TTL,
    ));
    // Probing is irrelevant here: one probe an hour.
    let policy = PolicyParams::new(
        PolicyKind::HttpAvailability,
        &PolicyPatch {
            probe_interval_seconds: Some(3600),
            window_seconds: Some(10_800),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hosts = failover::steered_domains(
        env,
        &route53,
        (n, zones, "dns.bench.test"),
        &policy,
        ("edge.cdn-a.example", "edge.cdn-b.example"),
    )
    .await?;
    let service_id: i64 =
        sqlx::query_scalar("select id from services where name = 'dns.bench.test'")
            .fetch_one(&env.pool)
            .await?;

    let counting = Arc::new(CountingDns {
        inner: route53.clone(),
        calls: AtomicU64::new(0),
    });
    let dns = tranche::node::DnsOptions {
        provider: counting.clone(),
        rate_per_sec: rate,
        burst,
    };
    let engine = tranche::node::start(
        engine_config("bench-node"),
        env.pool.clone(),
        Arc::new(env.prober()?),
        Some(dns),
    )
    .await?;

    // Initial records (100/0) for every domain.
    let t = Instant::now();
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    while count(
        &env.pool,
        "select count(*) from dns_records where applied_primary_weight = 100 and applied_at > $1",
        epoch,
    )
    .await?
        < n as i64
    {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "initial records not applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "initial records for {n} domains in {zones} zones applied in {:.1}s with {} calls",
        t.elapsed().as_secs_f64(),
        counting.calls.load(Ordering::Relaxed)
    );
    // Let the rate limiter refill, so the storm meets the configured burst.
    tokio::time::sleep(Duration::from_secs_f64(
        (f64::from(burst) / rate).clamp(1.0, 60.0),
    ))
    .await;

    // Every domain enters storm at once: desired 0/100 committed in one transaction.
    counting.calls.store(0, Ordering::Relaxed);
    let committed: DateTime<Utc> = sqlx::query_scalar(
        "with s as (
             insert into domain_states (domain_id, state, state_since, desired_primary_weight, desired_backup_weight)
             select id, 'storm', now(), 0, 100 from service_domains where service_id = $1
             on conflict (domain_id) do update set state = 'storm', desired_primary_weight = 0, desired_backup_weight = 100
             returning 1)
         select now() from s limit 1",
    )
    .bind(service_id)
    .fetch_one(&env.pool)
    .await?;
    let t0 = Instant::now();
    for k in 0..zones {
        engine
            .engine
            .wake_zone(&format!("z{k}.dns.bench.test"))
            .await;
    }
    let (mut submitted_s, mut applied_s) = (None, None);
    while applied_s.is_none() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "mass storm not applied"
        );
        if submitted_s.is_none()
            && count(&env.pool, "select coalesce(sum(cardinality(domain_ids)), 0)::bigint from dns_changes where submitted_at >= $1 and status <> 'failed'", committed).await? >= n as i64
        {
            submitted_s = Some(t0.elapsed().as_secs_f64());
        }
        if count(&env.pool, "select count(*) from dns_records where applied_primary_weight = 0 and applied_at >= $1", committed).await? >= n as i64 {
            applied_s = Some(t0.elapsed().as_secs_f64());
            submitted_s.get_or_insert(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = counting.calls.load(Ordering::Relaxed);
    let per_zone = n.div_ceil(zones);
    let bound = zones * per_zone.div_ceil(250);
    println!(
        "RESULT dns_mass_storm domains={n} zones={zones} rate={rate}/s burst={burst} all_submitted_s={:.2} all_applied_s={:.2} calls={calls} calls_bound={bound}",
        submitted_s.unwrap_or(f64::NAN),
        applied_s.unwrap_or(f64::NAN)
    );

    // A single storm: one domain's decision, woken as a domain actor would.
    let mut latencies = Vec::new();
    for (i, host) in hosts.iter().enumerate().take(100) {
        let zone = format!("z{}.dns.bench.test", i % zones);
        let at: DateTime<Utc> = sqlx::query_scalar(
            "update domain_states set desired_primary_weight = 100, desired_backup_weight = 0, state = 'healthy'
              where domain_id = (select id from service_domains where hostname = $1) returning now()",
        )
        .bind(host)
        .fetch_one(&env.pool)
        .await?;
        engine.engine.wake_zone(&zone).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let when: Option<DateTime<Utc>> = sqlx::query_scalar(
                "select min(submitted_at) from dns_changes where submitted_at >= $1 and status <> 'failed'
                    and (select id from service_domains where hostname = $2) = any(domain_ids)",
            )
            .bind(at)
            .bind(host)
            .fetch_one(&env.pool)
            .await?;
            if let Some(w) = when {
                latencies.push((w - at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "single change not submitted");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "RESULT dns_single_storm samples={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    engine.shutdown().await;

    // Naive baseline: one call per domain (the seed's approach), same provider and moto.
    let naive = naive.min(n);
    let t = Instant::now();
    for host in hosts.iter().take(naive) {
        let change = RecordChange {
            domain_id: 0,
            name: host.clone(),
            rtype: RecordType::Cname,
            primary_value: "edge.cdn-a.example".into(),
            backup_value: "edge.cdn-b.example".into(),
            weights: tranche_core::storm::Weights::FAILOVER,
            applied: None,
            decided_at: Utc::now(),
            pinned: false,
        };
        route53
            .apply("naive", &Batch::of(change))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let naive_s = t.elapsed().as_secs_f64();
    println!(
        "RESULT dns_naive_baseline domains={naive} calls={naive} seconds={naive_s:.2} extrapolated_to_{n}_s={:.1} (unthrottled; at Route53's 5 req/s: {:.0}s)",
        naive_s * n as f64 / naive as f64,
        n as f64 / 5.0
    );
    drop(moto);
    Ok(())
}
