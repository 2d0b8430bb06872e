//! LeaseKeeper: which shards this node owns.
//!
//! Every `lease_interval` it heartbeats, computes its fair share `ceil(SHARDS / live nodes)`,
//! releases surplus shards (so a joining node can take them) and tries to lock free ones up to
//! its share (so a dead node's shards are taken over), then tells the probe supervisor. Each
//! acquisition bumps the shard's fencing epoch. If the lease connection fails, every shard is
//! considered lost at once: the supervisor stops their actors before anything else happens.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use super::config::EngineConfig;
use super::dns_supervisor::DnsMsg;
use super::ports::{LeaseBackend, OwnedShards};
use super::probe_supervisor::SupervisorMsg;
use crate::domain::{SHARDS, shard_of};

pub struct LeaseKeeper;

pub struct LeaseArgs {
    pub config: EngineConfig,
    pub backend: Arc<dyn LeaseBackend>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// The DNS supervisor, told about shard changes too (`None`: DNS steering off).
    pub dns: Option<ActorRef<DnsMsg>>,
    /// Where the owned shards are published for everyone else (billing, usage ingestion).
    pub shards: Arc<watch::Sender<OwnedShards>>,
}

pub struct LeaseState {
    config: EngineConfig,
    backend: Arc<dyn LeaseBackend>,
    supervisor: ActorRef<SupervisorMsg>,
    dns: Option<ActorRef<DnsMsg>>,
    shards: Arc<watch::Sender<OwnedShards>>,
    owned: OwnedShards,
}

pub enum LeaseMsg {
    /// Heartbeat and rebalance.
    Tick,
    /// The shards owned now.
    Owned(RpcReplyPort<OwnedShards>),
    /// A (restarted) probe supervisor to report to.
    SetSupervisor(ActorRef<SupervisorMsg>),
}

/// This node's fair share of the shards.
pub fn fair_share(live_nodes: usize) -> usize {
    (SHARDS as usize).div_ceil(live_nodes.max(1))
}

impl Actor for LeaseKeeper {
    type Msg = LeaseMsg;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LeaseMsg>,
        args: LeaseArgs,
    ) -> Result<LeaseState, ActorProcessingErr> {
        // A previous incarnation may have held locks on the shared connection.
        args.backend.reset().await;
        myself.send_interval(args.config.lease_interval, || LeaseMsg::Tick);
        let _ = myself.cast(LeaseMsg::Tick);
        Ok(LeaseState {
            config: args.config,
            backend: args.backend,
            supervisor: args.supervisor,
            dns: args.dns,
            shards: args.shards,
            owned: OwnedShards::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaseMsg>,
        msg: LeaseMsg,
        state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaseMsg::Tick => state.tick().await,
            LeaseMsg::Owned(reply) => {
                let _ = reply.send(state.owned.clone());
            }
            LeaseMsg::SetSupervisor(supervisor) => {
                state.supervisor = supervisor;
                state.publish();
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LeaseMsg>,
        state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        state.owned.clear();
        state.publish();
        state.backend.reset().await;
        state.backend.deregister(&state.config.node_id).await;
        Ok(())
    }
}

impl LeaseState {
    fn lose_everything(&mut self, why: &str) {
        if !self.owned.is_empty() {
            tracing::error!(
                shards = self.owned.len(),
                reason = why,
                "lease connection lost; stopping all shards"
            );
        }
        self.owned.clear();
        self.publish();
    }

    /// Tells the supervisors which shards this node owns now.
    fn publish(&self) {
        let _ = self
            .supervisor
            .cast(SupervisorMsg::Shards(self.owned.clone()));
        if let Some(dns) = &self.dns {
            let _ = dns.cast(DnsMsg::Shards(self.owned.clone()));
        }
        self.shards.send_if_modified(|current| {
            let changed = *current != self.owned;
            if changed {
                current.clone_from(&self.owned);
            }
            changed
        });
    }

    async fn tick(&mut self) {
        let node = self.config.node_id.clone();
        let shards: Vec<u16> = self.owned.keys().copied().collect();
        let live = match self.backend.heartbeat(&node, &shards).await {
            Ok(live) => live,
            Err(e) => {
                self.lose_everything(&e.to_string());
                self.backend.reset().await;
                return;
            }
        };
        let target = fair_share(live);
        let mut changed = false;

        // Give back surplus, highest shards first, so joiners find free shards.
        while self.owned.len() > target {
            let Some((&shard, _)) = self.owned.iter().next_back() else {
                break;
            };
            if let Err(e) = self.backend.release(shard).await {
                self.lose_everything(&e.to_string());
                self.backend.reset().await;
                return;
            }
            self.owned.remove(&shard);
            changed = true;
        }

        // Take free shards up to the fair share, starting at a node-specific offset so nodes do
        // not all contend for the same ones.
        let start = shard_of(&node);
        let mut i = 0;
        while self.owned.len() < target && i < SHARDS {
            let shard = (start + i) % SHARDS;
            i += 1;
            if self.owned.contains_key(&shard) {
                continue;
            }
            match self.backend.try_acquire(&node, shard).await {
                Ok(Some(epoch)) => {
                    self.owned.insert(shard, epoch);
                    changed = true;
                }
                Ok(None) => {}
                Err(e) => {
                    self.lose_everything(&e.to_string());
                    self.backend.reset().await;
                    return;
                }
            }
        }
        if changed {
            tracing::info!(node = %node, shards = self.owned.len(), live_nodes = live, "shard ownership changed");
            self.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_covers_every_shard() {
        for live in 1..10 {
            assert!(fair_share(live) * live >= SHARDS as usize);
        }
        assert_eq!(fair_share(1), 256);
        assert_eq!(fair_share(3), 86);
        assert_eq!(fair_share(0), 256);
    }
}
