//! ProbeSupervisor: one DomainActor per domain on the shards this node owns, and one observer
//! per domain on the shards it observes from its vantage for other owners.
//!
//! It reconciles the running actors with the database whenever the owned shards change, when a
//! configuration change is announced (debounced), and periodically (so a missed notification is
//! repaired). A DomainActor that fails is restarted and rebuilds its state from the database;
//! one that stops because it was fenced is dropped and the next reconciliation decides.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::domain_actor::{DomainActor, DomainArgs, DomainMsg, EngineCtx};
use super::ports::{DomainSpec, Fence, OwnedShards, PersistedState, VantageReport};

/// Delay that coalesces bursts of configuration notifications into one reconciliation.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub struct ProbeSupervisor;

pub struct SupervisorState {
    ctx: Arc<EngineCtx>,
    owned: OwnedShards,
    /// Shards whose domains this node probes for their owners (from the lease keeper).
    observed: BTreeSet<u16>,
    running: HashMap<i64, Running>,
    by_actor: HashMap<ActorId, i64>,
    reconcile_pending: bool,
}

struct Running {
    actor: ActorRef<DomainMsg>,
    /// The same allocation as the actor's own: one copy of each spec on the node.
    spec: Arc<DomainSpec>,
    fence: Fence,
    observer: bool,
}

pub enum SupervisorMsg {
    /// The shards this node owns (from the lease keeper).
    Shards(OwnedShards),
    /// The shards this node observes for other owners (from the lease keeper).
    Observed(BTreeSet<u16>),
    /// Window summaries from other vantages, for the deciders here.
    Remote(Vec<VantageReport>),
    /// Configuration changed somewhere; reconcile soon.
    ConfigChanged,
    /// Reconcile now.
    Reconcile,
    /// Ids of the domains with a running actor here.
    Running(RpcReplyPort<Vec<i64>>),
}

impl Actor for ProbeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<EngineCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        ctx: Arc<EngineCtx>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        myself.send_interval(ctx.config.reconcile_interval, || SupervisorMsg::Reconcile);
        Ok(SupervisorState {
            ctx,
            owned: OwnedShards::new(),
            observed: BTreeSet::new(),
            running: HashMap::new(),
            by_actor: HashMap::new(),
            reconcile_pending: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Shards(owned) => {
                state.owned = owned;
                // Losing a shard stops its actors at once, without waiting for the database.
                let lost: Vec<i64> = state
                    .running
                    .iter()
                    .filter(|(_, r)| {
                        !r.observer && state.owned.get(&r.fence.shard) != Some(&r.fence.epoch)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in lost {
                    state.stop_domain(id);
                }
                state.reconcile(&myself).await;
            }
            SupervisorMsg::Observed(observed) => {
                if observed != state.observed {
                    state.observed = observed;
                    state.reconcile(&myself).await;
                }
            }
            SupervisorMsg::Remote(reports) => {
                for report in reports {
                    if let Some(r) = state.running.get(&report.domain_id)
                        && !r.observer
                    {
                        let _ = r.actor.cast(DomainMsg::Remote(Box::new(report)));
                    }
                }
            }
            SupervisorMsg::ConfigChanged => {
                if !state.reconcile_pending {
                    state.reconcile_pending = true;
                    myself.send_after(DEBOUNCE, || SupervisorMsg::Reconcile);
                }
            }
            SupervisorMsg::Reconcile => {
                state.reconcile_pending = false;
                state.reconcile(&myself).await;
            }
            SupervisorMsg::Running(reply) => {
                let deciding = state.running.iter().filter(|(_, r)| !r.observer);
                let _ = reply.send(deciding.map(|(id, _)| *id).collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id())
                    && let Some(r) = state.running.remove(&id)
                {
                    tracing::error!(domain.id = id, error = %err, "domain actor failed; restarting it from the database");
                    if r.observer || state.owned.get(&r.fence.shard) == Some(&r.fence.epoch) {
                        state
                            .spawn(&myself, r.spec, r.fence, r.observer, None, 1)
                            .await;
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    state.running.remove(&id);
                    if reason.as_deref() == Some("fenced") {
                        myself.send_after(DEBOUNCE, || SupervisorMsg::Reconcile);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let ids: Vec<i64> = state.running.keys().copied().collect();
        for id in ids {
            state.stop_domain(id);
        }
        Ok(())
    }
}

impl SupervisorState {
    fn stop_domain(&mut self, id: i64) {
        if let Some(r) = self.running.remove(&id) {
            self.by_actor.remove(&r.actor.get_id());
            r.actor.stop(None);
        }
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: Arc<DomainSpec>,
        fence: Fence,
        observer: bool,
        persisted: Option<Option<PersistedState>>,
        zone_domains: usize,
    ) {
        let id = spec.id;
        let args = DomainArgs {
            zone_domains,
            spec: spec.clone(),
            fence,
            observer,
            persisted,
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, DomainActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), id);
                self.running.insert(
                    id,
                    Running {
                        actor,
                        spec,
                        fence,
                        observer,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(domain.id = id, error = %e, "could not start domain actor; will retry")
            }
        }
    }

    async fn reconcile(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if self.owned.is_empty() && self.observed.is_empty() {
            let ids: Vec<i64> = self.running.keys().copied().collect();
            for id in ids {
                self.stop_domain(id);
            }
            return;
        }
        let shards: Vec<u16> = self
            .owned
            .keys()
            .chain(self.observed.iter())
            .copied()
            .collect::<BTreeSet<u16>>()
            .into_iter()
            .collect();
        let domains = match self.ctx.store.domains_on_shards(&shards).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not load domains; keeping the running actors");
                return;
            }
        };
        // Domains per zone: each zone's probes are spread by its size (see `probe_phase`).
        let mut zone_sizes: HashMap<&str, usize> = HashMap::new();
        for (spec, _) in &domains {
            *zone_sizes.entry(spec.zone.as_str()).or_default() += 1;
        }
        let zone_sizes: HashMap<i64, usize> = domains
            .iter()
            .map(|(spec, _)| (spec.id, zone_sizes[spec.zone.as_str()]))
            .collect();
        let mut wanted = std::collections::HashSet::with_capacity(domains.len());
        for (spec, persisted) in domains {
            // Owned wins: a shard observed a moment ago and owned now is decided here.
            let (fence, observer) = match self.owned.get(&spec.shard) {
                Some(&epoch) => (
                    Fence {
                        shard: spec.shard,
                        epoch,
                    },
                    false,
                ),
                None if self.observed.contains(&spec.shard) => (
                    Fence {
                        shard: spec.shard,
                        epoch: 0,
                    },
                    true,
                ),
                None => continue,
            };
            wanted.insert(spec.id);
            if self
                .running
                .get(&spec.id)
                .is_some_and(|r| r.observer != observer)
            {
                // Changing role restarts the actor: a decider starts from the persisted state.
                self.stop_domain(spec.id);
            }
            match self.running.get_mut(&spec.id) {
                Some(r) if *r.spec == spec && r.fence == fence => {}
                Some(r) => {
                    r.spec = Arc::new(spec);
                    r.fence = fence;
                    let _ = r.actor.cast(DomainMsg::Update(r.spec.clone(), fence));
                }
                None => {
                    let zone_domains = zone_sizes[&spec.id];
                    let spec = Arc::new(spec);
                    self.spawn(myself, spec, fence, observer, Some(persisted), zone_domains)
                        .await
                }
            }
        }
        let gone: Vec<i64> = self
            .running
            .keys()
            .filter(|id| !wanted.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.stop_domain(id);
        }
    }
}
