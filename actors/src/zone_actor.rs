//! ZoneActor: converges one DNS zone's applied weights to the desired ones.
//!
//! Woken when a domain of the zone decides new weights (and every few seconds regardless — the
//! messages are wake-ups, the database holds the intent), it reserves a token from the node's
//! shared rate limiter and schedules the send for when the token is due, at least a short
//! *linger* later, so that the decisions of a mass failover (the zone's domains probe in the same
//! part of the interval) leave together. When the send is due it loads the zone's pending
//! changes, plans them into as few batches as the provider allows, audits the first batch and
//! hands it to the provider in a spawned task; the answer comes back as a message. One call is
//! in flight per zone (a second concurrent change to a Route53 zone is refused); whatever was
//! decided meanwhile goes in the next batch. Nothing inside `handle` waits on the limiter or the
//! provider, so fence updates and stops are never stuck behind a slow call.
//!
//! Throttling, `PriorRequestNotComplete`, 5xx, network errors and a hosted zone not found yet
//! back off exponentially with jitter; a rejected batch is bisected until the bad domain is
//! isolated and marked failed, so one broken record cannot block its zone. Submitted changes are
//! polled until in sync (through the same rate limiter). A new owner of the zone settles the
//! changes its predecessor left `submitted` — polled to `insync` when the provider had accepted
//! them, marked `superseded` when it never answered — and re-plans from what is applied.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};
use tracing::Instrument;

use super::config::{EngineConfig, jittered_backoff};
use super::ports::{DnsStore, Fence, StoreError};
use crate::ports::DnsProvider;
use crate::rate::TokenBucket;
use tranche_core::dns::planner::{Batch, BatchLimits, plan};
use tranche_core::dns::provider::{ProviderError, Submitted};

/// Periodic re-check of the zone (level-triggered convergence).
const RECHECK: Duration = Duration::from_secs(5);
/// How long a wake-up waits for more decisions before the zone's batch is planned.
pub const LINGER: Duration = Duration::from_millis(200);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How a submitted change is polled for `INSYNC`: first after this, then growing to the max.
const INSYNC_FIRST: Duration = Duration::from_millis(500);
const INSYNC_MAX: Duration = Duration::from_secs(15);

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Idle,
    /// A send is scheduled (its token reserved).
    Scheduled,
    /// A provider call is in flight.
    InFlight,
}

pub struct ZoneState {
    zone: String,
    fence: Fence,
    ctx: Arc<DnsCtx>,
    busy: Busy,
    /// Woken while busy: look again when the current send is done.
    dirty: bool,
    /// Halves of a rejected batch, sent before anything new is planned.
    bisect: VecDeque<Batch>,
    /// Consecutive retryable failures (drives the backoff).
    failures: u32,
    /// While backing off, wake-ups wait for the scheduled retry.
    backoff_until: Option<tokio::time::Instant>,
    /// Spans of the decisions waiting to be applied: the next change links to them.
    causes: Vec<tracing::Span>,
}

/// Most decision spans a zone remembers for its next change.
const MAX_CAUSES: usize = 64;

pub enum ZoneMsg {
    /// Something in the zone may need applying.
    Wake,
    /// A decision (its span) needs applying.
    Caused(tracing::Span),
    /// The reserved token is due: plan and send one batch.
    Send,
    /// The provider answered the batch audited as change `id`.
    Done(String, Batch, Result<Submitted, ProviderError>),
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
        let state = ZoneState {
            zone: args.zone,
            fence: args.fence,
            ctx: args.ctx,
            busy: Busy::Idle,
            dirty: false,
            bisect: VecDeque::new(),
            failures: 0,
            backoff_until: None,
            causes: Vec::new(),
        };
        state.settle_orphans(&myself).await;
        let _ = myself.cast(ZoneMsg::Wake);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ZoneMsg>,
        msg: ZoneMsg,
        state: &mut ZoneState,
    ) -> Result<(), ActorProcessingErr> {
        let result = match msg {
            ZoneMsg::Wake => state.wake(&myself).await,
            ZoneMsg::Caused(span) => {
                if state.causes.len() == MAX_CAUSES {
                    state.causes.remove(0);
                }
                state.causes.push(span);
                state.wake(&myself).await
            }
            ZoneMsg::Send => state.send(&myself).await,
            ZoneMsg::Done(id, batch, result) => state.done(&myself, id, batch, result).await,
            ZoneMsg::Update(fence) => {
                state.fence = fence;
                Ok(())
            }
            ZoneMsg::InSync(change_id) => {
                if let Err(e) = state.ctx.store.dns_insync(&change_id).await {
                    tracing::warn!(dns.change = %change_id, error = %e, "could not record INSYNC");
                }
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            Err(StoreError::Fenced { .. }) => {
                tracing::warn!(dns.zone = %state.zone, "zone's shard moved to another node; stopping");
                myself.stop(Some("fenced".into()));
            }
            Err(e) => {
                tracing::warn!(dns.zone = %state.zone, error = %e, "DNS reconciliation failed; will retry");
                state.busy = Busy::Idle;
                state.backoff(&myself);
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

    /// Schedules a send if something is pending and none is scheduled or in flight.
    async fn wake(&mut self, myself: &ActorRef<ZoneMsg>) -> Result<(), StoreError> {
        if self.busy != Busy::Idle {
            self.dirty = true;
            return Ok(());
        }
        if self
            .backoff_until
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return Ok(());
        }
        self.backoff_until = None;
        if self.bisect.is_empty() && self.ctx.store.pending_dns(&self.zone).await?.is_empty() {
            return Ok(());
        }
        // The token is ours from now; it is used when the send is due, by which time whatever
        // else was decided in the zone joins the batch.
        let wait = self.ctx.limiter.reserve().max(LINGER);
        self.busy = Busy::Scheduled;
        self.dirty = false;
        myself.send_after(wait, || ZoneMsg::Send);
        Ok(())
    }

    /// Plans and sends one batch (the token for it was reserved by `wake`).
    async fn send(&mut self, myself: &ActorRef<ZoneMsg>) -> Result<(), StoreError> {
        self.busy = Busy::Idle;
        if !self.ctx.config.lease.is_valid() {
            tracing::warn!(dns.zone = %self.zone, "lease expired; not changing DNS");
            return Ok(());
        }
        let provider = self.ctx.provider.name();
        let batch = match self.bisect.pop_front() {
            Some(batch) => batch,
            None => {
                let planned = plan(
                    self.ctx.store.pending_dns(&self.zone).await?,
                    &self.ctx.limits,
                );
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
                let mut batches = planned.batches.into_iter();
                let Some(first) = batches.next() else {
                    return Ok(());
                };
                // The rest is planned again (with anything new) once this one is answered.
                self.dirty |= batches.next().is_some();
                first
            }
        };
        // Attempts are numbered from 1 (`tranche_core::events::DNS_FAILURE_ALERT_ATTEMPT` counts
        // on it: a change still failing at that attempt is announced).
        let attempt = self.failures as i32 + 1;
        let span = tracing::info_span!(
            "dns.change",
            dns.zone = %self.zone,
            dns.provider = provider,
            dns.records = batch.changes.len(),
            dns.attempt = attempt,
            dns.change_id = tracing::field::Empty,
        );
        for cause in self.causes.drain(..) {
            span.follows_from(&cause);
        }
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
            .instrument(span.clone())
            .await?;
        span.record("dns.change_id", id.as_str());
        self.busy = Busy::InFlight;
        let (ctx, me, zone) = (self.ctx.clone(), myself.clone(), self.zone.clone());
        tokio::spawn(
            async move {
                // The lease is checked again at the last moment: a node frozen between the audit
                // and here must not change DNS the new owner is now responsible for.
                let result = if ctx.config.lease.is_valid() {
                    ctx.provider.apply(&zone, &batch).await
                } else {
                    Err(ProviderError::Transient(
                        "lease expired before the call".into(),
                    ))
                };
                let _ = me.cast(ZoneMsg::Done(id, batch, result));
            }
            .instrument(span),
        );
        Ok(())
    }

    async fn done(
        &mut self,
        myself: &ActorRef<ZoneMsg>,
        id: String,
        batch: Batch,
        result: Result<Submitted, ProviderError>,
    ) -> Result<(), StoreError> {
        self.busy = Busy::Idle;
        match result {
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
                let _ = myself.cast(ZoneMsg::Wake);
            }
            Err(e) if e.retryable() => {
                self.ctx.store.dns_failed(&id, &e.to_string(), &[]).await?;
                tracing::warn!(dns.zone = %self.zone, error = %e, "DNS change not accepted; backing off");
                if !self.bisect.is_empty() {
                    // Retry the half that failed before the rest.
                    self.bisect.push_front(batch);
                }
                self.backoff(myself);
            }
            Err(ProviderError::InvalidChangeBatch(msg)) => {
                match batch.clone().split() {
                    Some((left, right)) => {
                        self.ctx
                            .store
                            .dns_failed(&id, &format!("{msg} (bisecting)"), &[])
                            .await?;
                        self.bisect.push_front(right);
                        self.bisect.push_front(left);
                    }
                    None => {
                        let ids: Vec<i64> = batch.changes.iter().map(|c| c.domain_id).collect();
                        self.ctx.store.dns_failed(&id, &msg, &ids).await?;
                        tracing::error!(dns.zone = %self.zone, domain.ids = ?ids, error = %msg, "DNS record rejected");
                    }
                }
                let _ = myself.cast(ZoneMsg::Wake);
            }
            Err(e) => {
                let ids: Vec<i64> = batch.changes.iter().map(|c| c.domain_id).collect();
                self.ctx.store.dns_failed(&id, &e.to_string(), &ids).await?;
                tracing::error!(dns.zone = %self.zone, error = %e, "DNS change failed permanently");
                let _ = myself.cast(ZoneMsg::Wake);
            }
        }
        Ok(())
    }

    /// Settles the changes a previous owner left `submitted`: those the provider accepted are
    /// polled until in sync; those it never answered are marked superseded (the zone is
    /// re-planned from the applied weights, which they never changed).
    async fn settle_orphans(&self, myself: &ActorRef<ZoneMsg>) {
        let orphans = match self.ctx.store.orphaned_changes(&self.zone).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(dns.zone = %self.zone, error = %e, "could not read unsettled DNS changes");
                return;
            }
        };
        for orphan in orphans {
            match orphan.provider_change_id {
                Some(provider_id) => self.poll_in_sync(myself, orphan.id, provider_id),
                None => {
                    let reason = format!(
                        "superseded: node {} stopped before the provider answered; re-planned by node {}",
                        orphan.node_id, self.ctx.config.node_id
                    );
                    match self
                        .ctx
                        .store
                        .dns_superseded(&orphan.id, &reason, self.fence)
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(dns.zone = %self.zone, dns.change = %orphan.id, "settled an orphaned DNS change as superseded")
                        }
                        Err(e) => {
                            tracing::warn!(dns.zone = %self.zone, error = %e, "could not settle an orphaned DNS change")
                        }
                    }
                }
            }
        }
    }

    /// Polls the provider until the change is in sync, off the actor's loop, each call through
    /// the node's rate limiter; stops with the actor.
    fn poll_in_sync(&self, myself: &ActorRef<ZoneMsg>, id: String, provider_change_id: String) {
        let (provider, limiter, me) = (
            self.ctx.provider.clone(),
            self.ctx.limiter.clone(),
            myself.clone(),
        );
        tokio::spawn(async move {
            let mut delay = INSYNC_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                tokio::time::sleep(limiter.reserve()).await;
                if matches!(
                    me.get_status(),
                    ActorStatus::Stopping | ActorStatus::Stopped
                ) {
                    return;
                }
                if let Ok(true) = provider.in_sync(&provider_change_id).await {
                    let _ = me.cast(ZoneMsg::InSync(id));
                    return;
                }
                delay = (delay * 2).min(INSYNC_MAX);
            }
        });
    }
}
