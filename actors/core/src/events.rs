//! Event rules: which committed facts announce themselves to a customer's webhooks, and as what.
//!
//! The adapters write every event in the transaction of its fact (the outbox), so an event is
//! sent if and only if its fact was committed; these functions decide *whether* a fact is an
//! event. The payloads are the typed contract documented in the OpenAPI document.

use chrono::{DateTime, TimeDelta, Utc};

use crate::storm::StormState;
use crate::verify::Status;

/// The types of events a customer can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A test delivery to one endpoint.
    Ping,
    StormStarted,
    StormEnded,
    StormBackupUnhealthy,
    DomainHealthUnknown,
    DomainVerified,
    DomainVerificationFailed,
    DnsChangeApplied,
    DnsChangeFailed,
    InvoiceCreated,
    CertificateExpiring,
    /// A vantage sees a CDN down while the quorum of vantages does not.
    VantageDisagrees,
    /// An operator's drill moved the domain's traffic to the backup.
    DrillStarted,
    /// A drill is over: traffic is back on the primary (or a real storm took over).
    DrillEnded,
    /// A metered total reached 80 % or 100 % of its quota (once per threshold and period).
    QuotaThresholdCrossed,
    /// Nothing of an SLO's jobs started by the expected start plus the start grace.
    SloNotStarted,
    /// An SLO passed its expected end unfinished.
    SloLate,
    /// An SLO passed its tolerance unfinished, or one of its jobs failed.
    SloBreached,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::StormStarted => "storm.started",
            Self::StormEnded => "storm.ended",
            Self::StormBackupUnhealthy => "storm.backup_unhealthy",
            Self::DomainHealthUnknown => "domain.health_unknown",
            Self::DomainVerified => "domain.verified",
            Self::DomainVerificationFailed => "domain.verification_failed",
            Self::DnsChangeApplied => "dns.change_applied",
            Self::DnsChangeFailed => "dns.change_failed",
            Self::InvoiceCreated => "invoice.created",
            Self::CertificateExpiring => "certificate.expiring",
            Self::VantageDisagrees => "vantage.disagrees",
            Self::DrillStarted => "drill.started",
            Self::DrillEnded => "drill.ended",
            Self::QuotaThresholdCrossed => "quota.threshold_crossed",
            Self::SloNotStarted => "slo.not_started",
            Self::SloLate => "slo.late",
            Self::SloBreached => "slo.breached",
        }
    }
}

/// The event that announces an SLO alert.
pub fn slo_event(alert: crate::slo::performance::Alert) -> EventType {
    use crate::slo::performance::Alert;
    match alert {
        Alert::NotStarted => EventType::SloNotStarted,
        Alert::Late => EventType::SloLate,
        Alert::Breached => EventType::SloBreached,
    }
}

/// A decided state written over `previous` (`None`: the domain's first decision): entering
/// `backup_unhealthy` or `unknown` is announced; staying in it is not. (Storms announce
/// themselves through their own start and end.)
pub fn state_event(previous: Option<StormState>, state: StormState) -> Option<EventType> {
    if previous == Some(state) {
        return None;
    }
    match state {
        StormState::BackupUnhealthy => Some(EventType::StormBackupUnhealthy),
        StormState::Unknown => Some(EventType::DomainHealthUnknown),
        StormState::Healthy | StormState::Storm | StormState::Recovering | StormState::Drill => {
            None
        }
    }
}

/// A decided state written over `previous`: entering a drill starts it, leaving one (to any
/// state: back to healthy, or a real storm taking over) ends it.
pub fn drill_event(previous: Option<StormState>, state: StormState) -> Option<EventType> {
    let was = previous == Some(StormState::Drill);
    let is = state == StormState::Drill;
    match (was, is) {
        (false, true) => Some(EventType::DrillStarted),
        (true, false) => Some(EventType::DrillEnded),
        _ => None,
    }
}

/// A verification result written over `previous`: a domain that becomes verified or failed.
pub fn verification_event(previous: Status, status: Status) -> Option<EventType> {
    if previous == status {
        return None;
    }
    match status {
        Status::Verified => Some(EventType::DomainVerified),
        Status::Failed => Some(EventType::DomainVerificationFailed),
        Status::Pending => None,
    }
}

/// The attempt (the zone actor numbers a change's attempts from 1, counting the retryable
/// failures before it) at which a still-failing DNS change is announced although the zone actor
/// keeps retrying: a failure that lasted this long needs a human.
pub const DNS_FAILURE_ALERT_ATTEMPT: i32 = 5;

/// How a DNS change attempt ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Visible on every name server.
    InSync,
    /// Refused or failed; `will_retry` when the zone actor retries it.
    Failed { will_retry: bool },
}

/// A DNS change attempt's outcome: in sync is announced; a failure only when it will not be
/// retried or has lasted [`DNS_FAILURE_ALERT_ATTEMPT`] attempts (not every throttled attempt).
pub fn dns_change_event(outcome: DnsOutcome, attempt: i32) -> Option<EventType> {
    match outcome {
        DnsOutcome::InSync => Some(EventType::DnsChangeApplied),
        DnsOutcome::Failed { will_retry } => (!will_retry || attempt == DNS_FAILURE_ALERT_ATTEMPT)
            .then_some(EventType::DnsChangeFailed),
    }
}

/// How far ahead an edge certificate's expiry is announced.
pub const CERTIFICATE_WARNING: TimeDelta = TimeDelta::days(14);

/// Whole days left before a certificate seen at `now` expires, when that is within the
/// warning (never negative). Each (domain, CDN, expiry) is announced once; the adapter keeps
/// that record.
pub fn certificate_expiring(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<i64> {
    (expires_at < now + CERTIFICATE_WARNING).then(|| (expires_at - now).num_days().max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_a_degraded_state_is_announced_once() {
        use StormState::*;
        assert_eq!(
            state_event(None, BackupUnhealthy),
            Some(EventType::StormBackupUnhealthy)
        );
        assert_eq!(
            state_event(Some(Storm), BackupUnhealthy),
            Some(EventType::StormBackupUnhealthy)
        );
        assert_eq!(state_event(Some(BackupUnhealthy), BackupUnhealthy), None);
        assert_eq!(
            state_event(Some(Healthy), Unknown),
            Some(EventType::DomainHealthUnknown)
        );
        assert_eq!(state_event(Some(Unknown), Unknown), None);
        for s in [Healthy, Storm, Recovering] {
            assert_eq!(state_event(Some(Unknown), s), None);
            assert_eq!(state_event(None, s), None);
        }
    }

    #[test]
    fn drills_are_announced_when_they_start_and_when_they_end() {
        use StormState::*;
        assert_eq!(
            drill_event(Some(Healthy), Drill),
            Some(EventType::DrillStarted)
        );
        assert_eq!(drill_event(None, Drill), Some(EventType::DrillStarted));
        assert_eq!(drill_event(Some(Drill), Drill), None);
        for s in [Healthy, Storm, BackupUnhealthy] {
            assert_eq!(drill_event(Some(Drill), s), Some(EventType::DrillEnded));
        }
        assert_eq!(drill_event(Some(Healthy), Storm), None);
        assert_eq!(state_event(Some(Healthy), Drill), None);
    }

    #[test]
    fn verification_results_that_change_the_status_are_announced() {
        use Status::*;
        assert_eq!(
            verification_event(Pending, Verified),
            Some(EventType::DomainVerified)
        );
        assert_eq!(
            verification_event(Verified, Failed),
            Some(EventType::DomainVerificationFailed)
        );
        assert_eq!(verification_event(Verified, Verified), None);
        assert_eq!(verification_event(Failed, Pending), None);
    }

    #[test]
    fn dns_failures_are_announced_when_final_or_lasting() {
        assert_eq!(
            dns_change_event(DnsOutcome::InSync, 1),
            Some(EventType::DnsChangeApplied)
        );
        let retried = DnsOutcome::Failed { will_retry: true };
        for attempt in 1..DNS_FAILURE_ALERT_ATTEMPT {
            assert_eq!(dns_change_event(retried, attempt), None);
        }
        assert_eq!(
            dns_change_event(retried, DNS_FAILURE_ALERT_ATTEMPT),
            Some(EventType::DnsChangeFailed)
        );
        assert_eq!(
            dns_change_event(retried, DNS_FAILURE_ALERT_ATTEMPT + 1),
            None
        );
        assert_eq!(
            dns_change_event(DnsOutcome::Failed { will_retry: false }, 1),
            Some(EventType::DnsChangeFailed)
        );
    }

    #[test]
    fn certificates_are_announced_within_fourteen_days() {
        let now: DateTime<Utc> = "2026-12-03T12:00:00Z".parse().unwrap();
        assert_eq!(certificate_expiring(now + TimeDelta::days(15), now), None);
        assert_eq!(certificate_expiring(now + TimeDelta::days(14), now), None);
        assert_eq!(
            certificate_expiring(now + TimeDelta::days(13) + TimeDelta::hours(23), now),
            Some(13)
        );
        assert_eq!(certificate_expiring(now - TimeDelta::days(2), now), Some(0));
    }
}
