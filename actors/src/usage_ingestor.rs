//! UsageIngestor: pulls CDN usage analytics for the services of the customers whose billing
//! shard this node owns, every `tick`, into usage snapshots.
//!
//! Each tick re-reads the last `lookback` in whole windows (analytics arrive late), asks every
//! source for the hostnames of the services that use its CDN (in chunks), attributes the bytes
//! to services ([`tranche_core::usage::attribute`]) and records them. Recording is idempotent: a
//! replayed window changes nothing, and a window already invoiced is never changed (the store
//! records late usage as an adjustment). Rate limits and transient errors back off
//! exponentially with jitter, up to `max_attempts` per query; the next tick retries the rest.
//!
//! A pass runs in a task of its own — its queries, backoffs and writes never block the actor,
//! so shard changes and stops are handled at once — and reports back with `Done`; one pass at a
//! time, ticks arriving meanwhile are skipped.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use super::billing::forward_shards;
use super::config::{EngineConfig, jittered_backoff};
use super::ports::{OwnedShards, UsageStore};
use crate::ports::UsageSource;
use tranche_core::usage::{SourceError, SourceQuery, UsageSettings, attribute, poll_span};

pub struct UsageIngestor;

pub struct UsageArgs {
    pub config: EngineConfig,
    pub settings: UsageSettings,
    pub store: Arc<dyn UsageStore>,
    pub sources: Vec<Arc<dyn UsageSource>>,
    pub shards: watch::Receiver<OwnedShards>,
}

pub struct UsageState {
    args: Arc<UsageArgs>,
    owned: OwnedShards,
    forwarder: Option<tokio::task::JoinHandle<()>>,
    /// A pass is running.
    running: bool,
    /// `IngestNow` callers waiting for a pass that starts after the running one.
    queued: Vec<RpcReplyPort<IngestSummary>>,
}

/// What one ingestion pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Source queries answered (after retries).
    pub queries: u32,
    /// Rows the sources returned.
    pub rows: u64,
    /// Snapshots created, updated or added as adjustments.
    pub snapshots_written: u64,
    /// Queries given up on after `max_attempts`, with the last error.
    pub failures: Vec<String>,
}

pub enum UsageMsg {
    Shards(OwnedShards),
    Tick,
    /// Ingests now and replies with what happened (tests, bench).
    #[cfg(feature = "test-hooks")]
    IngestNow(RpcReplyPort<IngestSummary>),
    /// A pass finished.
    Done,
}

impl Actor for UsageIngestor {
    type Msg = UsageMsg;
    type State = UsageState;
    type Arguments = UsageArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<UsageMsg>,
        mut args: UsageArgs,
    ) -> Result<UsageState, ActorProcessingErr> {
        myself.send_interval(args.settings.tick, || UsageMsg::Tick);
        let shards = args.shards.clone();
        args.shards.mark_unchanged();
        let forwarder = Some(forward_shards(shards, myself.clone(), UsageMsg::Shards));
        Ok(UsageState {
            args: Arc::new(args),
            owned: OwnedShards::new(),
            forwarder,
            running: false,
            queued: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<UsageMsg>,
        msg: UsageMsg,
        state: &mut UsageState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            UsageMsg::Shards(owned) => {
                let first = state.owned.is_empty() && !owned.is_empty();
                state.owned = owned;
                if first {
                    // Catch up soon after there is something to ingest for.
                    myself.send_after(state.args.settings.first_poll, || UsageMsg::Tick);
                }
            }
            UsageMsg::Tick => {
                if !state.running {
                    state.start_pass(&myself, Vec::new());
                }
            }
            #[cfg(feature = "test-hooks")]
            UsageMsg::IngestNow(reply) => {
                if state.running {
                    state.queued.push(reply);
                } else {
                    state.start_pass(&myself, vec![reply]);
                }
            }
            UsageMsg::Done => {
                state.running = false;
                if !state.queued.is_empty() {
                    let replies = std::mem::take(&mut state.queued);
                    state.start_pass(&myself, replies);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<UsageMsg>,
        state: &mut UsageState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(f) = state.forwarder.take() {
            f.abort();
        }
        Ok(())
    }
}

impl UsageState {
    /// Runs one pass in a task; it answers `replies` and reports `Done`.
    fn start_pass(
        &mut self,
        myself: &ActorRef<UsageMsg>,
        replies: Vec<RpcReplyPort<IngestSummary>>,
    ) {
        self.running = true;
        let (args, me) = (self.args.clone(), myself.clone());
        let shards: Vec<u16> = self.owned.keys().copied().collect();
        tokio::spawn(async move {
            let summary = ingest(&args, &shards).await;
            for reply in replies {
                let _ = reply.send(summary.clone());
            }
            let _ = me.cast(UsageMsg::Done);
        });
    }
}

/// One ingestion pass over the services of `shards`.
async fn ingest(args: &UsageArgs, shards: &[u16]) -> IngestSummary {
    let mut summary = IngestSummary::default();
    if shards.is_empty() || args.sources.is_empty() {
        return summary;
    }
    let services = match args.store.usage_services(shards).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "usage ingestion: could not load services");
            summary.failures.push(e.to_string());
            return summary;
        }
    };
    let settings = &args.settings;
    let (from, to) = poll_span((args.config.clock)(), settings.window, settings.lookback);
    for source in &args.sources {
        let cdn = source.cdn();
        let mut hostnames: Vec<String> = services
            .iter()
            .filter(|s| {
                s.primary_cdn.eq_ignore_ascii_case(cdn) || s.backup_cdn.eq_ignore_ascii_case(cdn)
            })
            .flat_map(|s| s.hostnames.iter().cloned())
            .collect();
        hostnames.sort();
        hostnames.dedup();
        for chunk in hostnames.chunks(settings.hostnames_per_query.max(1)) {
            let query = SourceQuery {
                hostnames: chunk.to_vec(),
                from,
                to,
                window: settings.window,
            };
            let rows = match fetch_with_backoff(source.as_ref(), &query, settings).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(source = cdn, error = %e, "usage query failed; the next tick retries");
                    summary.failures.push(format!("{cdn}: {e}"));
                    continue;
                }
            };
            summary.queries += 1;
            summary.rows += rows.len() as u64;
            let reports = attribute(&services, cdn, settings.window, &rows);
            match args.store.record_usage(&reports).await {
                Ok(n) => summary.snapshots_written += n as u64,
                Err(e) => {
                    tracing::warn!(source = cdn, error = %e, "could not record usage; the next tick retries");
                    summary.failures.push(format!("{cdn}: {e}"));
                }
            }
        }
    }
    if summary.failures.is_empty() && summary.queries > 0 {
        // Dogfooding: the pass reports itself into SLO tracking for the customers it covered.
        let mut customers: Vec<i64> = services.iter().map(|s| s.customer_id).collect();
        customers.sort_unstable();
        customers.dedup();
        if let Err(e) = args
            .store
            .report_ingestion(&customers, from, to, &args.config.node_id)
            .await
        {
            tracing::warn!(error = %e, "could not report the ingestion pass as a job run");
        }
    }
    if summary.snapshots_written > 0 || !summary.failures.is_empty() {
        tracing::info!(
            queries = summary.queries,
            rows = summary.rows,
            written = summary.snapshots_written,
            failures = summary.failures.len(),
            "usage ingestion"
        );
    }
    summary
}

/// One query with retries: rate limits wait for the source's hint (or the backoff), transient
/// errors back off exponentially with jitter, permanent errors fail at once.
async fn fetch_with_backoff(
    source: &dyn UsageSource,
    query: &SourceQuery,
    settings: &UsageSettings,
) -> Result<Vec<tranche_core::usage::HostUsage>, SourceError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match source.fetch(query).await {
            Ok(rows) => return Ok(rows),
            Err(e @ SourceError::Permanent(_)) => return Err(e),
            Err(e) => e,
        };
        if attempt >= settings.max_attempts {
            return Err(err);
        }
        let backoff = jittered_backoff(settings.backoff_base, attempt, Duration::from_secs(60));
        let wait = match &err {
            SourceError::RateLimited {
                retry_after: Some(hint),
            } => (*hint).max(backoff),
            _ => backoff,
        };
        tracing::debug!(source = source.cdn(), attempt, error = %err, ?wait, "usage query retry");
        tokio::time::sleep(wait).await;
    }
}
