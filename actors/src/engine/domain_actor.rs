//! DomainActor: probes one domain through both CDNs and runs its storm state machine.
//!
//! One per service domain, on the node that owns the domain's shard. Every probe interval it
//! probes the primary and the backup target concurrently (in spawned tasks, never inside
//! `handle`), records each result in that CDN's window, and evaluates the storm machine. A
//! decision is committed to the database — state, desired weights and the storm event, fenced by
//! the shard epoch — *before* the actor adopts it; if the commit fails the actor keeps its old
//! state and re-decides on the next result. A fenced commit means the shard moved to another
//! node: the actor stops.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::config::EngineConfig;
use super::observation_writer::ObservationMsg;
use super::ports::{DomainSpec, EngineStore, Fence, Observation, PersistedState, StoreError};
use crate::probe::{Cdn, ProbeResult, Prober};
use crate::storm::{Availability, AvailabilityWindow, StormMachine};

/// Longest delay before a new actor's first probe.
const FIRST_PROBE_SPREAD: Duration = Duration::from_secs(2);

/// What every domain actor on a node shares.
pub struct EngineCtx {
    pub config: EngineConfig,
    pub store: Arc<dyn EngineStore>,
    pub prober: Arc<dyn Prober>,
    pub observations: ActorRef<ObservationMsg>,
    /// The node's DNS supervisor, woken after a decision (`None`: DNS steering off).
    pub dns: Option<ActorRef<super::dns_supervisor::DnsMsg>>,
}

pub struct DomainActor;

pub struct DomainArgs {
    pub spec: DomainSpec,
    pub fence: Fence,
    /// The persisted state, when the caller already loaded it (saves a query per actor at
    /// start-up); `None` makes the actor load it itself.
    pub persisted: Option<Option<PersistedState>>,
    pub ctx: Arc<EngineCtx>,
}

pub struct DomainState {
    spec: DomainSpec,
    fence: Fence,
    ctx: Arc<EngineCtx>,
    primary: AvailabilityWindow,
    backup: AvailabilityWindow,
    machine: StormMachine,
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
    Update(Box<DomainSpec>, Fence),
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
            machine,
            generation: 0,
            realign: None,
            next_due: None,
        };
        // The first probe comes within two seconds (a node taking over a shard probes its new
        // domains promptly); later probes are spread over the whole interval by a per-domain
        // phase, so thousands of domains never fire in the same millisecond.
        let interval_ms = state.interval().as_millis().max(1) as u64;
        let hash = (state.spec.id as u64).wrapping_mul(2_654_435_761);
        let first = hash % interval_ms.min(FIRST_PROBE_SPREAD.as_millis() as u64);
        let phase = hash % interval_ms;
        let mut state = state;
        state.realign = Some(Duration::from_millis(interval_ms + phase - first));
        myself.send_after(Duration::from_millis(first), move || DomainMsg::Tick(0));
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
                myself.send_after(due - now, move || DomainMsg::Tick(generation));
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
            DomainMsg::ProbeDone(cdn, result) => state.on_result(&myself, cdn, result).await,
            DomainMsg::Update(spec, fence) => {
                let spec = *spec;
                if spec.primary_target != state.spec.primary_target {
                    state.primary.clear();
                }
                if spec.backup_target != state.spec.backup_target {
                    state.backup.clear();
                }
                let reschedule =
                    spec.policy.probe_interval_seconds != state.spec.policy.probe_interval_seconds;
                state.spec = spec;
                state.fence = fence;
                if reschedule {
                    state.next_due = None;
                    state.generation += 1;
                    let generation = state.generation;
                    myself.send_after(Duration::ZERO, move || DomainMsg::Tick(generation));
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

    fn availability(&mut self, cdn: Cdn, now: chrono::DateTime<chrono::Utc>) -> Availability {
        let policy = &self.spec.policy;
        let (window, configured) = match cdn {
            Cdn::Primary => (&mut self.primary, self.spec.primary_target.is_some()),
            Cdn::Backup => (&mut self.backup, self.spec.backup_target.is_some()),
        };
        if !configured {
            return Availability::Unknown { attempts: 0 };
        }
        window.availability(now, policy.window_seconds, policy.min_samples)
    }

    async fn on_result(&mut self, myself: &ActorRef<DomainMsg>, cdn: Cdn, result: ProbeResult) {
        let now = (self.ctx.config.clock)();
        match cdn {
            Cdn::Primary => self.primary.record(now, result.ok()),
            Cdn::Backup => self.backup.record(now, result.ok()),
        }
        let primary = self.availability(Cdn::Primary, now);
        let backup = self.availability(Cdn::Backup, now);
        let own = if cdn == Cdn::Primary { primary } else { backup };
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
            }));

        // Decide on a copy; adopt it only once it is committed.
        let mut next = self.machine.clone();
        let Some(decision) = next.evaluate(now, primary, backup, &self.spec.policy) else {
            self.machine = next;
            return;
        };
        match self
            .ctx
            .store
            .commit_decision(&self.spec, &decision, self.fence, &self.ctx.config.node_id)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    domain.id = self.spec.id,
                    domain.name = %self.spec.hostname,
                    from = decision.previous.as_str(),
                    to = decision.state.as_str(),
                    weights = %decision.weights,
                    primary_avail = ?primary.ratio(),
                    backup_avail = ?backup.ratio(),
                    "storm state changed"
                );
                self.machine = next;
                if let Some(dns) = &self.ctx.dns {
                    let _ = dns.cast(super::dns_supervisor::DnsMsg::Wake(self.spec.zone.clone()));
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
