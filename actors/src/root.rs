//! RootSupervisor: the top of a node's actor tree.
//!
//! It starts the observation writer, the DNS supervisor (when DNS steering is configured), the
//! billing supervisor and usage ingestor (when configured), the probe supervisor and the lease
//! keeper, linked, in that order (each needs the ones before). The lease keeper publishes the
//! owned shards to the probe and DNS supervisors directly and to everyone else through a watch
//! channel the root owns, so it survives the restart of either side. A child that fails is restarted; a restarted probe
//! supervisor is handed to the lease keeper, which re-sends the owned shards; a restarted lease
//! keeper drops every lock first, so ownership restarts from a clean slate.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use tokio::sync::watch;

use super::billing::{BillingArgs, BillingCtx, BillingMsg, BillingSupervisor};
use super::config::EngineConfig;
use super::dns_supervisor::{DnsMsg, DnsSupervisor};
use super::domain_actor::EngineCtx;
use super::lease_keeper::{LeaseArgs, LeaseKeeper, LeaseMsg};
use super::observation_writer::{ObservationMsg, ObservationWriter, WriterArgs};
use super::ports::{
    BillingStore, DnsStore, EngineStore, LeaseBackend, OwnedShards, SloStore, TxtLookup,
    UsageStore, VantageBus, VerificationStore, WebhookSender, WebhookStore,
};
use super::probe_supervisor::{ProbeSupervisor, SupervisorMsg};
use super::slo_tracker::{SloArgs, SloCtx, SloMsg, SloSupervisor};
use super::usage_ingestor::{UsageArgs, UsageIngestor, UsageMsg};
use super::vantage_publisher::{PublisherArgs, PublisherMsg, VantagePublisher};
use super::verifier::{DomainVerifier, VerifierArgs, VerifierMsg};
use super::webhooks::{DispatcherArgs, DispatcherMsg, WebhookDispatcher};
use super::zone_actor::DnsCtx;
use crate::ports::DnsProvider;
use crate::ports::Prober;
use crate::ports::UsageSource;
use crate::rate::TokenBucket;
use tranche_core::billing::BillingSettings;
use tranche_core::dns::planner::BatchLimits;
use tranche_core::usage::UsageSettings;
use tranche_core::verify::Policy;

pub struct RootSupervisor;

pub struct RootArgs {
    pub config: EngineConfig,
    pub store: Arc<dyn EngineStore>,
    pub leases: Arc<dyn LeaseBackend>,
    pub prober: Arc<dyn Prober>,
    /// DNS steering; `None` leaves desired weights unapplied (API-only or tests).
    pub dns: Option<DnsSetup>,
    /// Invoicing; `None` bills nothing on this node.
    pub billing: Option<BillingSetup>,
    /// Usage ingestion from CDN analytics; `None` pulls nothing on this node.
    pub usage: Option<UsageSetup>,
    /// Domain ownership verification; `None` checks nothing on this node.
    pub verify: Option<VerifySetup>,
    /// Webhook deliveries; `None` sends nothing from this node.
    pub webhooks: Option<WebhookSetup>,
    /// Probing from several vantages; `None`: this node neither observes for others nor hears
    /// from them (every domain is judged from its owner's vantage alone).
    pub vantages: Option<VantageSetup>,
    /// SLO tracking of batch jobs; `None` tracks nothing on this node.
    pub slos: Option<SloSetup>,
}

/// What SLO tracking needs.
pub struct SloSetup {
    pub store: Arc<dyn SloStore>,
}

/// What multi-vantage probing needs.
pub struct VantageSetup {
    /// Sends this node's summaries to the deciders (the adapter hands the summaries it hears
    /// to [`crate::Engine::vantage_reports`]).
    pub bus: Arc<dyn VantageBus>,
}

/// What webhook delivery needs.
pub struct WebhookSetup {
    pub store: Arc<dyn WebhookStore>,
    pub sender: Arc<dyn WebhookSender>,
    /// Pause between passes when idle.
    pub idle: std::time::Duration,
    /// How long events and their delivery logs are kept.
    pub retention: std::time::Duration,
}

/// What domain verification needs.
pub struct VerifySetup {
    pub store: Arc<dyn VerificationStore>,
    pub lookup: Arc<dyn TxtLookup>,
    pub policy: Policy,
    pub tick: std::time::Duration,
}

/// What invoicing needs.
pub struct BillingSetup {
    pub store: Arc<dyn BillingStore>,
    pub settings: BillingSettings,
}

/// What usage ingestion needs.
pub struct UsageSetup {
    pub store: Arc<dyn UsageStore>,
    pub settings: UsageSettings,
    pub sources: Vec<Arc<dyn UsageSource>>,
}

/// What DNS steering needs.
pub struct DnsSetup {
    pub store: Arc<dyn DnsStore>,
    pub provider: Arc<dyn DnsProvider>,
    pub limiter: Arc<TokenBucket>,
    pub limits: BatchLimits,
}

pub struct RootState {
    args: RootArgs,
    pub(crate) writer: ActorRef<ObservationMsg>,
    pub(crate) publisher: Option<ActorRef<PublisherMsg>>,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
    pub(crate) leases: ActorRef<LeaseMsg>,
    pub(crate) dns: Option<ActorRef<DnsMsg>>,
    pub(crate) billing: Option<ActorRef<BillingMsg>>,
    pub(crate) usage: Option<ActorRef<UsageMsg>>,
    pub(crate) verifier: Option<ActorRef<VerifierMsg>>,
    pub(crate) webhooks: Option<ActorRef<DispatcherMsg>>,
    pub(crate) slos: Option<ActorRef<SloMsg>>,
    /// The owned shards, as the lease keeper last published them.
    shards: Arc<watch::Sender<OwnedShards>>,
}

/// References to the root's children: writer, probe supervisor, lease keeper, DNS supervisor.
pub type Children = (
    ActorRef<ObservationMsg>,
    ActorRef<SupervisorMsg>,
    ActorRef<LeaseMsg>,
    Option<ActorRef<DnsMsg>>,
);

pub enum RootMsg {
    /// The references of the children (for the engine handle).
    Children(ractor::RpcReplyPort<Children>),
    /// The billing supervisor, if this node bills.
    Billing(ractor::RpcReplyPort<Option<ActorRef<BillingMsg>>>),
    /// The usage ingestor, if this node ingests usage.
    Usage(ractor::RpcReplyPort<Option<ActorRef<UsageMsg>>>),
    /// The domain verifier, if this node verifies domains.
    Verifier(ractor::RpcReplyPort<Option<ActorRef<VerifierMsg>>>),
    /// The webhook dispatcher, if this node sends webhooks.
    Webhooks(ractor::RpcReplyPort<Option<ActorRef<DispatcherMsg>>>),
    /// The SLO supervisor, if this node tracks SLOs.
    Slos(ractor::RpcReplyPort<Option<ActorRef<SloMsg>>>),
}

impl RootState {
    fn ctx(&self) -> Arc<EngineCtx> {
        ctx(
            &self.args,
            self.writer.clone(),
            self.dns.clone(),
            self.publisher.clone(),
        )
    }

    /// A new probe supervisor (with the current writer and DNS references), handed to the lease
    /// keeper, which re-sends the owned shards.
    async fn respawn_supervisor(
        &mut self,
        root: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.supervisor = spawn_supervisor(self.ctx(), root).await?;
        let _ = self
            .leases
            .cast(LeaseMsg::SetSupervisor(self.supervisor.clone()));
        Ok(())
    }

    /// A new lease keeper reporting to the current supervisors; it starts from a clean set of
    /// locks.
    async fn respawn_leases(&mut self, root: &ActorRef<RootMsg>) -> Result<(), ActorProcessingErr> {
        self.leases = spawn_leases(
            &self.args,
            self.supervisor.clone(),
            self.dns.clone(),
            self.shards.clone(),
            root,
        )
        .await?;
        Ok(())
    }
}

fn ctx(
    args: &RootArgs,
    writer: ActorRef<ObservationMsg>,
    dns: Option<ActorRef<DnsMsg>>,
    vantages: Option<ActorRef<PublisherMsg>>,
) -> Arc<EngineCtx> {
    Arc::new(EngineCtx {
        config: args.config.clone(),
        store: args.store.clone(),
        prober: args.prober.clone(),
        observations: writer,
        dns,
        vantages,
        ticks: crate::tick_wheel::TickWheel::start(),
    })
}

async fn spawn_publisher(
    args: &RootArgs,
    root: &ActorRef<RootMsg>,
) -> Result<Option<ActorRef<PublisherMsg>>, ActorProcessingErr> {
    let Some(setup) = &args.vantages else {
        return Ok(None);
    };
    let publisher_args = PublisherArgs {
        config: args.config.clone(),
        bus: setup.bus.clone(),
    };
    Ok(Some(
        Actor::spawn_linked(None, VantagePublisher, publisher_args, root.get_cell())
            .await?
            .0,
    ))
}

async fn spawn_dns(
    args: &RootArgs,
    root: &ActorRef<RootMsg>,
) -> Result<Option<ActorRef<DnsMsg>>, ActorProcessingErr> {
    let Some(setup) = &args.dns else {
        return Ok(None);
    };
    let ctx = Arc::new(DnsCtx {
        config: args.config.clone(),
        store: setup.store.clone(),
        provider: setup.provider.clone(),
        limiter: setup.limiter.clone(),
        limits: setup.limits,
    });
    Ok(Some(
        Actor::spawn_linked(None, DnsSupervisor, ctx, root.get_cell())
            .await?
            .0,
    ))
}

async fn spawn_writer(
    args: &RootArgs,
    root: &ActorRef<RootMsg>,
) -> Result<ActorRef<ObservationMsg>, ActorProcessingErr> {
    let writer_args = WriterArgs {
        config: args.config.clone(),
        store: args.store.clone(),
    };
    Ok(
        Actor::spawn_linked(None, ObservationWriter, writer_args, root.get_cell())
            .await?
            .0,
    )
}

async fn spawn_supervisor(
    ctx: Arc<EngineCtx>,
    root: &ActorRef<RootMsg>,
) -> Result<ActorRef<SupervisorMsg>, ActorProcessingErr> {
    Ok(
        Actor::spawn_linked(None, ProbeSupervisor, ctx, root.get_cell())
            .await?
            .0,
    )
}

async fn spawn_billing(
    args: &RootArgs,
    shards: &watch::Sender<OwnedShards>,
    root: &ActorRef<RootMsg>,
) -> Result<Option<ActorRef<BillingMsg>>, ActorProcessingErr> {
    let Some(setup) = &args.billing else {
        return Ok(None);
    };
    let billing_args = BillingArgs {
        ctx: Arc::new(BillingCtx {
            config: args.config.clone(),
            settings: setup.settings.clone(),
            store: setup.store.clone(),
        }),
        shards: shards.subscribe(),
    };
    Ok(Some(
        Actor::spawn_linked(None, BillingSupervisor, billing_args, root.get_cell())
            .await?
            .0,
    ))
}

async fn spawn_usage(
    args: &RootArgs,
    shards: &watch::Sender<OwnedShards>,
    root: &ActorRef<RootMsg>,
) -> Result<Option<ActorRef<UsageMsg>>, ActorProcessingErr> {
    let Some(setup) = &args.usage else {
        return Ok(None);
    };
    let usage_args = UsageArgs {
        config: args.config.clone(),
        settings: setup.settings.clone(),
        store: setup.store.clone(),
        sources: setup.sources.clone(),
        shards: shards.subscribe(),
    };
    Ok(Some(
        Actor::spawn_linked(None, UsageIngestor, usage_args, root.get_cell())
            .await?
            .0,
    ))
}

async fn spawn_verifier(
    args: &RootArgs,
    shards: &watch::Sender<OwnedShards>,
    root: &ActorRef<RootMsg>,
) -> Result<Option<ActorRef<VerifierMsg>>, ActorProcessingErr> {
    let Some(setup) = &args.verify else {
        return Ok(None);
    };
    let verifier_args = VerifierArgs {
        config: args.config.clone(),
        policy: setup.policy.clone(),
        tick: setup.tick,
        store: setup.store.clone(),
        lookup: setup.lookup.clone(),
        shards: shards.subscribe(),
    };
    Ok(Some(
        Actor::spawn_linked(None, DomainVerifier, verifier_args, root.get_cell())
            .await?
            .0,
    ))
}

async fn spawn_webhooks(
    args: &RootArgs,
    shards: &watch::Sender<OwnedShards>,
    root: &ActorRef<RootMsg>,
) -> Result<Option<ActorRef<DispatcherMsg>>, ActorProcessingErr> {
    let Some(setup) = &args.webhooks else {
        return Ok(None);
    };
    let dispatcher_args = DispatcherArgs {
        config: args.config.clone(),
        idle: setup.idle,
        retention: setup.retention,
        store: setup.store.clone(),
        sender: setup.sender.clone(),
        shards: shards.subscribe(),
    };
    Ok(Some(
        Actor::spawn_linked(None, WebhookDispatcher, dispatcher_args, root.get_cell())
            .await?
            .0,
    ))
}

async fn spawn_slos(
    args: &RootArgs,
    shards: &watch::Sender<OwnedShards>,
    root: &ActorRef<RootMsg>,
) -> Result<Option<ActorRef<SloMsg>>, ActorProcessingErr> {
    let Some(setup) = &args.slos else {
        return Ok(None);
    };
    let slo_args = SloArgs {
        ctx: Arc::new(SloCtx {
            config: args.config.clone(),
            store: setup.store.clone(),
        }),
        shards: shards.subscribe(),
    };
    Ok(Some(
        Actor::spawn_linked(None, SloSupervisor, slo_args, root.get_cell())
            .await?
            .0,
    ))
}

async fn spawn_leases(
    args: &RootArgs,
    supervisor: ActorRef<SupervisorMsg>,
    dns: Option<ActorRef<DnsMsg>>,
    shards: Arc<watch::Sender<OwnedShards>>,
    root: &ActorRef<RootMsg>,
) -> Result<ActorRef<LeaseMsg>, ActorProcessingErr> {
    let lease_args = LeaseArgs {
        config: args.config.clone(),
        backend: args.leases.clone(),
        supervisor,
        dns,
        shards,
    };
    Ok(
        Actor::spawn_linked(None, LeaseKeeper, lease_args, root.get_cell())
            .await?
            .0,
    )
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let shards = Arc::new(watch::Sender::new(OwnedShards::new()));
        let writer = spawn_writer(&args, &myself).await?;
        let publisher = spawn_publisher(&args, &myself).await?;
        let dns = spawn_dns(&args, &myself).await?;
        let billing = spawn_billing(&args, &shards, &myself).await?;
        let usage = spawn_usage(&args, &shards, &myself).await?;
        let verifier = spawn_verifier(&args, &shards, &myself).await?;
        let webhooks = spawn_webhooks(&args, &shards, &myself).await?;
        let slos = spawn_slos(&args, &shards, &myself).await?;
        let supervisor = spawn_supervisor(
            ctx(&args, writer.clone(), dns.clone(), publisher.clone()),
            &myself,
        )
        .await?;
        let leases = spawn_leases(
            &args,
            supervisor.clone(),
            dns.clone(),
            shards.clone(),
            &myself,
        )
        .await?;
        Ok(RootState {
            args,
            writer,
            publisher,
            supervisor,
            leases,
            dns,
            billing,
            usage,
            verifier,
            webhooks,
            slos,
            shards,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Children(reply) => {
                let _ = reply.send((
                    state.writer.clone(),
                    state.supervisor.clone(),
                    state.leases.clone(),
                    state.dns.clone(),
                ));
            }
            RootMsg::Billing(reply) => {
                let _ = reply.send(state.billing.clone());
            }
            RootMsg::Usage(reply) => {
                let _ = reply.send(state.usage.clone());
            }
            RootMsg::Verifier(reply) => {
                let _ = reply.send(state.verifier.clone());
            }
            RootMsg::Webhooks(reply) => {
                let _ = reply.send(state.webhooks.clone());
            }
            RootMsg::Slos(reply) => {
                let _ = reply.send(state.slos.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = event else {
            return Ok(());
        };
        let id = cell.get_id();
        if id == state.writer.get_id() {
            tracing::error!(error = %err, "observation writer failed; restarting");
            state.writer = spawn_writer(&state.args, &myself).await?;
            // Domain actors hold the old writer: restart the probe supervisor with the new one.
            state.supervisor.stop(Some("writer restarted".into()));
            state.respawn_supervisor(&myself).await?;
        } else if state.publisher.as_ref().is_some_and(|p| p.get_id() == id) {
            tracing::error!(error = %err, "vantage publisher failed; restarting");
            state.publisher = spawn_publisher(&state.args, &myself).await?;
            state.supervisor.stop(Some("publisher restarted".into()));
            state.respawn_supervisor(&myself).await?;
        } else if id == state.supervisor.get_id() {
            tracing::error!(error = %err, "probe supervisor failed; restarting");
            state.respawn_supervisor(&myself).await?;
        } else if id == state.leases.get_id() {
            tracing::error!(error = %err, "lease keeper failed; restarting");
            let _ = state
                .supervisor
                .cast(SupervisorMsg::Shards(Default::default()));
            state.shards.send_replace(OwnedShards::new());
            state.respawn_leases(&myself).await?;
        } else if state.dns.as_ref().is_some_and(|d| d.get_id() == id) {
            // Domain actors and the lease keeper hold the old reference: rebuild the tree below
            // the writer (the new lease keeper starts from a clean set of locks).
            tracing::error!(error = %err, "DNS supervisor failed; restarting the engine's supervisors");
            state.dns = spawn_dns(&state.args, &myself).await?;
            state.leases.stop(Some("dns restarted".into()));
            state.supervisor.stop(Some("dns restarted".into()));
            state.supervisor = spawn_supervisor(state.ctx(), &myself).await?;
            state.respawn_leases(&myself).await?;
        } else if state.billing.as_ref().is_some_and(|b| b.get_id() == id) {
            tracing::error!(error = %err, "billing supervisor failed; restarting");
            state.billing = spawn_billing(&state.args, &state.shards, &myself).await?;
        } else if state.usage.as_ref().is_some_and(|u| u.get_id() == id) {
            tracing::error!(error = %err, "usage ingestor failed; restarting");
            state.usage = spawn_usage(&state.args, &state.shards, &myself).await?;
        } else if state.verifier.as_ref().is_some_and(|v| v.get_id() == id) {
            tracing::error!(error = %err, "domain verifier failed; restarting");
            state.verifier = spawn_verifier(&state.args, &state.shards, &myself).await?;
        } else if state.webhooks.as_ref().is_some_and(|w| w.get_id() == id) {
            tracing::error!(error = %err, "webhook dispatcher failed; restarting");
            state.webhooks = spawn_webhooks(&state.args, &state.shards, &myself).await?;
        } else if state.slos.as_ref().is_some_and(|s| s.get_id() == id) {
            tracing::error!(error = %err, "SLO supervisor failed; restarting");
            state.slos = spawn_slos(&state.args, &state.shards, &myself).await?;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Leases first (releases the shards), then the actors, then the last flush.
        stop_and_wait(state.leases.get_cell()).await;
        stop_and_wait(state.supervisor.get_cell()).await;
        for cell in [
            state.billing.as_ref().map(|b| b.get_cell()),
            state.usage.as_ref().map(|u| u.get_cell()),
            state.verifier.as_ref().map(|v| v.get_cell()),
            state.webhooks.as_ref().map(|w| w.get_cell()),
            state.slos.as_ref().map(|s| s.get_cell()),
        ]
        .into_iter()
        .flatten()
        {
            stop_and_wait(cell).await;
        }
        if let Some(dns) = &state.dns {
            stop_and_wait(dns.get_cell()).await;
        }
        if let Some(publisher) = &state.publisher {
            stop_and_wait(publisher.get_cell()).await;
        }
        stop_and_wait(state.writer.get_cell()).await;
        Ok(())
    }
}

async fn stop_and_wait(cell: ractor::ActorCell) {
    let _ = cell
        .stop_and_wait(None, Some(std::time::Duration::from_secs(10)))
        .await;
}
