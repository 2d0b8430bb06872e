//! BillingSupervisor: one CustomerBillingActor per customer whose billing shard this node owns.
//!
//! Each customer actor runs every `tick` (the first run phase-spread over the tick, so a node's
//! customers do not all hit the database at once) and asks the store for one billing run. The
//! run is one fenced transaction; a run that fails leaves nothing behind and the next tick
//! retries. Shards moving to another node stop the actors here; the new owner's actors pick up
//! exactly the snapshots still unbilled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;

use super::children::{Children, fenced};
use super::config::EngineConfig;
use super::ports::{BillingRunSummary, BillingStore, Fence, OwnedShards, StoreError};
use tranche_core::billing::BillingSettings;

/// What the billing actors of a node share.
pub struct BillingCtx {
    pub config: EngineConfig,
    pub settings: BillingSettings,
    pub store: Arc<dyn BillingStore>,
}

pub struct BillingSupervisor;

pub struct BillingArgs {
    pub ctx: Arc<BillingCtx>,
    /// The shards this node owns (published by the lease keeper).
    pub shards: watch::Receiver<OwnedShards>,
}

pub struct BillingSupervisorState {
    ctx: Arc<BillingCtx>,
    owned: OwnedShards,
    customers: Children<i64, CustomerMsg>,
    forwarder: tokio::task::JoinHandle<()>,
}

pub enum BillingMsg {
    Shards(OwnedShards),
    /// Re-read the customers of the owned shards.
    Reconcile,
    /// Runs every customer's billing now and replies with the sum of the runs (tests, bench).
    #[cfg(feature = "test-hooks")]
    RunAll(RpcReplyPort<Result<BillingRunSummary, String>>),
    /// Customers with a billing actor here.
    Customers(RpcReplyPort<Vec<i64>>),
    /// Deletes billing-run records older than the retention.
    Prune,
}

/// How often old billing-run records are pruned (by every node; the delete is idempotent).
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Forwards the lease keeper's shard announcements to `actor`.
pub(crate) fn forward_shards<M: ractor::Message>(
    mut shards: watch::Receiver<OwnedShards>,
    actor: ActorRef<M>,
    wrap: fn(OwnedShards) -> M,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let owned = shards.borrow_and_update().clone();
            if actor.cast(wrap(owned)).is_err() || shards.changed().await.is_err() {
                return;
            }
        }
    })
}

impl Actor for BillingSupervisor {
    type Msg = BillingMsg;
    type State = BillingSupervisorState;
    type Arguments = BillingArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BillingMsg>,
        args: BillingArgs,
    ) -> Result<BillingSupervisorState, ActorProcessingErr> {
        myself.send_interval(args.ctx.config.reconcile_interval, || BillingMsg::Reconcile);
        myself.send_interval(PRUNE_INTERVAL, || BillingMsg::Prune);
        let forwarder = forward_shards(args.shards, myself.clone(), BillingMsg::Shards);
        Ok(BillingSupervisorState {
            ctx: args.ctx,
            owned: OwnedShards::new(),
            customers: Children::default(),
            forwarder,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<BillingMsg>,
        msg: BillingMsg,
        state: &mut BillingSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BillingMsg::Shards(owned) => {
                if owned != state.owned {
                    state.owned = owned;
                    state.reconcile(&myself).await;
                }
            }
            BillingMsg::Reconcile => state.reconcile(&myself).await,
            #[cfg(feature = "test-hooks")]
            BillingMsg::RunAll(reply) => {
                let actors: Vec<ActorRef<CustomerMsg>> =
                    state.customers.actors().cloned().collect();
                tokio::spawn(async move {
                    let _ = reply.send(run_all(actors).await);
                });
            }
            BillingMsg::Customers(reply) => {
                let _ = reply.send(state.customers.keys().copied().collect());
            }
            BillingMsg::Prune => {
                let retention = chrono::TimeDelta::from_std(state.ctx.settings.run_retention)
                    .unwrap_or(chrono::TimeDelta::MAX);
                let before = (state.ctx.config.clock)() - retention;
                match state.ctx.store.prune_runs(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "pruned old billing-run records"),
                    Err(e) => tracing::warn!(error = %e, "could not prune billing-run records"),
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<BillingMsg>,
        event: SupervisionEvent,
        state: &mut BillingSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match &event {
            SupervisionEvent::ActorFailed(cell, _)
            | SupervisionEvent::ActorTerminated(cell, ..) => cell.clone(),
            _ => return Ok(()),
        };
        if let Some(customer) = state.customers.forget(cell.get_id()) {
            if let SupervisionEvent::ActorFailed(_, err) = event {
                tracing::error!(customer.id = customer, error = %err, "billing actor failed; restarting");
            }
            state.reconcile(&myself).await;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BillingMsg>,
        state: &mut BillingSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.forwarder.abort();
        state.customers.stop_all();
        Ok(())
    }
}

#[cfg(feature = "test-hooks")]
/// Runs the given customers' billing now, a few at a time, and sums the runs.
async fn run_all(actors: Vec<ActorRef<CustomerMsg>>) -> Result<BillingRunSummary, String> {
    use std::ops::ControlFlow;
    super::children::bounded(
        actors,
        4,
        |actor| async move {
            ractor::call!(actor, CustomerMsg::RunNow)
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        },
        Ok(BillingRunSummary::default()),
        |total, run| match (total, run) {
            (Ok(mut total), Ok(Ok(run))) => {
                total.add(&run);
                ControlFlow::Continue(Ok(total))
            }
            (_, Ok(Err(e))) => ControlFlow::Break(Err(e)),
            (_, Err(e)) => ControlFlow::Break(Err(e.to_string())),
            (Err(e), _) => ControlFlow::Break(Err(e)),
        },
    )
    .await
}

impl BillingSupervisorState {
    async fn reconcile(&mut self, myself: &ActorRef<BillingMsg>) {
        let wanted = if self.owned.is_empty() {
            HashMap::new()
        } else {
            let shards: Vec<u16> = self.owned.keys().copied().collect();
            match self.ctx.store.customers_on_shards(&shards).await {
                Ok(customers) => fenced(&self.owned, customers),
                Err(e) => {
                    tracing::warn!(error = %e, "could not load customers; keeping the billing actors");
                    return;
                }
            }
        };
        let ctx = &self.ctx;
        self.customers
            .reconcile(wanted, CustomerMsg::Fence, |customer_id, fence| async move {
                let args = CustomerArgs {
                    customer_id,
                    fence,
                    ctx: ctx.clone(),
                };
                match Actor::spawn_linked(None, CustomerBillingActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => Some(actor),
                    Err(e) => {
                        tracing::warn!(customer.id = customer_id, error = %e, "could not start billing actor");
                        None
                    }
                }
            })
            .await;
    }
}

/// Bills one customer every tick.
pub struct CustomerBillingActor;

pub struct CustomerArgs {
    pub customer_id: i64,
    pub fence: Fence,
    pub ctx: Arc<BillingCtx>,
}

pub struct CustomerState {
    customer_id: i64,
    fence: Fence,
    ctx: Arc<BillingCtx>,
}

pub enum CustomerMsg {
    Tick,
    /// The shard's fencing epoch changed.
    Fence(Fence),
    /// Run now and reply with the run's summary.
    RunNow(RpcReplyPort<Result<BillingRunSummary, String>>),
}

/// Where in the tick a customer's runs fall: spread by id, the same on every node.
fn phase(customer_id: i64, tick: Duration) -> Duration {
    let tick_ms = tick.as_millis().max(1) as u64;
    let spread = (customer_id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) % tick_ms;
    Duration::from_millis(spread)
}

impl Actor for CustomerBillingActor {
    type Msg = CustomerMsg;
    type State = CustomerState;
    type Arguments = CustomerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CustomerMsg>,
        args: CustomerArgs,
    ) -> Result<CustomerState, ActorProcessingErr> {
        let tick = args.ctx.settings.tick;
        let first = phase(args.customer_id, tick);
        let me = myself.clone();
        // The first run at the customer's phase, then every tick (ractor timers die with the
        // actor).
        myself.send_after(first, move || {
            me.send_interval(tick, || CustomerMsg::Tick);
            CustomerMsg::Tick
        });
        Ok(CustomerState {
            customer_id: args.customer_id,
            fence: args.fence,
            ctx: args.ctx,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<CustomerMsg>,
        msg: CustomerMsg,
        state: &mut CustomerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CustomerMsg::Tick => {
                let _ = state.run().await;
            }
            CustomerMsg::Fence(fence) => state.fence = fence,
            CustomerMsg::RunNow(reply) => {
                let _ = reply.send(state.run().await.map_err(|e| e.to_string()));
            }
        }
        Ok(())
    }
}

impl CustomerState {
    /// Bills until fewer than a batch of snapshots remain.
    async fn run(&mut self) -> Result<BillingRunSummary, StoreError> {
        let mut total = BillingRunSummary::default();
        // Metered events become snapshots first, so this run bills them. A failed fold leaves
        // its queue for the next tick; billing what is already snapshotted goes on.
        if let Err(e) = self.ctx.store.fold_metered_usage(self.customer_id).await {
            tracing::warn!(customer.id = self.customer_id, error = %e, "could not fold metered usage; retrying next tick");
        }
        loop {
            let now = (self.ctx.config.clock)();
            let run = self
                .ctx
                .store
                .bill_customer(
                    self.customer_id,
                    self.fence,
                    now,
                    &self.ctx.settings,
                    &self.ctx.config.node_id,
                )
                .await;
            match run {
                Ok(run) => {
                    total.add(&run);
                    if run.did_something() {
                        tracing::info!(
                            customer_id = self.customer_id,
                            snapshots = run.snapshots_billed,
                            invoices = run.invoices_touched,
                            finalized = run.invoices_finalized,
                            "billing run"
                        );
                    }
                    if (run.snapshots_billed as usize) < self.ctx.settings.batch {
                        return Ok(total);
                    }
                }
                Err(e @ StoreError::Fenced { .. }) => {
                    tracing::info!(customer.id = self.customer_id, error = %e, "billing skipped: shard moved");
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(customer.id = self.customer_id, error = %e, "billing run failed; retrying next tick");
                    return Err(e);
                }
            }
        }
    }
}
