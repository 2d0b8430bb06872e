//! DomainActor: probes one domain through both CDNs and runs its storm state machine.
//!
//! One per service domain, on the node that owns the domain's shard. Every probe interval it
//! probes the primary and the backup target concurrently (in spawned tasks, never inside
//! `handle`), records each result in that CDN's window and streak, and evaluates the storm
//! machine. A `blocked` probe (a private address the operator does not allow) says nothing about
//! the CDN and is not counted; a domain whose primary cannot be judged becomes `unknown`, with
//! the reason. While a storm is open the actor asks the store whether its current weights are
//! applied at the DNS provider, so each ramp step waits for the previous one.
//!
//! A decision is committed to the database — state, desired weights and the storm event, fenced
//! by the shard epoch — *before* the actor adopts it, and only while the node's lease holds by
//! its own clock; if the commit fails the actor keeps its old state and re-decides on the next
//! result. A fenced commit means the shard moved to another node: the actor stops.
//!
//! A domain is probed from several vantages (regions) when the cluster has them: the actor on
//! the shard's owner is the *decider*; actors on observing nodes of other vantages
//! (`observer: true`) probe the same way but decide nothing — after each result they send their
//! windows' summary (a [`VantageReport`]) to the node's vantage publisher, which batches them
//! to the deciders. The decider judges each CDN by the policy's quorum of its own view and the
//! fresh reports (a report older than two intervals no longer counts: its vantage is unknown),
//! and records a vantage that sees a CDN down while the quorum does not (`vantage_disagrees`).
//!
//! The domains of one DNS zone probe in the same part of the interval (a phase from the zone's
//! name, spread by the zone's size), so an outage is seen by all of them together and their
//! failovers leave in one ChangeBatch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use super::config::EngineConfig;
use super::observation_writer::ObservationMsg;
use super::ports::{
    Disagreement, DomainSpec, EngineStore, Fence, Observation, PersistedState, StoreError,
    VantageReport, VantageViews,
};
use super::vantage_publisher::PublisherMsg;
use crate::ports::Prober;
use tranche_core::probe::{Cdn, Outcome, ProbeResult};
use tranche_core::storm::{
    Availability, AvailabilityWindow, CdnHealth, DisagreementDamper, Inputs, StormMachine, Streak,
    VantageHealth, Vantages, views,
};

/// Longest delay before a new actor's first probe.
const FIRST_PROBE_SPREAD: Duration = Duration::from_secs(2);

/// Probe ticks fire on this grid: a node's domain timers expire together, tens per wake-up of
/// the runtime, instead of a thread wake-up (on a VM, an expensive one) per probe. Each probe
/// still keeps its exact, drift-free schedule (`next_due`); only its start waits for the next
/// grid instant, at most 50 ms. Measured (BENCHMARKS.md, issue 17): +63% HTTP and +30% HTTPS
/// probes per CPU-second at 2,000 probes/s.
pub const TICK_GRID: Duration = Duration::from_millis(50);

/// The first instant of [`TICK_GRID`] at or after `t` (the grid starts at the first call).
fn on_grid(t: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let grid = TICK_GRID.as_nanos();
    let since = t.saturating_duration_since(epoch).as_nanos();
    epoch + Duration::from_nanos((since.div_ceil(grid) * grid) as u64)
}

/// What every domain actor on a node shares.
pub struct EngineCtx {
    pub config: EngineConfig,
    pub store: Arc<dyn EngineStore>,
    pub prober: Arc<dyn Prober>,
    pub observations: ActorRef<ObservationMsg>,
    /// The node's DNS supervisor, woken after a decision (`None`: DNS steering off).
    pub dns: Option<ActorRef<super::dns_supervisor::DnsMsg>>,
    /// Where observers send their window summaries (`None`: single-vantage engine).
    pub vantages: Option<ActorRef<PublisherMsg>>,
    /// The node's one timer for probe ticks (instead of a timer task per actor).
    pub ticks: crate::tick_wheel::TickWheel,
}

pub struct DomainActor;

pub struct DomainArgs {
    /// Shared with the probe supervisor, which keeps it to compare with the database's.
    pub spec: Arc<DomainSpec>,
    pub fence: Fence,
    /// Probe for another node's decisions (this node observes the shard from its vantage).
    pub observer: bool,
    /// The persisted state, when the caller already loaded it (saves a query per actor at
    /// start-up); `None` makes the actor load it itself.
    pub persisted: Option<Option<PersistedState>>,
    /// How many domains share this domain's zone on the node (spreads the zone's probes).
    pub zone_domains: usize,
    pub ctx: Arc<EngineCtx>,
}

/// Where in the interval a domain probes: the zone's phase plus a per-domain offset within a
/// spread that grows with the zone (1 ms per domain over 50 ms, at most half the interval), so
/// a zone's domains see an outage within a fraction of a second of each other without ever
/// firing all at once.
pub fn probe_phase(
    zone: &str,
    domain_id: i64,
    zone_domains: usize,
    interval: Duration,
) -> Duration {
    let interval_ms = interval.as_millis().max(1) as u64;
    let zone_hash = zone.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let spread_ms = (50 + zone_domains as u64).min(interval_ms / 2).max(1);
    let own = (domain_id as u64).wrapping_mul(2_654_435_761) % spread_ms;
    Duration::from_millis((zone_hash % interval_ms + own) % interval_ms)
}

/// What the storm machine can read from one vantage's report: its judgement of each CDN.
fn verdict(r: &VantageReport, policy: &tranche_core::domain::PolicyParams) -> [bool; 6] {
    let known = |h: &CdnHealth| matches!(h.availability, Availability::Known { .. });
    [
        known(&r.primary),
        r.primary.is_down(policy),
        r.primary.availability.is_healthy(policy.threshold_avail),
        r.primary.streak.successes() >= policy.consecutive_successes.max(1) as u32,
        known(&r.backup),
        r.backup.can_take_traffic(policy),
    ]
}

pub struct DomainState {
    spec: Arc<DomainSpec>,
    fence: Fence,
    ctx: Arc<EngineCtx>,
    primary: AvailabilityWindow,
    backup: AvailabilityWindow,
    primary_streak: Streak,
    backup_streak: Streak,
    /// Why the primary's last probe could not be counted (it was blocked), if it could not.
    primary_blocked: Option<String>,
    machine: StormMachine,
    /// Observing for another node: report windows, decide nothing.
    observer: bool,
    /// The latest summary from each other vantage, with when it arrived.
    remote: BTreeMap<String, (VantageReport, tokio::time::Instant)>,
    /// The vantages that disagreed with the quorum at the last record of it.
    disagreeing: Vec<Disagreement>,
    /// Holds disagreements back until they have lasted a window.
    damper: DisagreementDamper,
    /// Stamped on timer messages; bumped when the schedule changes so stale ticks are dropped.
    generation: u64,
    /// Delay after the first probe that moves the actor onto its phase within the interval.
    realign: Option<Duration>,
    /// When the next tick is due. Ticks follow this fixed schedule rather than "interval after
    /// the last one", so handling delays on a busy node do not stretch the probe interval.
    next_due: Option<tokio::time::Instant>,
}

pub enum DomainMsg {
    /// Time to probe; carries the timer generation it was scheduled under.
    Tick(u64),
    /// A probe through `Cdn` finished.
    ProbeDone(Cdn, ProbeResult),
    /// The domain's configuration or the shard's fencing epoch changed.
    Update(Arc<DomainSpec>, Fence),
    /// Another vantage's window summary (deciders only).
    Remote(Box<VantageReport>),
}

impl Actor for DomainActor {
    type Msg = DomainMsg;
    type State = DomainState;
    type Arguments = DomainArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DomainMsg>,
        args: DomainArgs,
    ) -> Result<DomainState, ActorProcessingErr> {
        let now = (args.ctx.config.clock)();
        let persisted = match args.persisted {
            Some(p) => p,
            None if args.observer => None,
            None => args.ctx.store.load_state(args.spec.id).await?,
        };
        let machine = match persisted {
            Some(p) => StormMachine::restore(p.state, p.since, p.weights, now),
            None => StormMachine::new(now),
        };
        let state = DomainState {
            spec: args.spec,
            fence: args.fence,
            ctx: args.ctx,
            primary: AvailabilityWindow::new(),
            backup: AvailabilityWindow::new(),
            primary_streak: Streak::default(),
            backup_streak: Streak::default(),
            primary_blocked: None,
            machine,
            observer: args.observer,
            remote: BTreeMap::new(),
            disagreeing: Vec::new(),
            damper: DisagreementDamper::default(),
            generation: 0,
            realign: None,
            next_due: None,
        };
        // The first probe comes within two seconds (a node taking over a shard probes its new
        // domains promptly); later probes follow the zone's phase (see `probe_phase`).
        let interval_ms = state.interval().as_millis().max(1) as u64;
        let hash = (state.spec.id as u64).wrapping_mul(2_654_435_761);
        let first = hash % interval_ms.min(FIRST_PROBE_SPREAD.as_millis() as u64);
        let phase = probe_phase(
            &state.spec.zone,
            state.spec.id,
            args.zone_domains,
            state.interval(),
        )
        .as_millis() as u64;
        let mut state = state;
        state.realign = Some(Duration::from_millis(interval_ms + phase - first));
        let at = on_grid(tokio::time::Instant::now() + Duration::from_millis(first));
        state.ctx.ticks.schedule(at, myself.clone(), 0);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<DomainMsg>,
        msg: DomainMsg,
        state: &mut DomainState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DomainMsg::Tick(generation) if generation == state.generation => {
                let now = tokio::time::Instant::now();
                let step = state.realign.take().unwrap_or_else(|| state.interval());
                let due = state.next_due.map_or(now + step, |d| d + step).max(now);
                state.next_due = Some(due);
                state
                    .ctx
                    .ticks
                    .schedule(on_grid(due), myself.clone(), generation);
                if state.spec.primary_target.is_none() && !state.observer {
                    // Nothing to probe through the primary: time alone moves the machine (to
                    // `unknown`).
                    Box::pin(state.evaluate(&myself)).await; // boxed: see `ProbeDone`
                }
                for cdn in [Cdn::Primary, Cdn::Backup] {
                    if let Some(request) = state.spec.probe_request(cdn) {
                        let prober = state.ctx.prober.clone();
                        let me = myself.clone();
                        tokio::spawn(async move {
                            let result = prober.probe(&request).await;
                            // The actor may have stopped meanwhile; nothing to do then.
                            let _ = me.cast(DomainMsg::ProbeDone(cdn, result));
                        });
                    }
                }
            }
            DomainMsg::Tick(_) => {}
            // Boxed: the actor's task is allocated for the largest future it may await, and
            // every idle actor would pay for this one (issue 17: 1.3 KB per actor).
            DomainMsg::ProbeDone(cdn, result) => {
                Box::pin(state.on_result(&myself, cdn, result)).await
            }
            DomainMsg::Remote(report) => {
                if !state.observer && report.vantage != state.ctx.config.vantage {
                    // Re-evaluate at once only when the vantage's verdict changed (or it is new):
                    // that is what can move the quorum; the next own probe takes the rest.
                    let policy = &state.spec.policy;
                    let changed = state
                        .remote
                        .get(&report.vantage)
                        .is_none_or(|(old, _)| verdict(old, policy) != verdict(&report, policy));
                    let arrived = tokio::time::Instant::now();
                    state
                        .remote
                        .insert(report.vantage.clone(), (*report, arrived));
                    if changed {
                        Box::pin(state.evaluate(&myself)).await;
                    }
                }
            }
            DomainMsg::Update(spec, fence) => {
                if spec.primary_target != state.spec.primary_target {
                    state.primary.clear();
                    state.primary_streak = Streak::default();
                    state.primary_blocked = None;
                }
                if spec.primary_target != state.spec.primary_target
                    || spec.backup_target != state.spec.backup_target
                {
                    // The other vantages' windows describe the old targets.
                    state.remote.clear();
                }
                if spec.backup_target != state.spec.backup_target {
                    state.backup.clear();
                    state.backup_streak = Streak::default();
                }
                let reschedule =
                    spec.policy.probe_interval_seconds != state.spec.policy.probe_interval_seconds;
                state.spec = spec;
                state.fence = fence;
                if reschedule {
                    state.next_due = None;
                    state.generation += 1;
                    let generation = state.generation;
                    // Fails only when the actor is stopping, and then no tick is wanted.
                    let _ = myself.cast(DomainMsg::Tick(generation));
                }
            }
        }
        Ok(())
    }
}

impl DomainState {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.spec.policy.probe_interval_seconds.max(1) as u64)
    }

    fn health(&mut self, cdn: Cdn, now: chrono::DateTime<chrono::Utc>) -> CdnHealth {
        let policy = &self.spec.policy;
        let (window, streak, configured) = match cdn {
            Cdn::Primary => (
                &mut self.primary,
                self.primary_streak,
                self.spec.primary_target.is_some(),
            ),
            Cdn::Backup => (
                &mut self.backup,
                self.backup_streak,
                self.spec.backup_target.is_some(),
            ),
        };
        if !configured {
            return CdnHealth::new(Availability::Unknown { attempts: 0 }, Streak::default());
        }
        CdnHealth::new(
            window.availability(now, policy.window_seconds, policy.min_samples),
            streak,
        )
    }

    /// Why the primary cannot be judged (for the `unknown` state).
    fn unknown_reason(&self, primary: &Vantages) -> String {
        if self.spec.primary_target.is_none() {
            "no primary target is configured".to_owned()
        } else if let Some(error) = &self.primary_blocked {
            format!("probes through the primary are blocked: {error}")
        } else {
            let attempts = primary.own().map_or(0, |h| h.availability.attempts());
            format!(
                "too few probe results through the primary in the window ({} of {})",
                attempts, self.spec.policy.min_samples
            )
        }
    }

    async fn on_result(&mut self, myself: &ActorRef<DomainMsg>, cdn: Cdn, result: ProbeResult) {
        let now = (self.ctx.config.clock)();
        // A blocked probe never reached the CDN: it says nothing about its health.
        if result.outcome != Outcome::Blocked {
            let ok = result.ok();
            match cdn {
                Cdn::Primary => {
                    self.primary.record(now, ok);
                    self.primary_streak.record(ok);
                    self.primary_blocked = None;
                }
                Cdn::Backup => {
                    self.backup.record(now, ok);
                    self.backup_streak.record(ok);
                }
            }
        } else if cdn == Cdn::Primary {
            self.primary_blocked = Some(result.error.clone().unwrap_or_default());
        }
        if self.observer {
            let report = VantageReport {
                domain_id: self.spec.id,
                vantage: self.ctx.config.vantage.clone(),
                node_id: self.ctx.config.node_id.clone(),
                primary: self.health(Cdn::Primary, now),
                backup: self.health(Cdn::Backup, now),
            };
            if let Some(publisher) = &self.ctx.vantages {
                let _ = publisher.cast(PublisherMsg::Report(report));
            }
            return;
        }
        let own = self.health(cdn, now).availability;
        // Every vantage's view, built once: the decision below judges it, and with other
        // vantages reporting `/state` shows it (live, through the observation writer's batches:
        // no write of its own).
        let (primary, backup) = (
            self.vantages(Cdn::Primary, now),
            self.vantages(Cdn::Backup, now),
        );
        let vantages = if primary.views.len() > 1 {
            views(&primary, &backup, &self.spec.policy)
        } else {
            Vec::new()
        };
        let _ = self
            .ctx
            .observations
            .cast(ObservationMsg::Record(Observation {
                domain_id: self.spec.id,
                cdn,
                at: now,
                outcome: result.outcome,
                latency_ms: result.latency_ms,
                status: result.status,
                error: result.error,
                cert_expires_at: result.cert_expires_at,
                availability: own.ratio(),
                vantages,
            }));
        self.decide(myself, now, primary, backup).await;
    }

    /// Whether the machine's current weights are in effect at the DNS provider, asked only
    /// while it waits for that (a storm is open). Without DNS steering on this node there is
    /// nothing to wait for.
    async fn step_applied(&self) -> bool {
        if !self.machine.awaits_provider() {
            return false;
        }
        if self.ctx.dns.is_none() {
            return true;
        }
        match self
            .ctx
            .store
            .step_applied(self.spec.id, self.machine.weights())
            .await
        {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(domain.id = self.spec.id, error = %e, "could not read the applied DNS weights; the ramp waits");
                false
            }
        }
    }

    /// Every vantage's view of `cdn`: this node's first, then each fresh remote summary.
    fn vantages(&mut self, cdn: Cdn, now: chrono::DateTime<chrono::Utc>) -> Vantages {
        let own = VantageHealth {
            vantage: self.ctx.config.vantage.clone(),
            node_id: self.ctx.config.node_id.clone(),
            health: self.health(cdn, now),
        };
        // Two intervals plus the report delay: one missed report is tolerated, a vantage that
        // stopped reporting (its node died, the shard moved) soon counts as unknown.
        let fresh = self.interval() * 2 + self.ctx.config.vantage_report_interval * 2;
        let arrived_after = tokio::time::Instant::now().checked_sub(fresh);
        self.remote
            .retain(|_, (_, at)| arrived_after.is_none_or(|after| *at >= after));
        let remote = self.remote.values().map(|(r, _)| VantageHealth {
            vantage: r.vantage.clone(),
            node_id: r.node_id.clone(),
            health: match cdn {
                Cdn::Primary => r.primary,
                Cdn::Backup => r.backup,
            },
        });
        Vantages {
            views: std::iter::once(own).chain(remote).collect(),
        }
    }

    /// Records which vantages disagree with the quorum, with every vantage's view, when that
    /// changes (rarely: a network problem near a vantage comes or goes), never per probe.
    async fn note_disagreement(&mut self, at: chrono::DateTime<chrono::Utc>, inputs: &Inputs) {
        let policy = &self.spec.policy;
        // In a maintenance window nothing is alerted on, disagreements included.
        let seen: Vec<Disagreement> = if inputs.maintenance {
            Vec::new()
        } else {
            [
                (Cdn::Primary, &inputs.primary),
                (Cdn::Backup, &inputs.backup),
            ]
            .into_iter()
            .flat_map(|(cdn, v)| {
                v.disagreeing(policy)
                    .into_iter()
                    .map(move |d| Disagreement {
                        vantage: d.vantage.clone(),
                        node_id: d.node_id.clone(),
                        cdn,
                    })
            })
            .collect()
        };
        let lasting = self.damper.settle(
            at,
            seen.iter().map(|d| (d.vantage.clone(), d.cdn)),
            chrono::TimeDelta::seconds(i64::from(policy.window_seconds)),
        );
        let now: Vec<Disagreement> = seen
            .into_iter()
            .filter(|d| lasting.contains(&(d.vantage.clone(), d.cdn)))
            .collect();
        let key = |d: &Disagreement| (d.vantage.clone(), d.cdn.as_str());
        let same = now.len() == self.disagreeing.len()
            && now.iter().map(key).eq(self.disagreeing.iter().map(key));
        if same || !self.ctx.config.lease.is_valid() {
            return;
        }
        let views = VantageViews {
            primary: &inputs.primary,
            backup: &inputs.backup,
        };
        match self
            .ctx
            .store
            .record_disagreement(&self.spec, &now, views, self.fence)
            .await
        {
            Ok(()) => {
                for d in now
                    .iter()
                    .filter(|d| !self.disagreeing.iter().any(|o| key(o) == key(d)))
                {
                    tracing::warn!(domain.id = self.spec.id, vantage = %d.vantage, node = %d.node_id, cdn = d.cdn.as_str(), "a vantage sees the CDN down while the quorum does not");
                }
                self.disagreeing = now;
            }
            Err(e) => {
                tracing::warn!(domain.id = self.spec.id, error = %e, "could not record a vantage disagreement; will retry")
            }
        }
    }

    async fn evaluate(&mut self, myself: &ActorRef<DomainMsg>) {
        let now = (self.ctx.config.clock)();
        let (primary, backup) = (
            self.vantages(Cdn::Primary, now),
            self.vantages(Cdn::Backup, now),
        );
        self.decide(myself, now, primary, backup).await;
    }

    /// Runs the storm machine on every vantage's view of both CDNs at `now`.
    async fn decide(
        &mut self,
        myself: &ActorRef<DomainMsg>,
        now: chrono::DateTime<chrono::Utc>,
        primary: Vantages,
        backup: Vantages,
    ) {
        let inputs = Inputs {
            primary,
            backup,
            step_applied: self.step_applied().await,
            drill_until: self.spec.drill_until,
            maintenance: self.spec.in_maintenance(now),
        };
        let primary = inputs.primary.clone();
        let backup_avail = inputs.backup.availability();
        self.note_disagreement(now, &inputs).await;

        // Decide on a copy; adopt it only once it is committed.
        let mut next = self.machine.clone();
        let Some(mut decision) = next.evaluate(now, inputs, &self.spec.policy) else {
            self.machine = next;
            return;
        };
        decision.primary_failing_since = self.primary.first_failure();
        if !self.ctx.config.lease.is_valid() {
            // The node's lease has lapsed by its own clock (it was frozen, or cannot reach the
            // database): it may have been deposed. Decide nothing; the owner will.
            tracing::warn!(
                domain.id = self.spec.id,
                "lease expired; not committing a storm decision"
            );
            return;
        }
        let reason = (decision.state == tranche_core::storm::StormState::Unknown)
            .then(|| self.unknown_reason(&primary));
        // A trace per decision; the DNS change that applies it links to it.
        let span = tracing::info_span!(
            "storm.decision",
            domain.id = self.spec.id,
            domain.name = %self.spec.hostname,
            from = decision.previous.as_str(),
            to = decision.state.as_str(),
            weights = %decision.weights,
            storm = ?decision.storm,
        );
        match self
            .ctx
            .store
            .commit_decision(
                &self.spec,
                &decision,
                reason.as_deref(),
                self.fence,
                &self.ctx.config.node_id,
            )
            .instrument(span.clone())
            .await
        {
            Ok(()) => {
                tracing::info!(
                    domain.id = self.spec.id,
                    domain.name = %self.spec.hostname,
                    from = decision.previous.as_str(),
                    to = decision.state.as_str(),
                    weights = %decision.weights,
                    primary_avail = ?primary.availability(),
                    backup_avail = ?backup_avail,
                    vantages = primary.views.len(),
                    reason = reason.as_deref().unwrap_or(""),
                    "storm state changed"
                );
                self.machine = next;
                if let Some(dns) = &self.ctx.dns {
                    let _ = dns.cast(super::dns_supervisor::DnsMsg::Decided(
                        self.spec.zone.clone(),
                        span,
                    ));
                }
            }
            Err(StoreError::Fenced { shard, epoch }) => {
                tracing::warn!(
                    domain.id = self.spec.id,
                    shard,
                    epoch,
                    "shard moved to another node; stopping"
                );
                myself.stop(Some("fenced".into()));
            }
            Err(e) => {
                tracing::warn!(domain.id = self.spec.id, error = %e, "could not commit storm decision; will re-decide");
            }
        }
    }
}

#[cfg(test)]
mod size {
    /// An idle actor's state lives in its task for as long as the domain exists; a field added
    /// here is paid for by every domain on the node (issue 17: the spec is shared, not held).
    #[test]
    fn the_state_stays_small() {
        let state = std::mem::size_of::<super::DomainState>();
        assert!(state <= 320, "DomainState is {state} bytes");
    }
}
