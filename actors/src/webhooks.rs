//! WebhookDispatcher: delivers the outbox of webhook deliveries of the customers whose shard
//! this node owns — at least once, in order per endpoint, with exponential backoff for 24 hours,
//! then `failed`.
//!
//! Each pass loads pending deliveries grouped by endpoint; every endpoint gets its own task that
//! sends its deliveries one after another and stops at the first failure (so later events never
//! overtake an earlier one). Endpoints proceed independently, a bounded number at a time, each
//! request with a timeout: a slow or dead receiver delays only itself, and nothing here touches
//! probing, storms or DNS.
//!
//! Every hour it also deletes events older than the retention (30 days by default) with their
//! delivery logs — never one with a delivery still pending.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use super::billing::forward_shards;
use super::children::bounded;
use super::config::EngineConfig;
use super::ports::{Delivery, OwnedShards, WebhookSender, WebhookStore};
use tranche_core::webhook::retry_at;

/// Endpoints being delivered to at once.
const CONCURRENCY: usize = 64;
/// Deliveries loaded per pass.
const BATCH: i64 = 5000;
pub struct WebhookDispatcher;

pub struct DispatcherArgs {
    pub config: EngineConfig,
    /// Pause between passes when there was nothing to send.
    pub idle: Duration,
    /// How long events and their delivery logs are kept.
    pub retention: Duration,
    pub store: Arc<dyn WebhookStore>,
    pub sender: Arc<dyn WebhookSender>,
    pub shards: watch::Receiver<OwnedShards>,
}

pub struct DispatcherState {
    args: DispatcherArgs,
    owned: OwnedShards,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

pub enum DispatcherMsg {
    Shards(OwnedShards),
    Pass,
    /// Runs a pass now; replies with how many deliveries succeeded (tests).
    #[cfg(feature = "test-hooks")]
    PassNow(ractor::RpcReplyPort<usize>),
    /// Deletes events older than the retention (and their deliveries), unless still pending.
    Prune,
}

/// How often old events are pruned (by every node; the delete is idempotent).
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

impl Actor for WebhookDispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let forwarder = Some(forward_shards(
            args.shards.clone(),
            myself.clone(),
            DispatcherMsg::Shards,
        ));
        myself.send_after(args.idle, || DispatcherMsg::Pass);
        myself.send_interval(PRUNE_INTERVAL, || DispatcherMsg::Prune);
        Ok(DispatcherState {
            args,
            owned: OwnedShards::new(),
            forwarder,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::Shards(owned) => state.owned = owned,
            DispatcherMsg::Pass => {
                let sent = state.pass().await;
                // Busy: go again at once; idle: wait a little.
                let pause = if sent > 0 {
                    Duration::from_millis(10)
                } else {
                    state.args.idle
                };
                myself.send_after(pause, || DispatcherMsg::Pass);
            }
            #[cfg(feature = "test-hooks")]
            DispatcherMsg::PassNow(reply) => {
                let _ = reply.send(state.pass().await);
            }
            DispatcherMsg::Prune => {
                let retention = TimeDelta::from_std(state.args.retention).unwrap_or(TimeDelta::MAX);
                let before = (state.args.config.clock)() - retention;
                match state.args.store.prune_events(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "pruned old events and deliveries"),
                    Err(e) => tracing::warn!(error = %e, "could not prune old events"),
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(f) = state.forwarder.take() {
            f.abort();
        }
        Ok(())
    }
}

impl DispatcherState {
    async fn pass(&mut self) -> usize {
        if self.owned.is_empty() {
            return 0;
        }
        let shards: Vec<u16> = self.owned.keys().copied().collect();
        let pending = match self.args.store.pending_deliveries(&shards, BATCH).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not load webhook deliveries");
                return 0;
            }
        };
        let mut by_endpoint: BTreeMap<i64, Vec<Delivery>> = BTreeMap::new();
        for d in pending {
            by_endpoint.entry(d.endpoint_id).or_default().push(d);
        }
        let now = (self.args.config.clock)();
        let queues = by_endpoint
            .into_values()
            // The endpoint's oldest pending delivery decides: in backoff, the whole queue waits.
            .filter(|q| q.first().is_some_and(|d| d.next_attempt_at <= now));
        let (store, sender, clock) = (
            self.args.store.clone(),
            self.args.sender.clone(),
            self.args.config.clock.clone(),
        );
        bounded(
            queues,
            CONCURRENCY,
            |queue| deliver_in_order(queue, store.clone(), sender.clone(), clock.clone()),
            0,
            |sent, n| ControlFlow::Continue(sent + n.unwrap_or(0)),
        )
        .await
    }
}

/// Sends an endpoint's deliveries in order, stopping at the first failure.
async fn deliver_in_order(
    queue: Vec<Delivery>,
    store: Arc<dyn WebhookStore>,
    sender: Arc<dyn WebhookSender>,
    clock: super::config::Clock,
) -> usize {
    let mut sent = 0;
    for d in queue {
        let result = sender.send(&d).await;
        let at = clock();
        let recorded = match result {
            Ok(status) => {
                sent += 1;
                store.delivered(&d.id, status, at).await
            }
            Err((status, error)) => {
                let retry = retry_at(d.created_at, d.attempts + 1, at);
                if retry.is_none() {
                    tracing::warn!(webhook.endpoint = d.endpoint_id, event = %d.event_type, error = %error, "webhook delivery failed for 24 h; giving up");
                }
                let r = store.attempt_failed(&d.id, status, &error, at, retry).await;
                if retry.is_some() {
                    // Keep the order: later deliveries wait for this one.
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "could not record a webhook attempt");
                    }
                    return sent;
                }
                r
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record a webhook delivery");
            return sent;
        }
    }
    sent
}
