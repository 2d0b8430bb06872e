//! What the engine needs from the outside world, as traits the `tranche` crate implements over
//! PostgreSQL (and tests may implement otherwise).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use tranche_core::domain::vantage::Member;
use tranche_core::domain::{ExpectedStatuses, PolicyParams, ProbePath, ProbeScheme, ProbeTarget};
use tranche_core::probe::{Cdn, ProbeRequest};
use tranche_core::storm::{CdnHealth, Decision, StormState, Vantages, Weights};

mod providers;

pub use providers::{DnsProvider, NoopProvider, Prober, UsageSource};
pub use tranche_core::observations::Observation;
pub use tranche_core::usage::{UsageReport, UsageService};

/// Everything a DomainActor needs to know about its domain (from the configuration tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub id: i64,
    pub service_id: i64,
    pub customer_id: i64,
    pub hostname: String,
    /// The DNS zone the hostname is steered in (its zone actor is woken on decisions).
    pub zone: String,
    pub shard: u16,
    pub primary_target: Option<ProbeTarget>,
    pub backup_target: Option<ProbeTarget>,
    pub scheme: ProbeScheme,
    pub path: ProbePath,
    pub expected: ExpectedStatuses,
    pub timeout: Duration,
    /// The service's `http_availability` policy, or the defaults when it has none.
    pub policy: PolicyParams,
    /// Until when an operator's drill holds the domain on its backup (`None`: no drill, or it
    /// was cancelled).
    pub drill_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The maintenance windows covering the domain (its own and its service's) that have not
    /// ended: `[starts_at, ends_at)`.
    pub maintenance: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
}

impl DomainSpec {
    /// Whether a maintenance window covers the domain at `now`.
    pub fn in_maintenance(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.maintenance
            .iter()
            .any(|(starts, ends)| *starts <= now && now < *ends)
    }

    /// The probe through `cdn`, if that CDN's target is configured.
    pub fn probe_request(&self, cdn: Cdn) -> Option<ProbeRequest> {
        let target = match cdn {
            Cdn::Primary => self.primary_target.clone()?,
            Cdn::Backup => self.backup_target.clone()?,
        };
        Some(ProbeRequest {
            cdn,
            hostname: self.hostname.clone(),
            target,
            scheme: self.scheme,
            path: self.path.clone(),
            expected: self.expected.clone(),
            timeout: self.timeout,
        })
    }
}

/// A domain's persisted decision state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedState {
    pub state: StormState,
    pub since: DateTime<Utc>,
    pub weights: Weights,
}

/// Proof of shard ownership: the epoch this node got when it acquired the shard. Writes that
/// must never happen twice are rejected by the store when the epoch is no longer current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub shard: u16,
    pub epoch: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shard's epoch moved on: this node no longer owns it and must stop acting for it.
    #[error("shard {shard} is no longer owned at epoch {epoch}")]
    Fenced { shard: u16, epoch: i64 },
    /// The database (or another backend) failed; the cause is kept as the error's source.
    #[error("{0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A rule of the adapter was violated (a row changed under a lock, a count that must
    /// match did not).
    #[error("{0}")]
    Other(String),
}

/// What one vantage (an observing node) sees of a domain's two CDNs: its windows and streaks,
/// sent to the domain's decider every report interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VantageReport {
    pub domain_id: i64,
    pub vantage: String,
    pub node_id: String,
    pub primary: CdnHealth,
    pub backup: CdnHealth,
}

/// A vantage that sees a CDN down while the quorum does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    pub vantage: String,
    pub node_id: String,
    pub cdn: Cdn,
}

/// Every vantage's view of both CDNs at a decision or a change of disagreement, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VantageViews<'a> {
    pub primary: &'a Vantages,
    pub backup: &'a Vantages,
}

/// How window summaries travel from observing nodes to deciders. Summaries are soft state: one
/// that is lost leaves its vantage unknown for a while, which never counts as down.
#[async_trait::async_trait]
pub trait VantageBus: Send + Sync + 'static {
    /// Sends a batch of summaries to every node (each keeps those of the domains it decides).
    async fn publish(&self, reports: &[VantageReport]) -> Result<(), StoreError>;
}

/// The live members of the cluster and the owner of each owned shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub live: Vec<Member>,
    pub owners: BTreeMap<u16, String>,
}

/// The engine's database.
#[async_trait::async_trait]
pub trait EngineStore: Send + Sync + 'static {
    /// Live domains (of live services) on `shards`, each with its persisted state.
    async fn domains_on_shards(
        &self,
        shards: &[u16],
    ) -> Result<Vec<(DomainSpec, Option<PersistedState>)>, StoreError>;
    /// A domain's persisted state, if it ever had a decision.
    async fn load_state(&self, domain_id: i64) -> Result<Option<PersistedState>, StoreError>;
    /// Commits `decision` — the domain's new state and desired weights, and the storm event it
    /// opens or closes — in one transaction, if `fence` is still current. `reason` says why the
    /// state is what it is, where that needs saying (`unknown`).
    async fn commit_decision(
        &self,
        spec: &DomainSpec,
        decision: &Decision,
        reason: Option<&str>,
        fence: Fence,
        node_id: &str,
    ) -> Result<(), StoreError>;
    /// Records which vantages disagree with the quorum about the domain's CDNs (empty: none), with
    /// every vantage's view, if `fence` is still current; announces each vantage that starts
    /// disagreeing (`vantage.disagrees`) in the same transaction.
    async fn record_disagreement(
        &self,
        spec: &DomainSpec,
        disagreeing: &[Disagreement],
        views: VantageViews<'_>,
        fence: Fence,
    ) -> Result<(), StoreError>;
    /// Whether `weights` — the domain's desired weights — are in effect at the DNS provider:
    /// applied and in sync, or nothing to wait for (the domain is not steered, an operator pin
    /// overrides it, or its records were rejected for good).
    async fn step_applied(&self, domain_id: i64, weights: Weights) -> Result<bool, StoreError>;
    /// Writes a batch of observations (aggregated per minute, latest per domain and CDN).
    async fn write_observations(
        &self,
        node_id: &str,
        batch: &[Observation],
    ) -> Result<(), StoreError>;
    /// Deletes per-minute aggregates older than `before`; returns how many rows went.
    async fn prune_observations(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Shard leases: cluster membership, advisory locks, fencing epochs.
#[async_trait::async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// Records this node's heartbeat and the shards it holds; returns the number of live nodes
    /// (including this one).
    async fn heartbeat(&self, node_id: &str, shards: &[u16]) -> Result<usize, StoreError>;
    /// Deposes nodes whose heartbeat is older than `deadline` but whose lease session is still
    /// open (a frozen process keeps its session, and so its advisory locks): ends that session,
    /// which frees their shards. Returns the deposed nodes' ids.
    async fn depose_stale(
        &self,
        node_id: &str,
        deadline: std::time::Duration,
    ) -> Result<Vec<String>, StoreError>;
    /// Tries to lock `shard` for this node; on success bumps and returns the shard's epoch.
    async fn try_acquire(&self, node_id: &str, shard: u16) -> Result<Option<i64>, StoreError>;
    /// Releases `shard`.
    async fn release(&self, shard: u16) -> Result<(), StoreError>;
    /// Drops every lock (e.g. after the lock connection failed) so the next acquisition starts
    /// from a clean connection.
    async fn reset(&self);
    /// Removes the node from the membership table (clean shutdown).
    async fn deregister(&self, node_id: &str);
    /// The live nodes with their vantages, and who owns each shard.
    async fn members(&self) -> Result<Membership, StoreError>;
}

/// The shards a node owns, with their fencing epochs.
pub type OwnedShards = BTreeMap<u16, i64>;

/// The database side of DNS steering.
#[async_trait::async_trait]
pub trait DnsStore: Send + Sync + 'static {
    /// DNS zones with steered domains on `shards`, with their shard.
    async fn zones_on_shards(&self, shards: &[u16]) -> Result<Vec<(String, u16)>, StoreError>;
    /// Steered domains of `zone` whose applied weights differ from the desired ones (and that
    /// have not failed permanently since their last decision).
    async fn pending_dns(
        &self,
        zone: &str,
    ) -> Result<Vec<tranche_core::dns::planner::RecordChange>, StoreError>;
    /// Audits an attempt before the provider is called; returns the change's id.
    async fn dns_submitted(
        &self,
        zone: &str,
        provider: &str,
        batch: &tranche_core::dns::planner::Batch,
        attempt: i32,
        fence: Fence,
        node_id: &str,
    ) -> Result<String, StoreError>;
    /// Records the provider's acceptance: the batch's weights are now the applied ones.
    async fn dns_applied(
        &self,
        change_id: &str,
        batch: &tranche_core::dns::planner::Batch,
        provider_change_id: &str,
        in_sync: bool,
        fence: Fence,
    ) -> Result<(), StoreError>;
    /// Records a failed attempt; `permanent` domains are marked failed until their next decision.
    /// With none, the zone actor will retry (the attempt is recorded as `will_retry`).
    async fn dns_failed(
        &self,
        change_id: &str,
        error: &str,
        permanent: &[i64],
    ) -> Result<(), StoreError>;
    /// Records that a submitted change reached every name server.
    async fn dns_insync(&self, change_id: &str) -> Result<(), StoreError>;
    /// Changes of `zone` still `submitted` (left by a node that stopped or lost the zone).
    async fn orphaned_changes(&self, zone: &str) -> Result<Vec<OrphanedChange>, StoreError>;
    /// Marks a change the provider never answered as superseded, with why, if `fence` holds.
    async fn dns_superseded(
        &self,
        change_id: &str,
        reason: &str,
        fence: Fence,
    ) -> Result<(), StoreError>;
}

/// A DNS change left `submitted` by a previous owner of its zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedChange {
    pub id: String,
    /// The provider's id when it accepted the change (then only its sync is unknown).
    pub provider_change_id: Option<String>,
    pub node_id: String,
}

/// What one billing run of a customer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BillingRunSummary {
    /// Invoices that received line items.
    pub invoices_touched: u32,
    /// Of those, invoices this run created.
    pub invoices_created: u32,
    pub invoices_finalized: u32,
    pub snapshots_billed: u32,
}

impl BillingRunSummary {
    pub fn did_something(&self) -> bool {
        self.invoices_touched > 0 || self.invoices_finalized > 0 || self.snapshots_billed > 0
    }

    pub fn add(&mut self, other: &Self) {
        self.invoices_touched += other.invoices_touched;
        self.invoices_created += other.invoices_created;
        self.invoices_finalized += other.invoices_finalized;
        self.snapshots_billed += other.snapshots_billed;
    }
}

/// The database side of invoicing.
#[async_trait::async_trait]
pub trait BillingStore: Send + Sync + 'static {
    /// Customers whose billing shard is one of `shards`, with that shard.
    async fn customers_on_shards(&self, shards: &[u16]) -> Result<Vec<(i64, u16)>, StoreError>;
    /// One billing run for `customer_id`, in one transaction fenced by `fence`: bills the
    /// customer's unbilled snapshots whose windows ended at least `settings.settle` before
    /// `now` onto their periods' draft invoices, finalizes drafts past their grace, and records
    /// the run. A failed run is rolled back whole and recorded with its error.
    async fn bill_customer(
        &self,
        customer_id: i64,
        fence: Fence,
        now: DateTime<Utc>,
        settings: &tranche_core::billing::BillingSettings,
        node_id: &str,
    ) -> Result<BillingRunSummary, StoreError>;
    /// Deletes billing-run records that finished before `before`; returns how many went.
    async fn prune_runs(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Folds the customer's metered events (their minute rollups) into hourly usage snapshots
    /// (source `events`) for the hours that changed; returns how many hours were folded.
    async fn fold_metered_usage(&self, customer_id: i64) -> Result<usize, StoreError>;
}

/// The database side of usage ingestion.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Live services of customers whose billing shard is one of `shards`.
    async fn usage_services(&self, shards: &[u16]) -> Result<Vec<UsageService>, StoreError>;
    /// Records reports idempotently (see `usage_snapshots`): a replay changes nothing, an
    /// invoiced snapshot is never changed (late usage becomes an adjustment snapshot). Returns
    /// how many snapshots were created, updated or added as adjustments.
    async fn record_usage(&self, reports: &[UsageReport]) -> Result<usize, StoreError>;
    /// Reports a successful pass over `[from, to)` into SLO tracking for `customers`, as
    /// their application `tranche` (see `tranche_core::usage::ingestion_reports`).
    async fn report_ingestion(
        &self,
        customers: &[i64],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        node_id: &str,
    ) -> Result<(), StoreError>;
}

/// The database side of domain verification.
#[async_trait::async_trait]
pub trait VerificationStore: Send + Sync + 'static {
    /// Domains on `shards` whose next check is due at `now` (pending and verified ones), at
    /// most `limit`, most overdue first.
    async fn due_verifications(
        &self,
        shards: &[u16],
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<tranche_core::verify::Check>, StoreError>;
    /// Writes `outcome` if the domain is still in the state `check` was made for (no lock is held
    /// across the lookup); returns whether it was written.
    async fn record_verification(
        &self,
        check: &tranche_core::verify::Check,
        outcome: &tranche_core::verify::Outcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

/// TXT lookups (hickory-resolver in the `tranche` crate).
#[async_trait::async_trait]
pub trait TxtLookup: Send + Sync + 'static {
    async fn txt(&self, name: &str) -> tranche_core::verify::Lookup;
}

/// A webhook delivery due to be sent: the endpoint and the event. Its `Debug` leaves the
/// signing secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: i64,
    pub url: String,
    pub secret: String,
    pub format: tranche_core::webhook::Format,
    pub customer_id: i64,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// The event's payload (JSON text).
    pub payload: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("endpoint_id", &self.endpoint_id)
            .field("url", &self.url)
            .field("secret", &"***")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// The outbox of webhook deliveries.
#[async_trait::async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Pending deliveries of customers on `shards`, by endpoint and in order (at most `limit`).
    async fn pending_deliveries(
        &self,
        shards: &[u16],
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// The receiver accepted the delivery (2xx).
    async fn delivered(&self, id: &str, status: u16, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// An attempt failed; `retry_at: None` gives up (`failed`).
    async fn attempt_failed(
        &self,
        id: &str,
        status: Option<u16>,
        error: &str,
        at: DateTime<Utc>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;
    /// Deletes events that occurred before `before`, with their deliveries, unless a delivery
    /// is still pending; returns how many events went.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Sends one delivery over HTTP.
#[async_trait::async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    /// The receiver's status for a 2xx answer; otherwise the status (if any) and why.
    async fn send(&self, delivery: &Delivery) -> Result<u16, (Option<u16>, String)>;
}

/// The database side of event metering: one group commit per call.
#[async_trait::async_trait]
pub trait MeteringStore: Send + Sync + 'static {
    /// Applies `events` at `now` in one transaction — the stored identities, cycles, quotas and
    /// totals loaded, [`tranche_core::metering::batch::plan`] asked, the accepted events, rollups,
    /// totals, fold queue and threshold markers (with their events) written — and returns each
    /// event's outcome in order, only once committed.
    async fn ingest(
        &self,
        events: &[tranche_core::metering::batch::Incoming],
        now: DateTime<Utc>,
        node_id: &str,
    ) -> Result<Vec<tranche_core::metering::batch::Outcome>, StoreError>;
    /// Deletes events received before `before` (their identities are forgotten); returns how
    /// many went.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Where an SLO's tracker runs and what wakes it: reports of its `jobs` of `application` for
/// `customer_id`, and changes to its calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SloKey {
    pub id: i64,
    pub customer_id: i64,
    pub application: String,
    pub jobs: Vec<String>,
    pub calendar_id: i64,
    /// The customer's shard: the SLO is tracked by the node that owns it.
    pub shard: u16,
}

/// An SLO as its tracker evaluates it.
#[derive(Debug, Clone)]
pub struct TrackedSlo {
    pub id: i64,
    pub customer_id: i64,
    pub name: String,
    pub application: String,
    pub spec: tranche_core::slo::performance::SloSpec,
    pub calendar: tranche_core::slo::calendar::Calendar,
    /// Dates whose deadline passed before this are not tracked.
    pub created_at: DateTime<Utc>,
}

/// An alert raised (first recorded) by [`SloStore::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaisedAlert {
    pub business_date: chrono::NaiveDate,
    pub alert: tranche_core::slo::performance::Alert,
    /// The occurrence of a repeating job it is about (`job@HH:MM`); `None`: the whole SLO.
    pub occurrence: Option<String>,
}

/// The database side of SLO tracking.
#[async_trait::async_trait]
pub trait SloStore: Send + Sync + 'static {
    /// SLOs of customers whose shard is one of `shards`.
    async fn slos_on_shards(&self, shards: &[u16]) -> Result<Vec<SloKey>, StoreError>;
    /// The SLO with its jobs and calendar (`None`: deleted).
    async fn load_slo(&self, id: i64) -> Result<Option<TrackedSlo>, StoreError>;
    /// The reports of the SLO's jobs for business dates in `[from, to]`, with their dates.
    async fn reports(
        &self,
        slo: &TrackedSlo,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Vec<(chrono::NaiveDate, tranche_core::slo::performance::Report)>, StoreError>;
    /// In one transaction fenced by `fence`: stores `rows` (one per business date) and raises
    /// each of their due alerts ([`Performance::due`]) not raised before for that SLO, date and
    /// occurrence — its marker and its event (`slo.not_started`, `slo.late`, `slo.breached`). Returns the alerts raised now.
    async fn record(
        &self,
        slo: &TrackedSlo,
        rows: &[tranche_core::slo::performance::Performance],
        fence: Fence,
        now: DateTime<Utc>,
        node_id: &str,
    ) -> Result<Vec<RaisedAlert>, StoreError>;
}
