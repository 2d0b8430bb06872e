//! SloSupervisor: one SloTracker per SLO of the customers on the shards this node owns.
//!
//! A tracker keeps its SLO's `slo_performance` rows current and raises its alerts
//! (`not_started`, `late`, `breached`) once per business date:
//!
//! * **reports** wake it: a job report's NOTIFY (`customer:date:application:job`) reaches the
//!   supervisor, which hands the date to the trackers of the SLOs that depend on that job;
//! * **timers** wake it at the earliest instant a row can change without a report (an expected
//!   start plus its grace, an expected end, a deadline) or at the next local midnight — one
//!   `send_after`, re-armed after every evaluation, never a poll;
//! * whenever it wakes it re-evaluates every *live* date
//!   ([`tranche_core::slo::tracking::live_dates`]) plus the dates just reported, so a
//!   notification or timer missed while the node was down is made up at the next one (and at
//!   start).
//!
//! A notification carries the whole report, and a tracker keeps its live dates' reports in
//! memory (read once; read again at each timer, which repairs a missed notification), so a
//! report costs no read. Reports arriving in a burst are coalesced: a `Reported` message queues
//! one `Flush` behind the messages already waiting, so a burst of reports costs one evaluation
//! — and a write only if a row changed.
//! The rules are the core's; rows and alert markers are written through [`SloStore::record`],
//! fenced by the shard's epoch, so a node that lost the shard writes nothing and an alert is
//! raised at most once per SLO and date (and occurrence of a repeating job) on any node,
//! across restarts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;

use super::billing::forward_shards;
use super::children::{Children, fenced};
use super::config::{EngineConfig, jittered_backoff};
use super::ports::{Fence, OwnedShards, SloKey, SloStore, StoreError, TrackedSlo};
use tranche_core::slo::performance::{self, Alert, Performance, Report, Status};
use tranche_core::slo::tracking;

/// What the trackers of a node share.
pub struct SloCtx {
    pub config: EngineConfig,
    pub store: Arc<dyn SloStore>,
}

/// A change to SLO definitions, from the database's notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloChange {
    /// An SLO was created, changed or deleted.
    Slo(i64),
    /// A calendar (or its holidays) changed: its SLOs reload.
    Calendar(i64),
}

impl SloChange {
    /// Parses a `tranche_slos` notification payload (`slo:<id>`, `calendar:<id>`).
    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(':')?;
        let id = id.parse().ok()?;
        match kind {
            "slo" => Some(Self::Slo(id)),
            "calendar" => Some(Self::Calendar(id)),
            _ => None,
        }
    }
}

pub struct SloSupervisor;

pub struct SloArgs {
    pub ctx: Arc<SloCtx>,
    pub shards: watch::Receiver<OwnedShards>,
}

/// A job report, as its notification carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReported {
    pub customer_id: i64,
    pub date: NaiveDate,
    pub application: String,
    /// The report itself (its job names whom it wakes).
    pub report: Report,
}

pub enum SloMsg {
    Shards(OwnedShards),
    Reconcile,
    /// A job reported for a business date.
    Reported(JobReported),
    Changed(SloChange),
    /// Applies the changes gathered since the last time.
    ApplyChanges,
    /// SLOs with a tracker here.
    Tracked(RpcReplyPort<Vec<i64>>),
}

pub struct SloSupervisorState {
    ctx: Arc<SloCtx>,
    owned: OwnedShards,
    trackers: Children<i64, TrackerMsg>,
    keys: HashMap<i64, SloKey>,
    /// The SLOs depending on each (customer, application, job): whom a report wakes.
    by_job: HashMap<(i64, String, String), Vec<i64>>,
    /// Changes not applied yet (an `ApplyChanges` is queued while this is not empty).
    changes: Vec<SloChange>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Actor for SloSupervisor {
    type Msg = SloMsg;
    type State = SloSupervisorState;
    type Arguments = SloArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SloMsg>,
        args: SloArgs,
    ) -> Result<SloSupervisorState, ActorProcessingErr> {
        myself.send_interval(args.ctx.config.reconcile_interval, || SloMsg::Reconcile);
        let forwarder = forward_shards(args.shards, myself.clone(), SloMsg::Shards);
        Ok(SloSupervisorState {
            ctx: args.ctx,
            owned: OwnedShards::new(),
            trackers: Children::default(),
            keys: HashMap::new(),
            by_job: HashMap::new(),
            changes: Vec::new(),
            forwarder,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SloMsg>,
        msg: SloMsg,
        state: &mut SloSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SloMsg::Shards(owned) => {
                if owned != state.owned {
                    state.owned = owned;
                    state.reconcile(&myself).await;
                }
            }
            SloMsg::Reconcile => state.reconcile(&myself).await,
            SloMsg::Reported(r) => {
                let key = (r.customer_id, r.application, r.report.job.clone());
                let slos = state.by_job.get(&key);
                for id in slos.into_iter().flatten() {
                    if let Some(tracker) = state.trackers.get(id) {
                        let _ = tracker.cast(TrackerMsg::Reported(r.date, r.report.clone()));
                    }
                }
            }
            SloMsg::Changed(change) => {
                // A burst of changes (SLOs created in bulk) is applied once, behind the
                // messages already queued.
                state.changes.push(change);
                if state.changes.len() == 1 {
                    myself.cast(SloMsg::ApplyChanges)?;
                }
            }
            SloMsg::ApplyChanges => {
                let changes = std::mem::take(&mut state.changes);
                if changes.iter().any(|c| matches!(c, SloChange::Slo(_))) {
                    // New, moved or deleted SLOs: who runs here may have changed.
                    state.reconcile(&myself).await;
                }
                for key in state.keys.values() {
                    let hit = changes.iter().any(|c| match c {
                        SloChange::Slo(id) => key.id == *id,
                        SloChange::Calendar(id) => key.calendar_id == *id,
                    });
                    if hit && let Some(tracker) = state.trackers.get(&key.id) {
                        let _ = tracker.cast(TrackerMsg::Reload);
                    }
                }
            }
            SloMsg::Tracked(reply) => {
                let _ = reply.send(state.trackers.keys().copied().collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SloMsg>,
        event: SupervisionEvent,
        state: &mut SloSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match &event {
            SupervisionEvent::ActorFailed(cell, _)
            | SupervisionEvent::ActorTerminated(cell, ..) => cell.clone(),
            _ => return Ok(()),
        };
        if let Some(slo) = state.trackers.forget(cell.get_id()) {
            if let SupervisionEvent::ActorFailed(_, err) = event {
                tracing::error!(slo.id = slo, error = %err, "SLO tracker failed; restarting");
            }
            state.reconcile(&myself).await;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SloMsg>,
        state: &mut SloSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.forwarder.abort();
        state.trackers.stop_all();
        Ok(())
    }
}

impl SloSupervisorState {
    async fn reconcile(&mut self, myself: &ActorRef<SloMsg>) {
        let keys = if self.owned.is_empty() {
            Vec::new()
        } else {
            let shards: Vec<u16> = self.owned.keys().copied().collect();
            match self.ctx.store.slos_on_shards(&shards).await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(error = %e, "could not list SLOs; keeping the current trackers");
                    return;
                }
            }
        };
        let wanted = fenced(&self.owned, keys.iter().map(|k| (k.id, k.shard)).collect());
        self.by_job.clear();
        for k in &keys {
            for job in &k.jobs {
                self.by_job
                    .entry((k.customer_id, k.application.clone(), job.clone()))
                    .or_default()
                    .push(k.id);
            }
        }
        self.keys = keys.into_iter().map(|k| (k.id, k)).collect();
        let ctx = self.ctx.clone();
        let cell = myself.get_cell();
        self.trackers
            .reconcile(wanted, TrackerMsg::Refence, |id, fence| {
                let ctx = ctx.clone();
                let cell = cell.clone();
                async move {
                    let args = TrackerArgs { ctx, id, fence };
                    match Actor::spawn_linked(None, SloTracker, args, cell).await {
                        Ok((actor, _)) => Some(actor),
                        Err(e) => {
                            tracing::error!(slo.id = id, error = %e, "could not start an SLO tracker");
                            None
                        }
                    }
                }
            })
            .await;
    }
}

pub struct SloTracker;

pub struct TrackerArgs {
    pub ctx: Arc<SloCtx>,
    pub id: i64,
    pub fence: Fence,
}

pub enum TrackerMsg {
    /// A report arrived for this business date.
    Reported(NaiveDate, Report),
    /// Evaluates the dirty and live dates (queued once behind a burst of reports).
    Flush,
    /// A timer: re-evaluate the live dates.
    Wake,
    /// The SLO's definition or calendar changed (or it was deleted).
    Reload,
    Refence(Fence),
}

/// What was last written for a date: a row is written again only when this changes (or an
/// alert is still owed), not on every report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    status: Status,
    actual_start: Option<DateTime<Utc>>,
    actual_end: Option<DateTime<Utc>>,
    too_fast: usize,
    wake_at: Option<DateTime<Utc>>,
    /// The alerts due, with their occurrence (`None`: the SLO's own).
    alerts: Vec<(Option<String>, Alert)>,
}

impl From<&Performance> for Written {
    fn from(p: &Performance) -> Self {
        Self {
            status: p.status,
            actual_start: p.actual_start,
            actual_end: p.actual_end,
            too_fast: p.too_fast.len(),
            wake_at: p.wake_at,
            alerts: p.due().map(|(o, a)| (o.map(str::to_owned), a)).collect(),
        }
    }
}

/// A `send_after` timer.
type Timer = tokio::task::JoinHandle<Result<(), ractor::MessagingErr<TrackerMsg>>>;

pub struct TrackerState {
    ctx: Arc<SloCtx>,
    id: i64,
    fence: Fence,
    slo: Option<Arc<TrackedSlo>>,
    /// Reports notified since the last evaluation.
    pending: Vec<(NaiveDate, Report)>,
    /// The reports of the dates being tracked (read once, then kept up to date).
    reports: HashMap<NaiveDate, Vec<Report>>,
    flush_queued: bool,
    written: HashMap<NaiveDate, Written>,
    timer: Option<(DateTime<Utc>, Timer)>,
    failures: u32,
}

impl Actor for SloTracker {
    type Msg = TrackerMsg;
    type State = TrackerState;
    type Arguments = TrackerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TrackerMsg>,
        args: TrackerArgs,
    ) -> Result<TrackerState, ActorProcessingErr> {
        myself.cast(TrackerMsg::Reload)?;
        Ok(TrackerState {
            ctx: args.ctx,
            id: args.id,
            fence: args.fence,
            slo: None,
            pending: Vec::new(),
            reports: HashMap::new(),
            flush_queued: false,
            written: HashMap::new(),
            timer: None,
            failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TrackerMsg>,
        msg: TrackerMsg,
        state: &mut TrackerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrackerMsg::Reported(date, report) => {
                state.pending.push((date, report));
                if !state.flush_queued {
                    state.flush_queued = true;
                    myself.cast(TrackerMsg::Flush)?;
                }
            }
            TrackerMsg::Flush => {
                state.flush_queued = false;
                state.evaluate(&myself, false).await;
            }
            TrackerMsg::Wake => {
                state.timer = None;
                state.evaluate(&myself, true).await;
            }
            TrackerMsg::Refence(fence) => {
                state.fence = fence;
                state.evaluate(&myself, true).await;
            }
            TrackerMsg::Reload => match state.ctx.store.load_slo(state.id).await {
                Ok(Some(slo)) => {
                    state.slo = Some(Arc::new(slo));
                    state.written.clear();
                    state.evaluate(&myself, true).await;
                }
                Ok(None) => myself.stop(Some("SLO deleted".into())),
                Err(e) => {
                    tracing::warn!(slo.id = state.id, error = %e, "could not load the SLO; retrying");
                    state.failures += 1;
                    state.retry(&myself, TrackerMsg::Reload);
                }
            },
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TrackerMsg>,
        state: &mut TrackerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, timer)) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }
}

impl TrackerState {
    fn retry(&mut self, myself: &ActorRef<TrackerMsg>, msg: TrackerMsg) {
        let wait = jittered_backoff(
            Duration::from_millis(500),
            self.failures,
            Duration::from_secs(30),
        );
        myself.send_after(wait, move || msg);
    }

    /// Evaluates the live dates and those just reported, at the clock's now; writes the rows
    /// that changed (raising their alerts) and re-arms the timer.
    ///
    /// Reports are kept in memory per date: a date's reports are read from the store once
    /// (and again whenever `fresh`: at a timer, a reload or a re-fence, which repairs a missed
    /// notification), and each notified report is added to them — so a report costs the
    /// database nothing here unless its row changes.
    async fn evaluate(&mut self, myself: &ActorRef<TrackerMsg>, fresh: bool) {
        let Some(slo) = self.slo.clone() else { return };
        let now = (self.ctx.config.clock)();
        let mut dates: BTreeSet<NaiveDate> =
            tracking::live_dates(&slo.spec, &slo.calendar, now, slo.created_at)
                .into_iter()
                .collect();
        dates.extend(
            self.pending
                .iter()
                .map(|(d, _)| *d)
                .filter(|d| tracking::tracks(&slo.spec, &slo.calendar, *d, slo.created_at)),
        );
        if let Err(e) = self.read(&slo, &dates, fresh).await {
            return self.failed(myself, e);
        }
        let mut rows = self.rows(&slo, &dates, now);
        // A new alert is raised only on reports read back from the store, never on notified
        // ones alone: a notification lost in between must not make a finished SLO look late.
        if !fresh && rows.iter().any(|r| self.owes_new_alert(r)) {
            if let Err(e) = self.read(&slo, &dates, true).await {
                return self.failed(myself, e);
            }
            rows = self.rows(&slo, &dates, now);
        }
        let changed: Vec<Performance> = rows
            .iter()
            .filter(|r| self.written.get(&r.business_date) != Some(&Written::from(*r)))
            .cloned()
            .collect();
        if !changed.is_empty() {
            let node = &self.ctx.config.node_id;
            match self
                .ctx
                .store
                .record(&slo, &changed, self.fence, now, node)
                .await
            {
                Ok(raised) => {
                    for a in &raised {
                        tracing::info!(
                            slo.id = slo.id,
                            slo.name = %slo.name,
                            business_date = %a.business_date,
                            alert = a.alert.as_str(),
                            occurrence = a.occurrence.as_deref(),
                            "SLO alert raised"
                        );
                    }
                    for r in &changed {
                        self.written.insert(r.business_date, Written::from(r));
                    }
                }
                Err(e) => return self.failed(myself, e),
            }
        }
        self.failures = 0;
        self.written.retain(|d, _| dates.contains(d));
        self.arm(myself, &rows, now);
    }

    /// Brings the reports of `dates` up to date: reads the dates not held (all of them when
    /// `fresh`) from the store, then adds the notified reports.
    async fn read(
        &mut self,
        slo: &TrackedSlo,
        dates: &BTreeSet<NaiveDate>,
        fresh: bool,
    ) -> Result<(), StoreError> {
        self.reports.retain(|d, _| dates.contains(d));
        let unread: Vec<NaiveDate> = dates
            .iter()
            .copied()
            .filter(|d| fresh || !self.reports.contains_key(d))
            .collect();
        if let (Some(&from), Some(&to)) = (unread.first(), unread.last()) {
            let read = self.ctx.store.reports(slo, from, to).await?;
            for d in &unread {
                self.reports.insert(*d, Vec::new());
            }
            for (date, report) in read {
                if let Some(list) = self.reports.get_mut(&date) {
                    list.push(report);
                }
            }
        }
        for (date, report) in self.pending.drain(..) {
            if let Some(list) = self.reports.get_mut(&date)
                && !list.iter().any(|r| {
                    r.job == report.job && r.run_id == report.run_id && r.kind == report.kind
                })
            {
                list.push(report);
            }
        }
        Ok(())
    }

    fn rows(
        &self,
        slo: &TrackedSlo,
        dates: &BTreeSet<NaiveDate>,
        now: DateTime<Utc>,
    ) -> Vec<Performance> {
        dates
            .iter()
            .map(|d| {
                let reports = self.reports.get(d).map(Vec::as_slice).unwrap_or(&[]);
                performance::evaluate(&slo.spec, &slo.calendar, *d, reports, now)
            })
            .collect()
    }

    /// Whether `row` has an alert not yet written for its date.
    fn owes_new_alert(&self, row: &Performance) -> bool {
        let written = self.written.get(&row.business_date);
        row.due().any(|(o, a)| {
            !written.is_some_and(|w| {
                w.alerts
                    .iter()
                    .any(|(wo, wa)| *wa == a && wo.as_deref() == o)
            })
        })
    }

    fn failed(&mut self, myself: &ActorRef<TrackerMsg>, e: StoreError) {
        match e {
            // The supervisor stops or re-fences this tracker at its next reconciliation.
            StoreError::Fenced { .. } => {
                tracing::info!(slo.id = self.id, error = %e, "SLO tracker fenced off; waiting")
            }
            e => {
                tracing::warn!(slo.id = self.id, error = %e, "SLO evaluation failed; retrying");
                self.failures += 1;
                self.retry(myself, TrackerMsg::Wake);
            }
        }
    }

    /// One timer at the next instant a row may change (or the next local midnight).
    fn arm(&mut self, myself: &ActorRef<TrackerMsg>, rows: &[Performance], now: DateTime<Utc>) {
        let Some(slo) = &self.slo else { return };
        let at = tracking::next_wake(&slo.calendar, rows, now);
        if self.timer.as_ref().is_some_and(|(t, _)| *t == at) {
            return;
        }
        if let Some((_, old)) = self.timer.take() {
            old.abort();
        }
        // From the clock now, not from the evaluation's start: the writes took time.
        let wait = (at - (self.ctx.config.clock)())
            .to_std()
            .unwrap_or_default()
            + Duration::from_millis(1);
        self.timer = Some((at, myself.send_after(wait, || TrackerMsg::Wake)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_payloads_parse() {
        assert_eq!(SloChange::parse("slo:7"), Some(SloChange::Slo(7)));
        assert_eq!(SloChange::parse("calendar:3"), Some(SloChange::Calendar(3)));
        assert_eq!(SloChange::parse("slo:x"), None);
        assert_eq!(SloChange::parse("service:1"), None);
    }
}
