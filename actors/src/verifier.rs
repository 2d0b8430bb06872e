//! DomainVerifier: checks the TXT ownership challenge of the domains on the shards this node
//! owns — pending ones with backoff until their deadline, verified ones periodically — a few
//! lookups at a time. Each result is written with a condition on the state it was made for, so
//! no row lock is ever held across a DNS lookup.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use super::billing::forward_shards;
use super::children::bounded;
use super::config::EngineConfig;
use super::ports::{OwnedShards, TxtLookup, VerificationStore};
use tranche_core::verify::{Policy, challenge_name, evaluate};

/// Lookups in flight at once.
const CONCURRENCY: usize = 16;
/// Checks loaded per pass.
const BATCH: i64 = 500;

pub struct DomainVerifier;

pub struct VerifierArgs {
    pub config: EngineConfig,
    pub policy: Policy,
    /// How often due checks are looked for.
    pub tick: Duration,
    pub store: Arc<dyn VerificationStore>,
    pub lookup: Arc<dyn TxtLookup>,
    pub shards: watch::Receiver<OwnedShards>,
}

pub struct VerifierState {
    args: VerifierArgs,
    owned: OwnedShards,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

pub enum VerifierMsg {
    Shards(OwnedShards),
    Tick,
    /// Runs due checks now; replies with how many results were written (tests).
    #[cfg(feature = "test-hooks")]
    CheckNow(ractor::RpcReplyPort<usize>),
}

impl Actor for DomainVerifier {
    type Msg = VerifierMsg;
    type State = VerifierState;
    type Arguments = VerifierArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VerifierMsg>,
        args: VerifierArgs,
    ) -> Result<VerifierState, ActorProcessingErr> {
        myself.send_interval(args.tick, || VerifierMsg::Tick);
        let forwarder = Some(forward_shards(
            args.shards.clone(),
            myself.clone(),
            VerifierMsg::Shards,
        ));
        Ok(VerifierState {
            args,
            owned: OwnedShards::new(),
            forwarder,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<VerifierMsg>,
        msg: VerifierMsg,
        state: &mut VerifierState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VerifierMsg::Shards(owned) => state.owned = owned,
            VerifierMsg::Tick => {
                state.check_due().await;
            }
            #[cfg(feature = "test-hooks")]
            VerifierMsg::CheckNow(reply) => {
                let _ = reply.send(state.check_due().await);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<VerifierMsg>,
        state: &mut VerifierState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(f) = state.forwarder.take() {
            f.abort();
        }
        Ok(())
    }
}

impl VerifierState {
    async fn check_due(&mut self) -> usize {
        if self.owned.is_empty() {
            return 0;
        }
        let shards: Vec<u16> = self.owned.keys().copied().collect();
        let now = (self.args.config.clock)();
        let due = match self.args.store.due_verifications(&shards, now, BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not load due verifications");
                return 0;
            }
        };
        let (lookup, store, clock) = (
            self.args.lookup.clone(),
            self.args.store.clone(),
            self.args.config.clock.clone(),
        );
        let policy = Arc::new(self.args.policy.clone());
        bounded(
            due,
            CONCURRENCY,
            |check| {
                let (lookup, store, clock, policy) =
                    (lookup.clone(), store.clone(), clock.clone(), policy.clone());
                async move {
                    let result = lookup.txt(&challenge_name(&check.hostname)).await;
                    let now = clock();
                    let outcome = evaluate(&check, &result, now, &policy);
                    match store.record_verification(&check, &outcome, now).await {
                        Ok(true) => {
                            if outcome.newly_verified {
                                tracing::info!(domain.id = check.domain_id, domain = %check.hostname, "domain verified");
                            } else if outcome.status != check.status {
                                tracing::info!(domain.id = check.domain_id, domain = %check.hostname, status = outcome.status.as_str(), "domain verification state changed");
                            } else if outcome.lost && !check.lost {
                                tracing::warn!(domain.id = check.domain_id, domain = %check.hostname, "verified domain's challenge record has disappeared");
                            }
                            1
                        }
                        Ok(false) => 0,
                        Err(e) => {
                            tracing::warn!(domain.id = check.domain_id, error = %e, "could not record verification");
                            0
                        }
                    }
                }
            },
            0,
            |written, n| ControlFlow::Continue(written + n.unwrap_or(0)),
        )
        .await
    }
}
