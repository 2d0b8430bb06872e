//! MeteringBatcher: group commit of usage events.
//!
//! Every `POST /v1/usage-events` request sends its events here and waits for the answer. The
//! batcher gathers the requests that arrived while it was busy into one call of the store (one
//! transaction), and answers each request only after that transaction committed — an
//! acknowledged event is durable, and a failed transaction answers every request of the group
//! with the error (nothing was written; the client retries, and deduplication makes the retry
//! safe).
//!
//! The gathering needs no timer: a request that finds the batcher idle queues a `Flush` behind
//! itself, and everything that reaches the mailbox before that `Flush` is handled joins the
//! group. At low load a request is committed alone, at once; under load the groups grow with
//! the time a commit takes, up to [`BatcherArgs::max_events`].

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tranche_core::metering::batch::{Incoming, Outcome};

use super::config::Clock;
use super::ports::MeteringStore;

/// How often events past the deduplication retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct MeteringBatcher;

pub struct BatcherArgs {
    pub store: Arc<dyn MeteringStore>,
    pub clock: Clock,
    pub node_id: String,
    /// Most events in one transaction (a request's events are never split).
    pub max_events: usize,
    /// How long event identities are kept (at least the 32 days of deduplication).
    pub retention: chrono::Duration,
}

/// A request's answer: each event's outcome in order, or why nothing was written.
pub type Answer = Result<Vec<Outcome>, String>;

pub enum BatcherMsg {
    /// One request's events.
    Submit(Vec<Incoming>, RpcReplyPort<Answer>),
    /// Commit what was gathered.
    Flush,
    /// Delete events past the retention.
    Prune,
}

pub struct BatcherState {
    args: BatcherArgs,
    pending: Vec<(Vec<Incoming>, RpcReplyPort<Answer>)>,
    pending_events: usize,
    flush_queued: bool,
}

impl Actor for MeteringBatcher {
    type Msg = BatcherMsg;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BatcherMsg>,
        args: BatcherArgs,
    ) -> Result<BatcherState, ActorProcessingErr> {
        myself.send_interval(PRUNE_EVERY, || BatcherMsg::Prune);
        Ok(BatcherState {
            args,
            pending: Vec::new(),
            pending_events: 0,
            flush_queued: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<BatcherMsg>,
        msg: BatcherMsg,
        state: &mut BatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BatcherMsg::Submit(events, reply) => {
                state.pending_events += events.len();
                state.pending.push((events, reply));
                if state.pending_events >= state.args.max_events {
                    state.flush().await;
                } else if !state.flush_queued {
                    state.flush_queued = true;
                    // Behind everything already in the mailbox: those requests join the group.
                    myself.send_message(BatcherMsg::Flush)?;
                }
            }
            BatcherMsg::Flush => {
                state.flush_queued = false;
                state.flush().await;
            }
            BatcherMsg::Prune => {
                let before = (state.args.clock)() - state.args.retention;
                match state.args.store.prune_events(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "pruned usage events past retention"),
                    Err(e) => tracing::warn!(error = %e, "could not prune usage events"),
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BatcherMsg>,
        state: &mut BatcherState,
    ) -> Result<(), ActorProcessingErr> {
        state.flush().await;
        Ok(())
    }
}

impl BatcherState {
    /// Commits every pending request in one transaction and answers them.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.pending);
        self.pending_events = 0;
        let events: Vec<Incoming> = group
            .iter()
            .flat_map(|(events, _)| events.iter().cloned())
            .collect();
        let now = (self.args.clock)();
        let result = self
            .args
            .store
            .ingest(&events, now, &self.args.node_id)
            .await;
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (events, reply) in group {
                    let mine: Vec<Outcome> = outcomes.by_ref().take(events.len()).collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::warn!(events = events.len(), error = %e, "usage events not committed");
                let message = e.to_string();
                for (_, reply) in group {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}
