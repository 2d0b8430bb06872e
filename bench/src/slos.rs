//! `tranche-bench slos`: live SLO tracking at scale against a `tranche serve` process (the
//! release binary) and its PostgreSQL, with this process as the schedulers.
//!
//! A day of batch jobs, compressed: `--slos` SLOs (one application, an every-day UTC calendar)
//! of `--jobs` jobs each, whose expected ends fall on whole minutes spread over `--spread`
//! minutes starting at least `--lead` seconds from now. `--connections` schedulers then report
//! every job of every SLO (`start` then `succeed`, in chain order) as fast as the API accepts
//! them — except that in `--late-percent` of the SLOs the last job starts and never finishes.
//!
//! Measured:
//! * trackers ready: from the SLOs' commit (10,000 `slo:<id>` notifications) until every SLO
//!   has its performance row — one tracker per SLO loaded, evaluated and written;
//! * reports/s accepted by `POST /v1/job-status` while every tracker reacts to them, with the
//!   request latency percentiles;
//! * catch-up: from the last report until every finished SLO's row says `on_time`;
//! * `slo.late`: from each unfinished SLO's expected end to its event (`occurred_at`: the start
//!   of the transaction that records it; the tracker's timer fired just before), with a check that each is raised exactly once and never for a finished SLO;
//! * CPU-seconds of Tranche and PostgreSQL, and Tranche's RSS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, DurationRound, Utc};
use serde_json::json;

use super::Env;
use super::metering::{ADMIN_TOKEN, cpu_seconds, percentile, start_node};

pub struct Options {
    pub slos: usize,
    pub jobs: usize,
    pub late_percent: usize,
    pub connections: usize,
    /// Seconds from now to the first expected end (at least).
    pub lead: u64,
    /// Minutes the expected ends are spread over.
    pub spread: i64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether SLO `i` is one of the `percent` whose last job never finishes.
fn is_late(i: usize, percent: usize) -> bool {
    percent > 0 && i.is_multiple_of(100 / percent.min(100))
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await?)
}

pub async fn slos(env: &Env, o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.jobs >= 1 && o.slos >= 1,
        "--slos and --jobs must be at least 1"
    );
    let node = start_node(env, "slo-1").await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.connections)
        .build()?;
    let customer: serde_json::Value = http
        .post(format!("{}/v1/admin/customers", node.url()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "bench-slos" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let admin_key = customer["api_key"]["secret"]
        .as_str()
        .context("no API key in the provisioning answer")?
        .to_owned();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{}{path}", node.url()))
            .bearer_auth(&admin_key)
            .json(&body)
            .send()
    };
    let calendar: serde_json::Value = post(
        "/v1/calendars",
        json!({ "name": "utc-daily", "kind": "every_day", "time_zone": "UTC" }),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    let application: serde_json::Value = post("/v1/applications", json!({ "name": "batch" }))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key: serde_json::Value = post(
        "/v1/api-keys",
        json!({ "name": "schedulers", "scopes": ["job-status"], "applications": ["batch"] }),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    let key = key["secret"]
        .as_str()
        .context("no job-status key")?
        .to_owned();
    let customer_id = customer["customer"]["id"]
        .as_i64()
        .or_else(|| customer["id"].as_i64())
        .context("no customer id")?;

    // The schedule: expected ends on whole minutes from `first`, the business date the day
    // before (so every offset is past 24:00 and never negative).
    let now = Utc::now();
    let first: DateTime<Utc> = (now + chrono::Duration::seconds(o.lead as i64))
        .duration_trunc(chrono::Duration::minutes(1))?
        + chrono::Duration::minutes(1);
    let date = first.date_naive() - chrono::Duration::days(1);
    let midnight = date.and_hms_opt(0, 0, 0).context("midnight")?.and_utc();
    let base = (first - midnight).num_minutes();
    let spread = o.spread.max(1);
    let end_of = |i: usize| base + (i as i64 % spread);
    let late_percent = o.late_percent;
    let late = move |i: usize| is_late(i, late_percent);

    println!(
        "creating {} SLOs × {} jobs (expected ends {} … {} UTC, business date {date})",
        o.slos,
        o.jobs,
        first.format("%H:%M"),
        (first + chrono::Duration::minutes(spread - 1)).format("%H:%M")
    );
    let created = Instant::now();
    let mut tx = env.pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into slos (customer_id, application_id, calendar_id, name, start_grace_minutes,
                           tolerance_minutes)
         select $1, $2, $3, 'slo-' || g, 60, 30 from generate_series(1, $4) as g
         returning id",
    )
    .bind(customer_id)
    .bind(application["id"].as_i64().context("application id")?)
    .bind(calendar["id"].as_i64().context("calendar id")?)
    .bind(o.slos as i64)
    .fetch_all(&mut *tx)
    .await?;
    let (mut slo_ids, mut jobs, mut starts, mut ends) = (vec![], vec![], vec![], vec![]);
    for (i, id) in ids.iter().enumerate() {
        for j in 0..o.jobs {
            slo_ids.push(*id);
            jobs.push(format!("job-{i}-{j}"));
            starts.push((end_of(i) - 10 + j as i64) as i32);
            ends.push(end_of(i) as i32);
        }
    }
    sqlx::query(
        "insert into slo_jobs (slo_id, job, expected_start_minutes, expected_end_minutes)
         select * from unnest($1::int8[], $2::text[], $3::int4[], $4::int4[])",
    )
    .bind(&slo_ids)
    .bind(&jobs)
    .bind(&starts)
    .bind(&ends)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let committed = Instant::now();
    println!(
        "  committed in {:.2} s; waiting for every tracker's first row",
        (committed - created).as_secs_f64()
    );
    loop {
        let rows = count(
            &env.pool,
            "select count(distinct slo_id) from slo_performance",
        )
        .await?;
        if rows as usize >= o.slos {
            break;
        }
        anyhow::ensure!(
            committed.elapsed() < Duration::from_secs(600),
            "only {rows} of {} SLOs tracked after 10 minutes",
            o.slos
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = committed.elapsed();
    println!(
        "  trackers ready: {:.2} s for {} SLOs (RSS {} MiB)",
        ready.as_secs_f64(),
        o.slos,
        rss_kib(node.pid()) / 1024
    );

    env.reset_statements().await?;
    // The schedulers.
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/v1/job-status", node.url());
    let (tranche_cpu0, pg_cpu0) = (cpu_seconds(node.pid()), env.postgres_cpu());
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..o.connections {
        let (next, latencies, failed, http, key, url) = (
            next.clone(),
            latencies.clone(),
            failed.clone(),
            http.clone(),
            key.clone(),
            url.clone(),
        );
        let (slos, jobs) = (o.slos, o.jobs);
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= slos {
                    break;
                }
                for j in 0..jobs {
                    let statuses: &[&str] = if j + 1 == jobs && late(i) {
                        &["start"]
                    } else {
                        &["start", "succeed"]
                    };
                    for status in statuses {
                        let body = json!({
                            "application": "batch", "job": format!("job-{i}-{j}"),
                            "status": status, "status_time": Utc::now().to_rfc3339(),
                            "business_date": date.to_string(), "run_id": format!("w{w}"),
                            "host": format!("scheduler-{w}"),
                        });
                        let sent = Instant::now();
                        let ok = http
                            .post(&url)
                            .bearer_auth(&key)
                            .json(&body)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        if ok {
                            mine.push(sent.elapsed().as_secs_f64() * 1000.0);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    for w in workers {
        w.await?;
    }
    let blast = start.elapsed();
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    let accepted = lat.len();
    println!(
        "  {accepted} reports accepted in {:.2} s: {:.0} reports/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} failed",
        blast.as_secs_f64(),
        accepted as f64 / blast.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().copied().unwrap_or(f64::NAN),
        failed.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        Utc::now() < first,
        "the reports ran past the first expected end: use a longer --lead"
    );
    let finished = (0..o.slos).filter(|i| !late(*i)).count() as i64;
    let on_time_sql = format!(
        "select count(*) from slo_performance where business_date = '{date}' and status = 'on_time'"
    );
    loop {
        if count(&env.pool, &on_time_sql).await? >= finished {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "the finished SLOs never all became on_time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let catch_up = start.elapsed() - blast;
    let (tranche_cpu, pg_cpu) = (
        cpu_seconds(node.pid()) - tranche_cpu0,
        env.postgres_cpu() - pg_cpu0,
    );
    println!(
        "  every finished SLO on_time {:.2} s after the last report; CPU-seconds: Tranche {tranche_cpu:.1}, PostgreSQL {pg_cpu:.1} ({:.0} reports per Tranche CPU-second); RSS {} MiB",
        catch_up.as_secs_f64(),
        accepted as f64 / tranche_cpu.max(0.001),
        rss_kib(node.pid()) / 1024
    );

    env.print_statements().await?;
    if env.statements {
        // The plan a tracker's read of its reports gets once the statement is cached.
        let mut conn = env.pool.acquire().await?;
        for sql in [
            "set plan_cache_mode = force_generic_plan",
            "prepare tracker_reports(int8, text, text[], date, date) as
             select s.business_date, s.job, s.run_id, s.status, s.status_time
               from unnest($3::text[]) as j(job)
               cross join lateral (
                   select business_date, job, run_id, status, status_time from job_status
                    where customer_id = $1 and application = $2 and job = j.job
                      and business_date between $4 and $5
                   offset 0) as s
              order by s.business_date, s.status_time",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await?;
        }
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "explain analyze execute tracker_reports({customer_id}, 'batch', array['job-7-0','job-7-1'], '{date}', '{date}')"
        )))
        .fetch_all(&mut *conn)
        .await?;
        for line in plan {
            println!("    {line}");
        }
    }

    // The unfinished ones: slo.late at their expected ends.
    let expected_late = o.slos as i64 - finished;
    let last_end = first + chrono::Duration::minutes(spread - 1);
    println!(
        "  waiting for {expected_late} slo.late alerts (the last expected end is {} UTC)",
        last_end.format("%H:%M:%S")
    );
    loop {
        let n = count(
            &env.pool,
            "select count(*) from slo_alerts where kind = 'late' and event_id is not null",
        )
        .await?;
        if n >= expected_late && Utc::now() > last_end + chrono::Duration::seconds(5) {
            break;
        }
        anyhow::ensure!(
            Utc::now() < last_end + chrono::Duration::minutes(5),
            "only {n} of {expected_late} slo.late alerts 5 minutes after the last expected end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The tracker's evaluation instant (`raised_at`, its clock when the timer woke it) and the
    // event's transaction start, both from the expected end.
    let woke: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from (a.raised_at - p.expected_end))::float8 * 1000
           from slo_alerts a
           join slo_performance p on p.slo_id = a.slo_id and p.business_date = a.business_date
          where a.kind = 'late' order by 1",
    )
    .fetch_all(&env.pool)
    .await?;
    println!(
        "  timers: woke min {:.1} ms, p50 {:.1} ms, max {:.1} ms after the expected end",
        woke.first().copied().unwrap_or(f64::NAN),
        percentile(&woke, 0.5),
        woke.last().copied().unwrap_or(f64::NAN)
    );
    let mut delays: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from (e.occurred_at - p.expected_end))::float8 * 1000
           from slo_alerts a
           join events e on e.id = a.event_id
           join slo_performance p on p.slo_id = a.slo_id and p.business_date = a.business_date
          where a.kind = 'late'",
    )
    .fetch_all(&env.pool)
    .await?;
    delays.sort_by(f64::total_cmp);
    let events = count(
        &env.pool,
        "select count(*) from events where type = 'slo.late'",
    )
    .await?;
    let wrong = count(
        &env.pool,
        &format!(
            "select count(*) from slo_alerts a join slo_performance p
               on p.slo_id = a.slo_id and p.business_date = a.business_date
              where a.business_date = '{date}' and p.status = 'on_time'"
        ),
    )
    .await?;
    println!(
        "  slo.late: {} alerts, {events} events (expected {expected_late}), {wrong} on finished SLOs; expected end → event recorded: min {:.0} ms, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        delays.len(),
        delays.first().copied().unwrap_or(f64::NAN),
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN),
    );
    anyhow::ensure!(
        events == expected_late && delays.len() as i64 == expected_late && wrong == 0,
        "alerts were lost, duplicated or wrong"
    );
    Ok(())
}
