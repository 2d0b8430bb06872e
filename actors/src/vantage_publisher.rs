//! VantagePublisher: batches this node's vantage reports to the deciders.
//!
//! Observer domain actors cast a [`VantageReport`] after every probe result; the publisher keeps
//! the latest per domain and sends them every `vantage_report_interval` in one call to the
//! [`VantageBus`] (over PostgreSQL that is one statement of `NOTIFY`s: no table is written, no
//! WAL). A failed send is dropped, not retried: the next probe brings a newer summary, and a
//! summary that never arrives leaves its vantage unknown, which never counts as down.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::config::EngineConfig;
use super::ports::{VantageBus, VantageReport};

pub struct VantagePublisher;

pub struct PublisherArgs {
    pub config: EngineConfig,
    pub bus: Arc<dyn VantageBus>,
}

pub struct PublisherState {
    bus: Arc<dyn VantageBus>,
    pending: HashMap<i64, VantageReport>,
}

pub enum PublisherMsg {
    /// An observer's latest summary of one domain.
    Report(VantageReport),
    /// Periodic send.
    Flush,
}

impl Actor for VantagePublisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = PublisherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PublisherMsg>,
        args: PublisherArgs,
    ) -> Result<PublisherState, ActorProcessingErr> {
        myself.send_interval(args.config.vantage_report_interval, || PublisherMsg::Flush);
        Ok(PublisherState {
            bus: args.bus,
            pending: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PublisherMsg>,
        msg: PublisherMsg,
        state: &mut PublisherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PublisherMsg::Report(report) => {
                state.pending.insert(report.domain_id, report);
            }
            PublisherMsg::Flush if state.pending.is_empty() => {}
            PublisherMsg::Flush => {
                let batch: Vec<VantageReport> = state.pending.drain().map(|(_, r)| r).collect();
                if let Err(e) = state.bus.publish(&batch).await {
                    tracing::warn!(reports = batch.len(), error = %e, "could not send vantage reports; the deciders count this vantage as unknown until the next ones arrive");
                }
            }
        }
        Ok(())
    }
}
