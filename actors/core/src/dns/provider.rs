//! What a DNS provider answers: a submitted change, or an error classified by what the caller
//! should do about it. The provider port itself (`DnsProvider`) is the engine's.

/// A provider's answer to a submitted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The provider's change id (Route53 `/change/C…`), for status checks and the audit log.
    pub change_id: String,
    /// Whether the change is already visible on every name server.
    pub in_sync: bool,
}

/// Why a batch was not accepted, by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Rate limited: retry after a backoff.
    #[error("throttled: {0}")]
    Throttled(String),
    /// Another change to this zone is still pending (Route53 `PriorRequestNotComplete`): retry
    /// after a backoff.
    #[error("a prior change to the zone is not complete: {0}")]
    PriorRequestNotComplete(String),
    /// 5xx or network failure: retry after a backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// No hosted zone contains the record (yet): the provider's zone list is refreshed and the
    /// change retried after a backoff, so a zone created later is picked up without a restart.
    #[error("zone not found: {0}")]
    ZoneNotFound(String),
    /// The batch was rejected as invalid: split it to isolate the bad record.
    #[error("invalid change batch: {0}")]
    InvalidChangeBatch(String),
    /// Will not succeed by retrying (no hosted zone, access denied): surface it.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl ProviderError {
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled(_)
                | Self::PriorRequestNotComplete(_)
                | Self::Transient(_)
                | Self::ZoneNotFound(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        assert!(ProviderError::Throttled("x".into()).retryable());
        assert!(ProviderError::ZoneNotFound("x".into()).retryable());
        assert!(!ProviderError::InvalidChangeBatch("x".into()).retryable());
        assert!(!ProviderError::Permanent("x".into()).retryable());
    }
}
