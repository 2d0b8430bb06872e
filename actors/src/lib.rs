//! The actor engine: one node's supervision tree.
//!
//! ```text
//! RootSupervisor
//!  ├─ ObservationWriter   batches probe results into per-minute aggregates
//!  ├─ DnsSupervisor       one ZoneActor per DNS zone with steered domains on those shards
//!  │    └─ ZoneActor      applies desired weights through the DNS provider, batched
//!  ├─ BillingSupervisor  one CustomerBillingActor per customer on those shards
//!  │    └─ CustomerBillingActor  every tick: folds metered events into snapshots, bills
//!  │                             unbilled snapshots, finalizes invoices
//!  ├─ UsageIngestor      pulls CDN usage analytics for those customers' services
//!  ├─ DomainVerifier     checks the TXT ownership challenge of the domains on those shards
//!  ├─ WebhookDispatcher  delivers those customers' webhook outbox, in order per endpoint
//!  ├─ SloSupervisor      one SloTracker per SLO of those customers
//!  │    └─ SloTracker    keeps the SLO's performance rows current, raises late alerts once
//!  ├─ ProbeSupervisor     one DomainActor per domain on the shards this node owns
//!  │    └─ DomainActor    probes primary + backup, runs the storm machine, commits decisions
//!  └─ LeaseKeeper         heartbeats, takes its fair share of shards (advisory locks + epochs)
//!
//! MeteringBatcher         (beside the tree, one per API) group-commits usage events
//! ```
//!
//! Children are linked to their parents: a failed DomainActor is restarted by the probe
//! supervisor and rebuilds its state from the database; a failed child of the root is restarted
//! by the root. Actors hold only soft state (probe windows, timers); every decision is committed
//! through [`ports::EngineStore`] before it is acted on, fenced by the shard epoch the
//! [`lease_keeper::LeaseKeeper`] obtained, so a node that lost a shard cannot act for it.
//!
//! The engine talks to the outside world only through its ports ([`ports::EngineStore`],
//! [`ports::LeaseBackend`], [`ports::Prober`], …); the `tranche` crate implements them
//! over PostgreSQL and the network. Decisions are the core's (`tranche-core`): the actors feed
//! it time and observations and commit what it decides. No actor sleeps or waits on a limiter
//! inside `handle`: waits are `send_after` messages (the domain actors' probe ticks: the node's
//! [`tick_wheel::TickWheel`]) or run in tasks that report back.
//!
//! # Layout
//!
//! * this file — [`Engine`], a running tree, and its handle;
//! * [`root`] — the root supervisor and what it is set up with; [`config`] — [`EngineConfig`];
//! * [`lease_keeper`] — shard leases and fencing epochs;
//! * [`probe_supervisor`], [`domain_actor`], [`observation_writer`] — probing and storms;
//!   [`tick_wheel`] — the one timer behind every domain actor's probe ticks;
//! * [`dns_supervisor`], [`zone_actor`], [`rate`] — DNS steering through the provider;
//! * [`billing`], [`usage_ingestor`], [`verifier`], [`webhooks`] — invoicing, usage pulls,
//!   ownership checks, webhook delivery;
//! * [`slo_tracker`] — live SLO tracking of batch jobs (reports and timers);
//! * [`metering_batcher`] — the group commit behind `POST /v1/usage-events`, spawned by the
//!   API (it serves requests whether or not this node runs the engine);
//! * [`children`] — what the supervisors share (child bookkeeping, bounded fan-out);
//! * [`ports`] — every port: the stores, the DNS provider, the prober, usage sources, TXT
//!   lookups, the webhook sender.
//!
//! The `test-hooks` feature adds messages and [`Engine`] methods that run a pass now (bill,
//! ingest, verify, deliver, flush) for the integration tests and the benchmarks; the product
//! binary is built without it.

pub mod billing;
pub mod children;
pub mod config;
pub mod dns_supervisor;
pub mod domain_actor;
pub mod lease_keeper;
pub mod metering_batcher;
pub mod observation_writer;
pub mod ports;
pub mod probe_supervisor;
pub mod rate;
pub mod root;
pub mod slo_tracker;
pub mod tick_wheel;
pub mod usage_ingestor;
pub mod vantage_publisher;
pub mod verifier;
pub mod webhooks;
pub mod zone_actor;

use std::time::Duration;

use ractor::{Actor, ActorRef};

pub use config::{Clock, EngineConfig};
use lease_keeper::LeaseMsg;
use observation_writer::ObservationMsg;
use ports::OwnedShards;
use probe_supervisor::SupervisorMsg;
pub use root::{
    BillingSetup, DnsSetup, RootArgs, SloSetup, UsageSetup, VantageSetup, VerifySetup, WebhookSetup,
};
use root::{RootMsg, RootSupervisor};

/// A running engine on this node.
pub struct Engine {
    root: ActorRef<RootMsg>,
    handle: tokio::task::JoinHandle<()>,
}

impl Engine {
    pub async fn start(args: RootArgs) -> Result<Self, ractor::SpawnErr> {
        let (root, handle) = Actor::spawn(None, RootSupervisor, args).await?;
        Ok(Self { root, handle })
    }

    async fn children(
        &self,
    ) -> Option<(
        ActorRef<ObservationMsg>,
        ActorRef<SupervisorMsg>,
        ActorRef<LeaseMsg>,
    )> {
        ractor::call!(self.root, RootMsg::Children)
            .ok()
            .map(|(w, s, l, _)| (w, s, l))
    }

    async fn dns(&self) -> Option<ActorRef<dns_supervisor::DnsMsg>> {
        ractor::call!(self.root, RootMsg::Children)
            .ok()
            .and_then(|(_, _, _, d)| d)
    }

    /// Wakes the probe and DNS supervisors after a configuration change.
    pub async fn config_changed(&self) {
        if let Some((_, supervisor, _)) = self.children().await {
            let _ = supervisor.cast(SupervisorMsg::ConfigChanged);
        }
        if let Some(dns) = self.dns().await {
            let _ = dns.cast(dns_supervisor::DnsMsg::WakeAll);
        }
    }

    /// Hands other vantages' window summaries to the deciders of their domains on this node
    /// (the others are dropped).
    pub async fn vantage_reports(&self, reports: Vec<ports::VantageReport>) {
        if let Some((_, supervisor, _)) = self.children().await {
            let _ = supervisor.cast(SupervisorMsg::Remote(reports));
        }
    }

    /// Wakes the zone actor of `zone` (what a domain actor does after a decision).
    pub async fn wake_zone(&self, zone: &str) {
        if let Some(dns) = self.dns().await {
            let _ = dns.cast(dns_supervisor::DnsMsg::Wake(zone.to_owned()));
        }
    }

    async fn slos(&self) -> Option<ActorRef<slo_tracker::SloMsg>> {
        ractor::call!(self.root, RootMsg::Slos).ok().flatten()
    }

    /// A job reported: wakes the trackers of the SLOs here that depend on it.
    pub async fn job_reported(&self, report: slo_tracker::JobReported) {
        if let Some(slos) = self.slos().await {
            let _ = slos.cast(slo_tracker::SloMsg::Reported(report));
        }
    }

    /// An SLO or calendar changed: reloads the trackers concerned.
    pub async fn slos_changed(&self, change: slo_tracker::SloChange) {
        if let Some(slos) = self.slos().await {
            let _ = slos.cast(slo_tracker::SloMsg::Changed(change));
        }
    }

    /// SLOs with a tracker on this node.
    pub async fn tracked_slos(&self) -> Vec<i64> {
        match self.slos().await {
            Some(s) => ractor::call!(s, slo_tracker::SloMsg::Tracked).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Domains with a running actor on this node.
    pub async fn running_domains(&self) -> Vec<i64> {
        match self.children().await {
            Some((_, supervisor, _)) => {
                ractor::call!(supervisor, SupervisorMsg::Running).unwrap_or_default()
            }
            None => Vec::new(),
        }
    }

    /// Shards this node owns, with their epochs.
    pub async fn owned_shards(&self) -> OwnedShards {
        match self.children().await {
            Some((_, _, leases)) => ractor::call!(leases, LeaseMsg::Owned).unwrap_or_default(),
            None => OwnedShards::new(),
        }
    }

    #[cfg(feature = "test-hooks")]
    /// Writes buffered observations now.
    pub async fn flush_observations(&self) {
        if let Some((writer, _, _)) = self.children().await {
            let _ = ractor::call!(writer, ObservationMsg::FlushNow);
        }
    }

    #[cfg(feature = "test-hooks")]
    /// Runs every billing actor on this node now; the sum of their runs (`None`: this node
    /// does not bill).
    pub async fn bill_now(&self) -> Option<Result<ports::BillingRunSummary, String>> {
        let billing = ractor::call!(self.root, RootMsg::Billing).ok()??;
        ractor::call!(billing, billing::BillingMsg::RunAll).ok()
    }

    /// Customers with a billing actor on this node.
    pub async fn billed_customers(&self) -> Vec<i64> {
        match ractor::call!(self.root, RootMsg::Billing).ok().flatten() {
            Some(b) => ractor::call!(b, billing::BillingMsg::Customers).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    #[cfg(feature = "test-hooks")]
    /// Runs usage ingestion now (`None`: this node does not ingest usage).
    pub async fn ingest_usage_now(&self) -> Option<usage_ingestor::IngestSummary> {
        let usage = ractor::call!(self.root, RootMsg::Usage).ok()??;
        ractor::call!(usage, usage_ingestor::UsageMsg::IngestNow).ok()
    }

    #[cfg(feature = "test-hooks")]
    /// Runs the domain verifier's due checks now (`None`: this node does not verify).
    pub async fn verify_now(&self) -> Option<usize> {
        let verifier = ractor::call!(self.root, RootMsg::Verifier).ok()??;
        ractor::call!(verifier, verifier::VerifierMsg::CheckNow).ok()
    }

    #[cfg(feature = "test-hooks")]
    /// Runs a webhook delivery pass now (`None`: this node does not send webhooks).
    pub async fn deliver_webhooks_now(&self) -> Option<usize> {
        let dispatcher = ractor::call!(self.root, RootMsg::Webhooks).ok()??;
        ractor::call!(dispatcher, webhooks::DispatcherMsg::PassNow).ok()
    }

    /// Stops the tree cleanly: releases the shards, stops the actors, flushes.
    pub async fn shutdown(self) {
        let _ = self
            .root
            .stop_and_wait(None, Some(Duration::from_secs(30)))
            .await;
        let _ = self.handle.await;
    }

    /// Kills the tree without any clean-up (no lease release, no deregistration, no last
    /// flush), as a crash would; the lease connection closes when the killed actors drop it.
    pub fn abort(&self) {
        self.root.kill();
    }
}
