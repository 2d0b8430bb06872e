//! The SLO tracker's timers on paused tokio time: alerts fire at the exact instants the core
//! names (expected start plus grace, expected end, deadline), a new business date opens at
//! local midnight, and nothing polls in between.
//!
//! The database port is an in-memory double here *only* so that time can be paused; the
//! PostgreSQL adapter (`PgSloStore`) and the NOTIFY path are exercised end to end in the
//! `tranche` crate's `slo_tracking` test.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use ractor::Actor;
use tokio::sync::watch;
use tranche_actors::EngineConfig;
use tranche_actors::config::tokio_clock;
use tranche_actors::ports::{
    Fence, OwnedShards, RaisedAlert, SloKey, SloStore, StoreError, TrackedSlo,
};
use tranche_actors::slo_tracker::{JobReported, SloArgs, SloCtx, SloMsg, SloSupervisor};
use tranche_core::slo::calendar::{Calendar, CalendarKind, Offset};
use tranche_core::slo::performance::{
    Alert, JobExpectation, Performance, Repeat, Report, ReportKind, SloSpec, Status,
};

#[derive(Default)]
struct Memory {
    reports: Vec<(NaiveDate, Report)>,
    rows: BTreeMap<NaiveDate, Performance>,
    markers: HashSet<(NaiveDate, Option<String>, Alert)>,
    /// (evaluation instant, date, occurrence, alert raised then)
    raised: Vec<(DateTime<Utc>, NaiveDate, Option<String>, Alert)>,
    records: usize,
}

struct MemoryStore {
    slo: TrackedSlo,
    memory: Arc<Mutex<Memory>>,
}

#[async_trait::async_trait]
impl SloStore for MemoryStore {
    async fn slos_on_shards(&self, shards: &[u16]) -> Result<Vec<SloKey>, StoreError> {
        Ok(shards
            .contains(&1)
            .then(|| SloKey {
                id: self.slo.id,
                customer_id: self.slo.customer_id,
                application: self.slo.application.clone(),
                jobs: self.slo.spec.jobs.iter().map(|j| j.job.clone()).collect(),
                calendar_id: 1,
                shard: 1,
            })
            .into_iter()
            .collect())
    }
    async fn load_slo(&self, _: i64) -> Result<Option<TrackedSlo>, StoreError> {
        Ok(Some(self.slo.clone()))
    }
    async fn reports(
        &self,
        _: &TrackedSlo,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, Report)>, StoreError> {
        let m = self.memory.lock().unwrap();
        Ok(m.reports
            .iter()
            .filter(|(d, _)| *d >= from && *d <= to)
            .cloned()
            .collect())
    }
    async fn record(
        &self,
        _: &TrackedSlo,
        rows: &[Performance],
        _: Fence,
        now: DateTime<Utc>,
        _: &str,
    ) -> Result<Vec<RaisedAlert>, StoreError> {
        let mut m = self.memory.lock().unwrap();
        m.records += 1;
        let mut raised = Vec::new();
        for r in rows {
            m.rows.insert(r.business_date, r.clone());
            for (o, a) in r.due() {
                let occurrence = o.map(str::to_owned);
                if m.markers.insert((r.business_date, occurrence.clone(), a)) {
                    m.raised.push((now, r.business_date, occurrence.clone(), a));
                    raised.push(RaisedAlert {
                        business_date: r.business_date,
                        alert: a,
                        occurrence,
                    });
                }
            }
        }
        Ok(raised)
    }
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// A supervisor owning shard 1 at 22:00 on the 3rd (paused time), tracking `slo`.
async fn start(slo: TrackedSlo, memory: Arc<Mutex<Memory>>) -> ractor::ActorRef<SloMsg> {
    let mut config = EngineConfig::new("paused");
    config.clock = tokio_clock(t("2026-12-03T22:00:00Z"));
    config.reconcile_interval = Duration::from_secs(3600);
    let (shards_tx, shards) = watch::channel(OwnedShards::new());
    let (supervisor, _) = Actor::spawn(
        None,
        SloSupervisor,
        SloArgs {
            ctx: Arc::new(SloCtx {
                config,
                store: Arc::new(MemoryStore { slo, memory }),
            }),
            shards,
        },
    )
    .await
    .unwrap();
    shards_tx.send_replace([(1, 1)].into());
    // The sender must outlive the test: the supervisor's forwarder ends with it.
    std::mem::forget(shards_tx);
    tokio::time::sleep(Duration::from_secs(1)).await;
    supervisor
}

/// The overdraft run: 23:00 → 03:00 the next day, 30 min start grace, `tolerance`.
fn overdraft(tolerance: chrono::Duration) -> TrackedSlo {
    TrackedSlo {
        id: 7,
        customer_id: 1,
        name: "overdraft".into(),
        application: "foxfire".into(),
        spec: SloSpec {
            jobs: vec![JobExpectation {
                job: "overdraft".into(),
                expected_start: Offset::parse("23:00").unwrap(),
                expected_end: Offset::parse("27:00").unwrap(),
                min_duration: None,
                repeat: None,
            }],
            start_grace: chrono::Duration::minutes(30),
            tolerance,
        },
        calendar: Calendar::new(CalendarKind::EveryDay, "UTC", []).unwrap(),
        // Created after the 2nd's deadline: that date is not tracked.
        created_at: t("2026-12-03T12:00:00Z"),
    }
}

/// The alerts raised, at the whole second (timers are armed a millisecond past their
/// instant).
fn raised_at(m: &Memory) -> Vec<(DateTime<Utc>, NaiveDate, Option<String>, Alert)> {
    m.raised
        .iter()
        .map(|(at, date, o, a)| {
            (
                *at - chrono::Duration::milliseconds(at.timestamp_subsec_millis() as i64),
                *date,
                o.clone(),
                *a,
            )
        })
        .collect()
}

fn run(kind: ReportKind, at: &str) -> Report {
    Report {
        job: "overdraft".into(),
        run_id: "r1".into(),
        kind,
        at: t(at),
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_notification_never_makes_a_finished_slo_late() {
    let memory = Arc::new(Mutex::new(Memory::default()));
    let supervisor = start(overdraft(chrono::Duration::zero()), memory.clone()).await;
    // Both reports are stored, neither notified (the listener was reconnecting).
    memory.lock().unwrap().reports.extend([
        (
            d("2026-12-03"),
            run(ReportKind::Start, "2026-12-03T23:05:00Z"),
        ),
        (
            d("2026-12-03"),
            run(ReportKind::Succeed, "2026-12-04T01:00:00Z"),
        ),
    ]);
    // Through 03:00, the expected end (and deadline): the timer reads the reports back.
    tokio::time::sleep(Duration::from_secs(5 * 3600 + 30 * 60)).await;
    let m = memory.lock().unwrap();
    assert_eq!(m.rows[&d("2026-12-03")].status, Status::OnTime);
    // Not `not_started` at 23:30 either: that timer read the start back.
    let raised: Vec<Alert> = m.raised.iter().map(|r| r.3).collect();
    assert_eq!(raised, vec![], "no alert on a finished SLO");
    drop(m);
    supervisor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn alerts_fire_at_their_instants_and_a_new_date_opens_at_midnight() {
    let slo = overdraft(chrono::Duration::hours(1));
    let memory = Arc::new(Mutex::new(Memory::default()));
    let supervisor = start(slo, memory.clone()).await;
    let tracked = ractor::call!(supervisor, SloMsg::Tracked).unwrap();
    assert_eq!(tracked, vec![7]);

    // 23:10: the run starts (a report).
    tokio::time::sleep(Duration::from_secs(70 * 60 - 1)).await;
    let report = Report {
        job: "overdraft".into(),
        run_id: "r1".into(),
        kind: ReportKind::Start,
        at: t("2026-12-03T23:10:00Z"),
    };
    memory
        .lock()
        .unwrap()
        .reports
        .push((d("2026-12-03"), report.clone()));
    supervisor
        .cast(SloMsg::Reported(JobReported {
            customer_id: 1,
            date: d("2026-12-03"),
            application: "foxfire".into(),
            report,
        }))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        memory.lock().unwrap().rows[&d("2026-12-03")].status,
        Status::InProgress
    );

    // Run the night through to 05:00.
    tokio::time::sleep(Duration::from_secs(5 * 3600 + 49 * 60)).await;
    let m = memory.lock().unwrap();
    let raised: Vec<(DateTime<Utc>, NaiveDate, Alert)> = raised_at(&m)
        .into_iter()
        .map(|(at, date, _, a)| (at, date, a))
        .collect();
    assert_eq!(
        raised,
        vec![
            (t("2026-12-04T03:00:00Z"), d("2026-12-03"), Alert::Late),
            (t("2026-12-04T04:00:00Z"), d("2026-12-03"), Alert::Breached),
        ],
        "started in time, so no not_started; late at the expected end; breached at the deadline"
    );
    assert_eq!(m.rows[&d("2026-12-03")].status, Status::Missed);
    // The 4th opened at midnight: pending, waiting for 23:30.
    let next = &m.rows[&d("2026-12-04")];
    assert_eq!(next.status, Status::Pending);
    assert_eq!(next.wake_at, Some(t("2026-12-04T23:30:00Z")));
    // Timer-driven, not polled: the first evaluation, the report, midnight, 03:00 and 04:00.
    assert!(m.records <= 6, "{} writes over seven hours", m.records);
    drop(m);
    supervisor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn each_occurrence_of_a_half_hourly_job_is_late_at_its_own_end() {
    // tx-summary every 30 minutes from 22:10 to 23:40, each due 10 minutes after its start,
    // 5 minutes of tolerance.
    let mut slo = overdraft(chrono::Duration::minutes(5));
    slo.spec.jobs = vec![JobExpectation {
        job: "tx-summary".into(),
        expected_start: Offset::parse("22:10").unwrap(),
        expected_end: Offset::parse("22:20").unwrap(),
        min_duration: None,
        repeat: Some(Repeat {
            every: chrono::Duration::minutes(30),
            until: Offset::parse("23:40").unwrap(),
        }),
    }];
    let memory = Arc::new(Mutex::new(Memory::default()));
    let supervisor = start(slo, memory.clone()).await;
    let date = d("2026-12-03");
    let mut clock = t("2026-12-03T22:00:01Z");
    // Reports at their instants: 22:10 on time, 22:40 never runs, 23:10 finishes at 23:22
    // (late, within the tolerance), 23:40 on time.
    for (run_id, kind, at) in [
        ("a", ReportKind::Start, "2026-12-03T22:10:00Z"),
        ("a", ReportKind::Succeed, "2026-12-03T22:16:00Z"),
        ("c", ReportKind::Start, "2026-12-03T23:10:00Z"),
        ("c", ReportKind::Succeed, "2026-12-03T23:22:00Z"),
        ("d", ReportKind::Start, "2026-12-03T23:40:00Z"),
        ("d", ReportKind::Succeed, "2026-12-03T23:45:00Z"),
    ] {
        let at = t(at);
        tokio::time::sleep((at - clock).to_std().unwrap()).await;
        clock = at;
        let report = Report {
            job: "tx-summary".into(),
            run_id: run_id.into(),
            kind,
            at,
        };
        memory.lock().unwrap().reports.push((date, report.clone()));
        supervisor
            .cast(SloMsg::Reported(JobReported {
                customer_id: 1,
                date,
                application: "foxfire".into(),
                report,
            }))
            .unwrap();
    }
    // Through midnight.
    tokio::time::sleep((t("2026-12-04T00:05:00Z") - clock).to_std().unwrap()).await;
    let m = memory.lock().unwrap();
    let occurrence = |o: &str| Some(o.to_owned());
    assert_eq!(
        raised_at(&m),
        vec![
            (
                t("2026-12-03T22:50:00Z"),
                date,
                occurrence("tx-summary@22:40"),
                Alert::Late
            ),
            (
                t("2026-12-03T22:55:00Z"),
                date,
                occurrence("tx-summary@22:40"),
                Alert::Breached
            ),
            (
                t("2026-12-03T23:20:00Z"),
                date,
                occurrence("tx-summary@23:10"),
                Alert::Late
            ),
            // The day itself never finished: 22:40 did not run.
            (t("2026-12-03T23:50:00Z"), date, None, Alert::Late),
            (t("2026-12-03T23:55:00Z"), date, None, Alert::Breached),
        ]
    );
    assert_eq!(m.rows[&date].status, Status::Missed);
    drop(m);
    supervisor.stop(None);
}
