//! LeaseKeeper: which shards this node owns.
//!
//! Every `lease_interval` it heartbeats, computes its fair share `ceil(SHARDS / live nodes)`,
//! releases surplus shards (so a joining node can take them) and tries to lock free ones up to
//! its share (so a dead node's shards are taken over), then tells the probe supervisor. Each
//! acquisition bumps the shard's fencing epoch. If the lease connection fails, every shard is
//! considered lost at once: the supervisor stops their actors before anything else happens.
//!
//! With several vantages (`vantages_per_domain` > 1), each tick also reads the live members
//! with their vantages and the shards' owners, and recomputes which shards this node observes
//! for their owners (rendezvous hashing, `tranche_core::domain::vantage`); the probe supervisor
//! is told when that set changes.
//!
//! A lease is also bounded in time. Each successful heartbeat extends the node's
//! [`LeaseValidity`](super::config::LeaseValidity) to the heartbeat's start plus
//! [`LEASE_DEADLINE`] minus a margin, and actors act outside the node only while it holds. A
//! node whose heartbeat is older than the deadline is *deposed* by the survivors — they end its
//! lease session, which frees its advisory locks even though its process (frozen by SIGSTOP, a
//! VM pause) still holds the connection — and take its shards over with new fencing epochs. To
//! keep a slow database from making nodes depose each other, a node deposes others only after
//! its own heartbeats have succeeded without a gap for a whole deadline.

use std::collections::BTreeSet;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::{EngineConfig, LEASE_DEADLINE, LEASE_MARGIN};
use super::dns_supervisor::DnsMsg;
use super::ports::{LeaseBackend, OwnedShards};
use super::probe_supervisor::SupervisorMsg;
use tranche_core::domain::vantage::observed_shards;
use tranche_core::domain::{SHARDS, shard_of};

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
    /// The shards this node observes from its vantage for their owners.
    observed: BTreeSet<u16>,
    /// Start of the current run of successful heartbeats, none more than a deadline apart.
    healthy_since: Option<Instant>,
    /// Start of the last successful heartbeat.
    last_ok: Option<Instant>,
}

/// Whether a node whose heartbeats have succeeded without a gap since `healthy_since` may
/// depose others at `now`: only after a whole deadline of that, so that after a database outage
/// every node has had the time to heartbeat again before anyone is judged stale.
pub fn may_depose(healthy_since: Option<Instant>, now: Instant) -> bool {
    healthy_since.is_some_and(|since| now.saturating_duration_since(since) >= LEASE_DEADLINE)
}

/// The run of healthy heartbeats after one that started at `sent` succeeded.
pub fn healthy_run(
    healthy_since: Option<Instant>,
    last_ok: Option<Instant>,
    sent: Instant,
) -> Option<Instant> {
    match (healthy_since, last_ok) {
        (Some(since), Some(last)) if sent.saturating_duration_since(last) < LEASE_DEADLINE => {
            Some(since)
        }
        _ => Some(sent),
    }
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
        args.config.lease.revoke();
        myself.send_interval(args.config.lease_interval, || LeaseMsg::Tick);
        let _ = myself.cast(LeaseMsg::Tick);
        Ok(LeaseState {
            config: args.config,
            backend: args.backend,
            supervisor: args.supervisor,
            dns: args.dns,
            shards: args.shards,
            owned: OwnedShards::new(),
            observed: BTreeSet::new(),
            healthy_since: None,
            last_ok: None,
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
                let _ = state
                    .supervisor
                    .cast(SupervisorMsg::Observed(state.observed.clone()));
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
        self.config.lease.revoke();
        self.healthy_since = None;
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
        let sent = Instant::now();
        let live = match self.backend.heartbeat(&node, &shards).await {
            Ok(live) => live,
            Err(e) => {
                self.lose_everything(&e.to_string());
                self.backend.reset().await;
                return;
            }
        };
        // The database saw the heartbeat at or after `sent`: by our clock the others cannot
        // consider it stale before `sent + LEASE_DEADLINE`.
        self.config
            .lease
            .extend_to(sent + LEASE_DEADLINE - LEASE_MARGIN);
        self.healthy_since = healthy_run(self.healthy_since, self.last_ok, sent);
        self.last_ok = Some(sent);
        if may_depose(self.healthy_since, Instant::now()) {
            match self.backend.depose_stale(&node, LEASE_DEADLINE).await {
                Ok(deposed) => {
                    for other in deposed {
                        tracing::warn!(node = %node, deposed = %other, deadline = ?LEASE_DEADLINE, "deposed a node that missed its heartbeat deadline; its shards are free");
                    }
                }
                Err(e) => {
                    self.lose_everything(&e.to_string());
                    self.backend.reset().await;
                    return;
                }
            }
        }
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
        self.observe().await;
    }

    /// Recomputes the shards this node observes for other owners (rendezvous over the live
    /// vantages, see `tranche_core::domain::vantage`) and tells the probe supervisor when that
    /// changes. A failure to read the membership keeps the current set until the next tick.
    async fn observe(&mut self) {
        if self.config.vantages_per_domain <= 1 {
            return;
        }
        let membership = match self.backend.members().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the cluster's vantages; keeping the observed shards");
                return;
            }
        };
        let observed = observed_shards(
            &self.config.node_id,
            &membership.live,
            &membership.owners,
            self.config.vantages_per_domain,
        );
        if observed != self.observed {
            tracing::info!(node = %self.config.node_id, vantage = %self.config.vantage, observed = observed.len(), "observed shards changed");
            self.observed = observed;
            let _ = self
                .supervisor
                .cast(SupervisorMsg::Observed(self.observed.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposing_needs_a_whole_deadline_of_healthy_heartbeats() {
        let t0 = Instant::now();
        let second = std::time::Duration::from_secs(1);
        assert!(!may_depose(None, t0));
        let mut since = healthy_run(None, None, t0);
        let mut last = Some(t0);
        assert!(!may_depose(since, t0 + second));
        for k in 1..=3 {
            let sent = t0 + second * k;
            since = healthy_run(since, last, sent);
            last = Some(sent);
        }
        assert_eq!(since, Some(t0));
        assert!(may_depose(since, t0 + second * 3));
        // A gap of a whole deadline (the node was frozen, or the database away) starts over.
        let late = t0 + second * 7;
        since = healthy_run(since, last, late);
        assert_eq!(since, Some(late));
        assert!(!may_depose(since, late + second));
    }

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
