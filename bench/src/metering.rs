//! `tranche-bench metering`: usage-event ingestion against a `tranche serve` process (the
//! release binary) and its PostgreSQL, with this process as the load generator.
//!
//! The load is open-loop: request `i` is due at a time the profile sets, whatever happened to
//! the earlier ones, and its latency counts from when it was due (no coordinated omission).
//! Profiles, as fractions of `--rate` requests/s:
//!
//! * `ramp`  — from 10 % to 100 % linearly over the run;
//! * `spike` — 50 % for the first third, 150 % for the second, 50 % for the last;
//! * `soak`  — 100 % throughout.
//!
//! Every event has a unique id; the ids of every event acknowledged (a 2xx whose events were all
//! accepted or duplicates) are kept. After the run, loss is counted against the database: every
//! acknowledged id must be in `usage_events`, and the minute rollups and the period totals must
//! sum to the events stored. `--kill-at S` sends SIGKILL to the node S seconds in and starts a
//! new one on the same database at once (requests in between fail and are not acknowledged).
//! CPU-seconds of the Tranche process and of the PostgreSQL processes are reported separately.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use serde_json::json;

use super::Env;
use super::failover::NodeProcess;

pub(super) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Profile {
    Ramp,
    Spike,
    Soak,
}

impl Profile {
    /// Fraction of the target rate at `f` (0..1) of the run.
    fn level(self, f: f64) -> f64 {
        match self {
            Self::Ramp => 0.1 + 0.9 * f,
            Self::Spike if (1.0 / 3.0..2.0 / 3.0).contains(&f) => 1.5,
            Self::Spike => 0.5,
            Self::Soak => 1.0,
        }
    }

    /// When request `i` is due (seconds from the start), at `rate` requests/s, for a run of
    /// `seconds`: the inverse of the cumulative request count, stepped in 10 ms slices.
    fn schedule(self, rate: f64, seconds: f64) -> Vec<f64> {
        let mut due = Vec::new();
        let slice = 0.01;
        let mut carry = 0.0;
        let mut t = 0.0;
        while t < seconds {
            let n = rate * self.level(t / seconds) * slice + carry;
            let whole = n.floor();
            carry = n - whole;
            for k in 0..whole as usize {
                due.push(t + slice * k as f64 / whole.max(1.0));
            }
            t += slice;
        }
        due
    }
}

pub struct Options {
    pub profile: Profile,
    /// Requests per second at 100 %.
    pub rate: f64,
    pub seconds: u64,
    /// Events per request (1: single events; otherwise a batch).
    pub batch: usize,
    pub connections: usize,
    pub kill_at: Option<u64>,
}

pub(super) fn cpu_seconds(pid: u32) -> f64 {
    super::proc_stat(&format!("/proc/{pid}/stat")).map_or(0.0, |(_, c)| c)
}

pub(super) async fn start_node(env: &Env, id: &str) -> anyhow::Result<NodeProcess> {
    let node = NodeProcess::start_with(
        env,
        id,
        &[
            ("TRANCHE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TRANCHE_API_RATE_PER_SECOND", "10000000"),
            ("TRANCHE_API_BURST", "10000000"),
            ("TRANCHE_HTTP_MAX_CONNECTIONS", "4096"),
        ],
    )?;
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = client
            .get(format!("{}/readyz", node.url()))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(node);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "node {id} not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[derive(serde::Deserialize)]
struct Receipt {
    accepted: u64,
    duplicates: u64,
}

pub async fn metering(env: &Env, o: Options) -> anyhow::Result<()> {
    let mut node = start_node(env, "meter-1").await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.connections)
        .build()?;
    // A real customer and API key, through the admin API.
    let customer: serde_json::Value = http
        .post(format!("{}/v1/admin/customers", node.url()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "bench-metering" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = customer["api_key"]["secret"]
        .as_str()
        .context("no API key in the provisioning answer")?
        .to_owned();
    let customer_id = customer["customer"]["id"]
        .as_i64()
        .or_else(|| customer["id"].as_i64())
        .context("no customer id")?;
    let service: serde_json::Value = http
        .post(format!("{}/v1/services", node.url()))
        .bearer_auth(&key)
        .json(&json!({ "name": "bench", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let service_id = service["id"].as_i64().context("no service id")?;

    let due = Arc::new(o.profile.schedule(o.rate, o.seconds as f64));
    let total_requests = due.len();
    let run = format!("run{}", std::process::id());
    let url = Arc::new(RwLock::new(format!("{}/v1/usage-events", node.url())));
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total_requests)));
    let acked = Arc::new(Mutex::new(Vec::<usize>::with_capacity(total_requests)));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let (tranche_cpu0, pg_cpu0) = (cpu_seconds(node.pid()), env.postgres_cpu());
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..o.connections {
        let (due, url, next, latencies, acked, failed, stop, http, key, run) = (
            due.clone(),
            url.clone(),
            next.clone(),
            latencies.clone(),
            acked.clone(),
            failed.clone(),
            stop.clone(),
            http.clone(),
            key.clone(),
            run.clone(),
        );
        let batch = o.batch;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= due.len() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let at = start + Duration::from_secs_f64(due[i]);
                tokio::time::sleep_until(at.into()).await;
                let event = |j: usize| {
                    json!({ "id": format!("{i}-{j}"), "source": run, "service_id": service_id,
                            "metric": "requests", "quantity": 1 })
                };
                let body = if batch == 1 {
                    event(0)
                } else {
                    json!({ "events": (0..batch).map(event).collect::<Vec<_>>() })
                };
                let target = url.read().map(|u| u.clone()).unwrap_or_default();
                let sent = http
                    .post(target)
                    .bearer_auth(&key)
                    .json(&body)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                let ok = match sent {
                    Ok(resp) if resp.status().is_success() => resp
                        .json::<Receipt>()
                        .await
                        .is_ok_and(|r| (r.accepted + r.duplicates) as usize == batch),
                    _ => false,
                };
                let latency = at.elapsed().as_secs_f64() * 1000.0;
                if ok {
                    latencies.lock().unwrap().push(latency);
                    acked.lock().unwrap().push(i);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut killed_at = None;
    if let Some(kill_at) = o.kill_at {
        tokio::time::sleep(Duration::from_secs(kill_at)).await;
        node.signal(Signal::SIGKILL)?;
        killed_at = Some(start.elapsed().as_secs_f64());
        let restarted = Instant::now();
        node = start_node(env, "meter-2").await?;
        *url.write().unwrap() = format!("{}/v1/usage-events", node.url());
        println!(
            "killed meter-1 (SIGKILL) at {:.1} s; meter-2 ready after {:.2} s",
            killed_at.unwrap_or_default(),
            restarted.elapsed().as_secs_f64()
        );
    }
    for w in workers {
        w.await?;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    // After a kill the first node's CPU is gone with it: report the survivor's only.
    let tranche_cpu = cpu_seconds(node.pid())
        - if killed_at.is_some() {
            0.0
        } else {
            tranche_cpu0
        };
    let pg_cpu = env.postgres_cpu() - pg_cpu0;

    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let acked_events = acked.len() * o.batch;

    // Loss accounting against the database.
    let stored: Vec<String> = sqlx::query_scalar(
        "select event_id from usage_events where customer_id = $1 and source = $2",
    )
    .bind(customer_id)
    .bind(&run)
    .fetch_all(&env.pool)
    .await?;
    let stored: HashSet<String> = stored.into_iter().collect();
    let missing = acked
        .iter()
        .flat_map(|&i| (0..o.batch).map(move |j| format!("{i}-{j}")))
        .filter(|id| !stored.contains(id))
        .count();
    let (rolled, totals): (i64, i64) = sqlx::query_as(
        "select (select coalesce(sum(events), 0)::int8 from usage_rollups where customer_id = $1),
                (select coalesce(sum(events), 0)::int8 from usage_period_totals where customer_id = $1)",
    )
    .bind(customer_id)
    .fetch_one(&env.pool)
    .await?;
    let committed = stored.len();
    let events_per_s = acked_events as f64 / elapsed;
    println!(
        "RESULT metering profile={:?} batch={} target_rate={}/s seconds={} connections={} requests={} acked_requests={} failed_requests={} events_acked={} events_per_s={:.0} requests_per_s={:.0} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} tranche_cpu_s={:.1} postgres_cpu_s={:.1} events_per_tranche_cpu_s={:.0} events_per_postgres_cpu_s={:.0}",
        o.profile,
        o.batch,
        o.rate,
        o.seconds,
        o.connections,
        total_requests,
        acked.len(),
        failed.load(Ordering::Relaxed),
        acked_events,
        events_per_s,
        acked.len() as f64 / elapsed,
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().copied().unwrap_or(f64::NAN),
        tranche_cpu,
        pg_cpu,
        acked_events as f64 / tranche_cpu,
        acked_events as f64 / pg_cpu,
    );
    println!(
        "RESULT loss acked={acked_events} committed={committed} acked_but_missing={missing} committed_not_acked={} rollup_events={rolled} period_total_events={totals}",
        committed as i64 - (acked_events as i64 - missing as i64),
    );
    anyhow::ensure!(missing == 0, "{missing} acknowledged events are missing");
    anyhow::ensure!(
        rolled == committed as i64 && totals == committed as i64,
        "rollups ({rolled}) or totals ({totals}) differ from the events stored ({committed})"
    );
    drop(node);
    Ok(())
}
