//! ObservationWriter: batches probe observations into the database.
//!
//! Domain actors cast every probe result here; the writer flushes the buffer every
//! `flush_interval` in one call (per-minute aggregates and the latest result per domain and CDN),
//! so probing never waits on the database. If a flush fails the batch is kept and retried, up
//! to a bound past which the oldest observations are dropped (they are soft state: decisions
//! never depend on them).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::config::EngineConfig;
use super::ports::{EngineStore, Observation};

/// Observations kept while the database is unreachable.
const MAX_BUFFER: usize = 200_000;
/// How often aggregates older than the retention are deleted (every node does it; it is
/// idempotent and cheap with the primary key's minute column).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct ObservationWriter;

pub struct WriterArgs {
    pub config: EngineConfig,
    pub store: Arc<dyn EngineStore>,
}

pub struct WriterState {
    config: EngineConfig,
    store: Arc<dyn EngineStore>,
    buffer: Vec<Observation>,
}

pub enum ObservationMsg {
    /// One probe result.
    Record(Observation),
    /// Periodic flush.
    Flush,
    /// Flush now and reply when done (shutdown, tests).
    #[cfg(feature = "test-hooks")]
    FlushNow(ractor::RpcReplyPort<()>),
    /// Delete aggregates past the retention.
    Prune,
}

impl Actor for ObservationWriter {
    type Msg = ObservationMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ObservationMsg>,
        args: WriterArgs,
    ) -> Result<WriterState, ActorProcessingErr> {
        myself.send_interval(args.config.flush_interval, || ObservationMsg::Flush);
        myself.send_interval(PRUNE_EVERY, || ObservationMsg::Prune);
        Ok(WriterState {
            config: args.config,
            store: args.store,
            buffer: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ObservationMsg>,
        msg: ObservationMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ObservationMsg::Record(o) => {
                if state.buffer.len() >= MAX_BUFFER {
                    state.buffer.drain(..MAX_BUFFER / 10);
                }
                state.buffer.push(o);
            }
            ObservationMsg::Flush => state.flush().await,
            #[cfg(feature = "test-hooks")]
            ObservationMsg::FlushNow(reply) => {
                state.flush().await;
                let _ = reply.send(());
            }
            ObservationMsg::Prune => {
                let retention = chrono::Duration::from_std(state.config.probe_retention)
                    .unwrap_or(chrono::Duration::days(7));
                let before = (state.config.clock)() - retention;
                match state.store.prune_observations(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "pruned old probe aggregates"),
                    Err(e) => tracing::warn!(error = %e, "could not prune probe aggregates"),
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ObservationMsg>,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        state.flush().await;
        Ok(())
    }
}

impl WriterState {
    async fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        match self
            .store
            .write_observations(&self.config.node_id, &self.buffer)
            .await
        {
            Ok(()) => self.buffer.clear(),
            Err(e) => {
                tracing::warn!(buffered = self.buffer.len(), error = %e, "could not write probe observations; will retry")
            }
        }
    }
}
