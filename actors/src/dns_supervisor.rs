//! DnsSupervisor: one ZoneActor per DNS zone with steered domains on the shards this node owns
//! (a zone and its domains share a shard, so the node that decides a domain's weights is the one
//! that applies them).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::children::{Children, fenced};
use super::ports::OwnedShards;
use super::zone_actor::{DnsCtx, ZoneActor, ZoneArgs, ZoneMsg};

pub struct DnsSupervisor;

pub struct DnsSupervisorState {
    ctx: Arc<DnsCtx>,
    owned: OwnedShards,
    zones: Children<String, ZoneMsg>,
}

pub enum DnsMsg {
    /// The shards this node owns (from the lease keeper).
    Shards(OwnedShards),
    /// A domain of this zone decided new weights.
    Wake(String),
    /// A domain of this zone decided new weights, in this span (`storm.decision`): the DNS
    /// change that applies them links to it.
    Decided(String, tracing::Span),
    /// Re-read which zones have steered domains.
    Reconcile,
    /// Configuration changed (e.g. a pin): re-read zones and wake every zone actor.
    WakeAll,
    /// Zones with a running actor here.
    Zones(RpcReplyPort<Vec<String>>),
}

impl Actor for DnsSupervisor {
    type Msg = DnsMsg;
    type State = DnsSupervisorState;
    type Arguments = Arc<DnsCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<DnsMsg>,
        ctx: Arc<DnsCtx>,
    ) -> Result<DnsSupervisorState, ActorProcessingErr> {
        myself.send_interval(ctx.config.reconcile_interval, || DnsMsg::Reconcile);
        Ok(DnsSupervisorState {
            ctx,
            owned: OwnedShards::new(),
            zones: Children::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DnsMsg>,
        msg: DnsMsg,
        state: &mut DnsSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DnsMsg::Shards(owned) => {
                state.owned = owned;
                state.reconcile(&myself).await;
            }
            DnsMsg::Wake(zone) => match state.zones.get(&zone) {
                Some(actor) => {
                    let _ = actor.cast(ZoneMsg::Wake);
                }
                // A zone that just got its first steered domain.
                None => state.reconcile(&myself).await,
            },
            DnsMsg::Decided(zone, span) => match state.zones.get(&zone) {
                Some(actor) => {
                    let _ = actor.cast(ZoneMsg::Caused(span));
                }
                None => state.reconcile(&myself).await,
            },
            DnsMsg::Reconcile => state.reconcile(&myself).await,
            DnsMsg::WakeAll => {
                state.reconcile(&myself).await;
                for actor in state.zones.actors() {
                    let _ = actor.cast(ZoneMsg::Wake);
                }
            }
            DnsMsg::Zones(reply) => {
                let _ = reply.send(state.zones.keys().cloned().collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<DnsMsg>,
        event: SupervisionEvent,
        state: &mut DnsSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match &event {
            SupervisionEvent::ActorFailed(cell, _)
            | SupervisionEvent::ActorTerminated(cell, ..) => cell.clone(),
            _ => return Ok(()),
        };
        if let Some(zone) = state.zones.forget(cell.get_id()) {
            if let SupervisionEvent::ActorFailed(_, err) = event {
                tracing::error!(dns.zone = %zone, error = %err, "zone actor failed; restarting");
            }
            state.reconcile(&myself).await;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DnsMsg>,
        state: &mut DnsSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.zones.stop_all();
        Ok(())
    }
}

impl DnsSupervisorState {
    async fn reconcile(&mut self, myself: &ActorRef<DnsMsg>) {
        let wanted = if self.owned.is_empty() {
            HashMap::new()
        } else {
            let shards: Vec<u16> = self.owned.keys().copied().collect();
            match self.ctx.store.zones_on_shards(&shards).await {
                Ok(zones) => fenced(&self.owned, zones),
                Err(e) => {
                    tracing::warn!(error = %e, "could not load DNS zones; keeping the running zone actors");
                    return;
                }
            }
        };
        let ctx = &self.ctx;
        self.zones
            .reconcile(wanted, ZoneMsg::Update, |zone, fence| async move {
                let args = ZoneArgs {
                    zone: zone.clone(),
                    fence,
                    ctx: ctx.clone(),
                };
                match Actor::spawn_linked(None, ZoneActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => Some(actor),
                    Err(e) => {
                        tracing::warn!(dns.zone = %zone, error = %e, "could not start zone actor");
                        None
                    }
                }
            })
            .await;
    }
}
