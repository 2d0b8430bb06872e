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
//! the time a commit takes, up to [`BatcherArgs::max_events`]. Up to
//! [`BatcherArgs::max_inflight`] commits run at once (in tasks that report back with
//! `Committed`): the next group's events are written while the previous group commits, and
//! only the rows both touch (a minute's rollup, a period total) wait for each other.

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
    /// Most transactions in flight at once.
    pub max_inflight: usize,
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
    /// A commit finished (its requests are answered).
    Committed,
    /// Delete events past the retention.
    Prune,
}

pub struct BatcherState {
    args: BatcherArgs,
    pending: Vec<(Vec<Incoming>, RpcReplyPort<Answer>)>,
    pending_events: usize,
    flush_queued: bool,
    inflight: usize,
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
            inflight: 0,
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
                    state.start_commit(&myself);
                } else {
                    state.queue_flush(&myself)?;
                }
            }
            BatcherMsg::Flush => {
                state.flush_queued = false;
                state.start_commit(&myself);
            }
            BatcherMsg::Committed => {
                state.inflight = state.inflight.saturating_sub(1);
                if !state.pending.is_empty() {
                    state.queue_flush(&myself)?;
                }
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
        if !state.pending.is_empty() {
            let group = state.take_group();
            commit(CommitArgs::from(&state.args), group).await;
        }
        Ok(())
    }
}

/// A group of requests committed together.
type Group = Vec<(Vec<Incoming>, RpcReplyPort<Answer>)>;

impl BatcherState {
    /// Queues a `Flush` behind everything already in the mailbox (those requests join the
    /// group), unless one is queued.
    fn queue_flush(&mut self, myself: &ActorRef<BatcherMsg>) -> Result<(), ActorProcessingErr> {
        if !self.flush_queued {
            self.flush_queued = true;
            myself.send_message(BatcherMsg::Flush)?;
        }
        Ok(())
    }

    /// Pending requests up to `max_events` (at least one request).
    fn take_group(&mut self) -> Group {
        let mut n = 0;
        let mut take = 0;
        for (events, _) in &self.pending {
            if take > 0 && n + events.len() > self.args.max_events {
                break;
            }
            n += events.len();
            take += 1;
        }
        self.pending_events -= n;
        self.pending.drain(..take).collect()
    }

    /// Starts committing the pending requests in a task, if a commit slot is free (else the
    /// next `Committed` starts it).
    fn start_commit(&mut self, myself: &ActorRef<BatcherMsg>) {
        if self.pending.is_empty() || self.inflight >= self.args.max_inflight {
            return;
        }
        self.inflight += 1;
        let group = self.take_group();
        let args = CommitArgs::from(&self.args);
        let me = myself.clone();
        tokio::spawn(async move {
            commit(args, group).await;
            let _ = me.send_message(BatcherMsg::Committed);
        });
    }
}

/// What a commit needs from the batcher.
struct CommitArgs {
    store: Arc<dyn MeteringStore>,
    clock: Clock,
    node_id: String,
}

impl From<&BatcherArgs> for CommitArgs {
    fn from(a: &BatcherArgs) -> Self {
        Self {
            store: a.store.clone(),
            clock: a.clock.clone(),
            node_id: a.node_id.clone(),
        }
    }
}

/// Commits a group in one transaction and answers its requests.
async fn commit(args: CommitArgs, group: Group) {
    let events: Vec<Incoming> = group
        .iter()
        .flat_map(|(events, _)| events.iter().cloned())
        .collect();
    let now = (args.clock)();
    match args.store.ingest(&events, now, &args.node_id).await {
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
