//! ZoneActor: converges one DNS zone's applied weights to the desired ones.
//!
//! Woken when a domain of the zone decides new weights (and every few seconds regardless — the
//! messages are wake-ups, the database holds the intent), it loads the zone's pending changes,
//! plans them into as few batches as the provider allows, and sends them one at a time (a
//! second concurrent change to a Route53 zone is refused), each after a token from the node's
//! shared rate limiter. Every attempt is audited before the provider is called. Throttling,
//! `PriorRequestNotComplete`, 5xx and network errors back off exponentially with jitter; a
//! rejected batch is bisected until the bad domain is isolated and marked failed, so one
//! broken record cannot block its zone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::config::{EngineConfig, jittered_backoff};
use super::ports::{DnsStore, Fence, StoreError};
use crate::dns::planner::{Batch, BatchLimits, plan};
use crate::dns::provider::{DnsProvider, ProviderError};
use crate::dns::rate::TokenBucket;

/// Periodic re-check of the zone (level-triggered convergence).
const RECHECK: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a submitted change is polled for `INSYNC`.
const INSYNC_POLL: Duration = Duration::from_secs(1);
const INSYNC_GIVE_UP: Duration = Duration::from_secs(600);

/// What the zone actors of a node share.
pub struct DnsCtx {
    pub config: EngineConfig,
    pub store: Arc<dyn DnsStore>,
    pub provider: Arc<dyn DnsProvider>,
    pub limiter: Arc<TokenBucket>,
    pub limits: BatchLimits,
}

pub struct ZoneActor;

pub struct ZoneArgs {
    pub zone: String,
    pub fence: Fence,
    pub ctx: Arc<DnsCtx>,
}

pub struct ZoneState {
    zone: String,
    fence: Fence,
    ctx: Arc<DnsCtx>,
    /// Consecutive retryable failures (drives the backoff).
    failures: u32,
    /// While backing off, wake-ups wait for the scheduled retry.
    backoff_until: Option<tokio::time::Instant>,
}

pub enum ZoneMsg {
    /// Something in the zone may need applying.
    Wake,
    /// The shard's fencing epoch changed.
    Update(Fence),
    /// A submitted change is in sync.
    InSync(String),
}

impl Actor for ZoneActor {
    type Msg = ZoneMsg;
    type State = ZoneState;
    type Arguments = ZoneArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ZoneMsg>,
        args: ZoneArgs,
    ) -> Result<ZoneState, ActorProcessingErr> {
        myself.send_interval(RECHECK, || ZoneMsg::Wake);
        let _ = myself.cast(ZoneMsg::Wake);
        Ok(ZoneState {
            zone: args.zone,
            fence: args.fence,
            ctx: args.ctx,
            failures: 0,
            backoff_until: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ZoneMsg>,
        msg: ZoneMsg,
        state: &mut ZoneState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ZoneMsg::Wake => {
                if state
                    .backoff_until
                    .is_some_and(|t| tokio::time::Instant::now() < t)
                {
                    return Ok(());
                }
                state.backoff_until = None;
                if let Err(e) = state.converge(&myself).await {
                    match e {
                        StoreError::Fenced { .. } => {
                            tracing::warn!(dns.zone = %state.zone, "zone's shard moved to another node; stopping");
                            myself.stop(Some("fenced".into()));
                        }
                        StoreError::Other(e) => {
                            tracing::warn!(dns.zone = %state.zone, error = %e, "DNS reconciliation failed; will retry")
                        }
                    }
                }
            }
            ZoneMsg::Update(fence) => state.fence = fence,
            ZoneMsg::InSync(change_id) => {
                if let Err(e) = state.ctx.store.dns_insync(&change_id).await {
                    tracing::warn!(dns.change = %change_id, error = %e, "could not record INSYNC");
                }
            }
        }
        Ok(())
    }
}

impl ZoneState {
    fn backoff(&mut self, myself: &ActorRef<ZoneMsg>) {
        self.failures += 1;
        // Jitter keeps zone actors from retrying in lockstep.
        let delay = jittered_backoff(BACKOFF_BASE, self.failures + 1, BACKOFF_MAX);
        self.backoff_until = Some(tokio::time::Instant::now() + delay);
        myself.send_after(delay, || ZoneMsg::Wake);
    }

    async fn converge(&mut self, myself: &ActorRef<ZoneMsg>) -> Result<(), StoreError> {
        let pending = self.ctx.store.pending_dns(&self.zone).await?;
        if pending.is_empty() {
            return Ok(());
        }
        let planned = plan(pending, &self.ctx.limits);
        let provider = self.ctx.provider.name();
        for c in &planned.oversized {
            let id = self
                .ctx
                .store
                .dns_submitted(
                    &self.zone,
                    provider,
                    &Batch::of(c.clone()),
                    1,
                    self.fence,
                    &self.ctx.config.node_id,
                )
                .await?;
            self.ctx
                .store
                .dns_failed(
                    &id,
                    "the domain's records exceed one request's limits",
                    &[c.domain_id],
                )
                .await?;
        }
        let mut queue: VecDeque<Batch> = planned.batches.into();
        while let Some(batch) = queue.pop_front() {
            self.ctx.limiter.acquire().await;
            let attempt = self.failures as i32 + 1;
            let id = self
                .ctx
                .store
                .dns_submitted(
                    &self.zone,
                    provider,
                    &batch,
                    attempt,
                    self.fence,
                    &self.ctx.config.node_id,
                )
                .await?;
            match self.ctx.provider.apply(&self.zone, &batch).await {
                Ok(submitted) => {
                    self.failures = 0;
                    self.ctx
                        .store
                        .dns_applied(
                            &id,
                            &batch,
                            &submitted.change_id,
                            submitted.in_sync,
                            self.fence,
                        )
                        .await?;
                    tracing::info!(dns.zone = %self.zone, domains = batch.changes.len(), dns.change = %id, "DNS change applied");
                    if !submitted.in_sync {
                        self.poll_in_sync(myself, id, submitted.change_id);
                    }
                }
                Err(e) if e.retryable() => {
                    self.ctx.store.dns_failed(&id, &e.to_string(), &[]).await?;
                    tracing::warn!(dns.zone = %self.zone, error = %e, "DNS change not accepted; backing off");
                    self.backoff(myself);
                    return Ok(());
                }
                Err(ProviderError::InvalidChangeBatch(msg)) => match batch.clone().split() {
                    Some((left, right)) => {
                        self.ctx
                            .store
                            .dns_failed(&id, &format!("{msg} (bisecting)"), &[])
                            .await?;
                        queue.push_front(right);
                        queue.push_front(left);
                    }
                    None => {
                        let ids: Vec<i64> = batch.changes.iter().map(|c| c.domain_id).collect();
                        self.ctx.store.dns_failed(&id, &msg, &ids).await?;
                        tracing::error!(dns.zone = %self.zone, domain.ids = ?ids, error = %msg, "DNS record rejected");
                    }
                },
                Err(e) => {
                    let ids: Vec<i64> = batch.changes.iter().map(|c| c.domain_id).collect();
                    self.ctx.store.dns_failed(&id, &e.to_string(), &ids).await?;
                    tracing::error!(dns.zone = %self.zone, error = %e, "DNS change failed permanently");
                }
            }
        }
        Ok(())
    }

    /// Polls the provider until the change is in sync, off the actor's loop.
    fn poll_in_sync(&self, myself: &ActorRef<ZoneMsg>, id: String, provider_change_id: String) {
        let provider = self.ctx.provider.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let give_up = tokio::time::Instant::now() + INSYNC_GIVE_UP;
            while tokio::time::Instant::now() < give_up {
                tokio::time::sleep(INSYNC_POLL).await;
                if let Ok(true) = provider.in_sync(&provider_change_id).await {
                    let _ = me.cast(ZoneMsg::InSync(id));
                    return;
                }
            }
        });
    }
}
