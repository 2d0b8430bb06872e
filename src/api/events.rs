//! The event contract: one typed schema per event type, as webhooks deliver them and
//! `GET /v1/events` lists them.
//!
//! Events are written by the adapters that commit the facts they report, in the same
//! transaction (`postgres::outbox::emit`; which facts are events is the core's
//! `tranche_core::events`). This module is their documentation in the OpenAPI document — the
//! [`Event`] union, discriminated by `type` — and their contract: a test parses every kind of
//! event the engine produces through it, with unknown fields refused, so the two cannot drift.
//!
//! Ratios (availabilities, thresholds) are decimal strings, exact like money; times are
//! RFC 3339.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{Object, Union};
use uuid::Uuid;

use super::storms::{DnsWeights, VantageView};

/// What the storm detector saw when it opened a storm.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct StormTrigger {
    /// The primary CDN's availability over the window (decimal string), null if unknown.
    #[oai(nullable)]
    pub primary_availability: Option<String>,
    pub primary_attempts: i64,
    /// Failed probes of the primary in a row when the storm opened (absent on storms opened
    /// before flap damping).
    #[oai(nullable)]
    pub primary_consecutive_failures: Option<i64>,
    /// The backup CDN's availability over the window (decimal string), null if unknown.
    #[oai(nullable)]
    pub backup_availability: Option<String>,
    pub backup_attempts: i64,
    /// The policy's threshold (decimal string).
    pub threshold_avail: String,
    pub window_seconds: i64,
    /// The policy's `consecutive_failures` (absent on storms opened before flap damping).
    #[oai(nullable)]
    pub consecutive_failures: Option<i64>,
    /// The domain's state before the storm (`normal`, `backup_unhealthy`, …).
    pub from_state: String,
    /// Set when the storm ends: the primary's availability then (decimal string).
    #[oai(nullable)]
    pub closing_primary_availability: Option<String>,
    /// The policy's quorum (absent on storms opened before vantages). The availabilities
    /// above are then the median of the vantages with a known window; the attempts and
    /// failures in a row are the deciding node's own.
    #[oai(nullable)]
    pub quorum: Option<String>,
    /// Every vantage's view when the storm opened (absent on storms opened before vantages).
    #[oai(nullable)]
    pub vantages: Option<Vec<VantageView>>,
    /// The earliest failed primary probe in the deciding node's window when the storm opened:
    /// when the trouble began, as far as the window remembers (absent on older storms).
    #[oai(nullable)]
    pub primary_failing_since: Option<String>,
}

/// `data` of `vantage.disagrees`: a vantage (region) sees a CDN of the domain down while the
/// quorum of vantages does not, so Tranche does not act on it; usually a network problem near
/// that vantage. Sent once when the disagreement starts.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct VantageDisagrees {
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    /// The disagreeing vantage and the node that probed from it.
    pub vantage: String,
    pub node_id: String,
    /// `primary` or `backup`.
    pub cdn: String,
    pub since: DateTime<Utc>,
    /// The policy's quorum.
    pub quorum: String,
    /// Every vantage's view.
    pub vantages: Vec<VantageView>,
}

/// `data` of `storm.started`: a domain's primary CDN fell below its policy; traffic moves to
/// the backup.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct StormStarted {
    pub storm_id: Uuid,
    pub service_id: i64,
    pub domain_id: i64,
    /// The hostname.
    pub domain: String,
    /// The policy kind (`http_availability`).
    pub kind: String,
    pub started_at: DateTime<Utc>,
    pub trigger: StormTrigger,
}

/// `data` of `storm.ended`: the primary recovered; traffic ramps back.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct StormEnded {
    pub storm_id: Uuid,
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    pub kind: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

/// `data` of `storm.backup_unhealthy`: the primary is down but the backup is not healthy
/// either, so Tranche does not fail over.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct BackupUnhealthy {
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    pub since: DateTime<Utc>,
    /// Decimal string, null if unknown.
    #[oai(nullable)]
    pub primary_availability: Option<String>,
    /// Decimal string, null if unknown.
    #[oai(nullable)]
    pub backup_availability: Option<String>,
}

/// `data` of `domain.health_unknown`: the primary CDN of a domain cannot be judged (no
/// target configured, every probe blocked, too few results) for longer than a window, so no
/// storm could be declared for it. Sent when the domain enters the `unknown` state.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DomainHealthUnknown {
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    pub since: DateTime<Utc>,
    /// Why, in words (e.g. `probes through the primary are blocked: 10.0.0.5 is not a public
    /// address`).
    pub reason: String,
}

/// One domain's records in a DNS change.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DnsChangeEntry {
    pub domain_id: i64,
    /// The record name (the hostname).
    pub name: String,
    /// Record type: `A`, `AAAA` or `CNAME`.
    #[oai(rename = "type")]
    pub record_type: String,
    /// The weights before (null for the first write).
    #[oai(nullable)]
    pub from: Option<DnsWeights>,
    pub to: DnsWeights,
    /// `initial`, `failover`, `ramp` or `manual` (an operator pin).
    pub reason: String,
    /// The storm that caused it, if any.
    #[oai(nullable)]
    pub storm_id: Option<Uuid>,
}

/// `data` of `dns.change_applied` (the provider reports the change in sync on its
/// authoritative servers — Route53's `INSYNC`) and `dns.change_failed` (rejected for good, or
/// still failing after 5 attempts while Tranche keeps retrying).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DnsChangeEvent {
    pub change_id: Uuid,
    pub zone: String,
    /// `route53`, …
    pub provider: String,
    /// The customer's domains in the change (a batch may hold other customers' too).
    pub changes: Vec<DnsChangeEntry>,
    /// Why it failed (null when applied).
    #[oai(nullable)]
    pub error: Option<String>,
    /// Which attempt this was (1 for the first).
    pub attempt: i32,
    /// `dns.change_failed` only: Tranche keeps retrying (a transient failure that has lasted 5
    /// attempts); `false` means the records were rejected and need attention.
    pub will_retry: bool,
}

/// `data` of `invoice.created`: a draft invoice opened for a billing period.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct InvoiceCreated {
    pub invoice_id: Uuid,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// `draft` (it is finalized after the grace period).
    pub status: String,
}

/// `data` of `domain.verified` and `domain.verification_failed`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DomainVerification {
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    /// Why verification failed (null when verified).
    #[oai(nullable)]
    pub error: Option<String>,
}

/// `data` of `certificate.expiring`: a CDN serves the domain a certificate that expires within
/// 14 days (sent once per certificate).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct CertificateExpiring {
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    /// `primary` or `backup`.
    pub cdn: String,
    pub expires_at: DateTime<Utc>,
    /// Whole days left (0 once expired).
    pub days_left: i64,
}

/// `data` of `drill.started`: an operator's drill moved the domain's traffic to its backup.
/// No storm is open (drills are never billed as storm time).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DrillStarted {
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    #[oai(nullable)]
    pub drill_id: Option<Uuid>,
    #[oai(nullable)]
    pub reason: Option<String>,
    /// When the drill stops holding traffic on the backup and the ramp back begins.
    #[oai(nullable)]
    pub ends_at: Option<DateTime<Utc>>,
    /// The weights now desired (`{"primary": 0, "backup": 100}`).
    pub weights: serde_json::Value,
}

/// `data` of `drill.ended`: the domain left its drill — ramped back to the primary
/// (`completed`, or `cancelled` early), or taken over by a real storm (`storm`), or sent straight
/// back because the backup failed (`backup_unhealthy`).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct DrillEnded {
    pub service_id: i64,
    pub domain_id: i64,
    pub domain: String,
    #[oai(nullable)]
    pub drill_id: Option<Uuid>,
    #[oai(nullable)]
    pub reason: Option<String>,
    #[oai(nullable)]
    pub ends_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub outcome: Option<String>,
    pub weights: serde_json::Value,
}

/// `data` of `quota.threshold_crossed`: the customer's metered total of a metric reached 80 %
/// or 100 % of its monthly quota. Sent once per threshold and period, whichever node counted
/// the event that crossed it.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct QuotaThresholdCrossed {
    pub metric: String,
    /// 80 or 100.
    pub threshold: i32,
    /// The quota (exact decimal string).
    pub quota: String,
    /// The period's total once the crossing event was counted (exact decimal string).
    pub total: String,
    /// `total` as a percentage of `quota`, two decimals.
    #[oai(nullable)]
    pub percent_used: Option<String>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// `notify` (events over the quota are still accepted) or `reject` (refused with 429).
    pub over_quota: String,
}

/// `data` of `slo.not_started`, `slo.late` and `slo.breached`: an SLO's alert for a business
/// date, raised once per SLO, date, alert and occurrence by its tracker (whichever node runs it).
/// `not_started`: no job started by the expected start plus the start grace; `late`: the
/// expected end passed with a job unfinished; `breached`: the tolerance passed unfinished, or a
/// job failed (`status` `failed`).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct SloAlert {
    pub slo_id: i64,
    pub slo: String,
    pub application: String,
    pub business_date: chrono::NaiveDate,
    /// `not_started`, `late` or `breached`.
    pub alert: String,
    /// The SLO's status for the date when the alert was raised (`pending`, `in_progress`,
    /// `late`, `missed`, `failed`, …).
    pub status: String,
    /// The calendar's IANA time zone.
    pub time_zone: String,
    pub expected_start: DateTime<Utc>,
    pub expected_end: DateTime<Utc>,
    #[oai(nullable)]
    pub actual_start: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub actual_end: Option<DateTime<Utc>>,
    /// Seconds past the expected end when raised (unfinished), or of the actual end.
    #[oai(nullable)]
    pub late_by_seconds: Option<i64>,
    /// The occurrence of a repeating job the alert is about (`late` or `breached`); null when
    /// it is about the whole SLO. The other fields describe the SLO's business date.
    #[oai(nullable)]
    pub occurrence: Option<SloOccurrence>,
}

/// One occurrence of a repeating job, in an SLO alert.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct SloOccurrence {
    /// `job@HH:MM`: the job and the occurrence's expected start.
    pub job: String,
    pub expected_end: DateTime<Utc>,
    /// When it finished (late, or failed); null while unfinished.
    #[oai(nullable)]
    pub actual_end: Option<DateTime<Utc>>,
}

/// `data` of `ping`, sent by `POST /v1/webhooks/{id}/test` to that endpoint only.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Ping {
    pub endpoint_id: i64,
}

/// Declares one envelope per event type: the fields every event has, and its typed `data`.
macro_rules! envelopes {
    ($($(#[$doc:meta])* $name:ident => $data:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Object)]
        pub struct $name {
            /// Unique per event: receivers dedupe on it (delivery is at least once).
            pub id: Uuid,
            pub created_at: DateTime<Utc>,
            pub customer_id: i64,
            pub data: $data,
        }
    )*};
}

envelopes! {
    /// `storm.started`
    StormStartedEvent => StormStarted;
    /// `storm.ended`
    StormEndedEvent => StormEnded;
    /// `storm.backup_unhealthy`
    BackupUnhealthyEvent => BackupUnhealthy;
    /// `domain.health_unknown`
    DomainHealthUnknownEvent => DomainHealthUnknown;
    /// `dns.change_applied`
    DnsChangeAppliedEvent => DnsChangeEvent;
    /// `dns.change_failed`
    DnsChangeFailedEvent => DnsChangeEvent;
    /// `invoice.created`
    InvoiceCreatedEvent => InvoiceCreated;
    /// `domain.verified`
    DomainVerifiedEvent => DomainVerification;
    /// `domain.verification_failed`
    DomainVerificationFailedEvent => DomainVerification;
    /// `certificate.expiring`
    CertificateExpiringEvent => CertificateExpiring;
    /// `vantage.disagrees`
    VantageDisagreesEvent => VantageDisagrees;
    /// `drill.started`
    DrillStartedEvent => DrillStarted;
    /// `drill.ended`
    DrillEndedEvent => DrillEnded;
    /// `quota.threshold_crossed`
    QuotaThresholdCrossedEvent => QuotaThresholdCrossed;
    /// `slo.not_started`
    SloNotStartedEvent => SloAlert;
    /// `slo.late`
    SloLateEvent => SloAlert;
    /// `slo.breached`
    SloBreachedEvent => SloAlert;
    /// `ping`
    PingEvent => Ping;
}

/// An event, as the JSON body of a webhook delivery and in `GET /v1/events`. `type` says which
/// `data` it carries.
#[derive(Debug, Clone, Union)]
#[oai(discriminator_name = "type")]
pub enum Event {
    #[oai(mapping = "storm.started")]
    StormStarted(StormStartedEvent),
    #[oai(mapping = "storm.ended")]
    StormEnded(StormEndedEvent),
    #[oai(mapping = "storm.backup_unhealthy")]
    BackupUnhealthy(BackupUnhealthyEvent),
    #[oai(mapping = "domain.health_unknown")]
    DomainHealthUnknown(DomainHealthUnknownEvent),
    #[oai(mapping = "dns.change_applied")]
    DnsChangeApplied(DnsChangeAppliedEvent),
    #[oai(mapping = "dns.change_failed")]
    DnsChangeFailed(DnsChangeFailedEvent),
    #[oai(mapping = "invoice.created")]
    InvoiceCreated(InvoiceCreatedEvent),
    #[oai(mapping = "domain.verified")]
    DomainVerified(DomainVerifiedEvent),
    #[oai(mapping = "domain.verification_failed")]
    DomainVerificationFailed(DomainVerificationFailedEvent),
    #[oai(mapping = "certificate.expiring")]
    CertificateExpiring(CertificateExpiringEvent),
    #[oai(mapping = "vantage.disagrees")]
    VantageDisagrees(VantageDisagreesEvent),
    #[oai(mapping = "drill.started")]
    DrillStarted(DrillStartedEvent),
    #[oai(mapping = "drill.ended")]
    DrillEnded(DrillEndedEvent),
    #[oai(mapping = "quota.threshold_crossed")]
    QuotaThresholdCrossed(QuotaThresholdCrossedEvent),
    #[oai(mapping = "slo.not_started")]
    SloNotStarted(SloNotStartedEvent),
    #[oai(mapping = "slo.late")]
    SloLate(SloLateEvent),
    #[oai(mapping = "slo.breached")]
    SloBreached(SloBreachedEvent),
    #[oai(mapping = "ping")]
    Ping(PingEvent),
}

/// A stored event as sent, documented as [`Event`]. The body is the stored JSON itself (the
/// same bytes a webhook receives), never re-encoded through the typed structs, so a listing
/// never fails on an event; the contract test keeps the two equal.
#[derive(Debug, Clone)]
pub struct EventJson(pub serde_json::Value);

impl Type for EventJson {
    const IS_REQUIRED: bool = true;
    type RawValueType = serde_json::Value;
    type RawElementValueType = serde_json::Value;

    fn name() -> Cow<'static, str> {
        <Event as Type>::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        <Event as Type>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <Event as Type>::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ToJSON for EventJson {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(self.0.clone())
    }
}

/// Parses a delivered event body against the documented schema (the contract test's check).
pub fn conforms(body: &serde_json::Value) -> Result<Event, String> {
    <Event as poem_openapi::types::ParseFromJSON>::parse_from_json(Some(body.clone()))
        .map_err(|e| e.into_message())
}
