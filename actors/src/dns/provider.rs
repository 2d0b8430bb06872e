//! The DNS provider port: apply a batch of weighted records, report a change's status.

use super::planner::Batch;

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

/// A DNS provider (noop, Route53, …).
#[async_trait::async_trait]
pub trait DnsProvider: Send + Sync + 'static {
    /// Short name for the audit log (`noop`, `route53`).
    fn name(&self) -> &'static str;
    /// Applies `batch` in `zone` (UPSERT of both weighted record sets of every domain).
    async fn apply(&self, zone: &str, batch: &Batch) -> Result<Submitted, ProviderError>;
    /// Whether a submitted change is in sync yet.
    async fn in_sync(&self, change_id: &str) -> Result<bool, ProviderError>;
}

/// Logs the intended change and reports it applied: the default without credentials.
pub struct NoopProvider;

#[async_trait::async_trait]
impl DnsProvider for NoopProvider {
    fn name(&self) -> &'static str {
        "noop"
    }

    async fn apply(&self, zone: &str, batch: &Batch) -> Result<Submitted, ProviderError> {
        for c in &batch.changes {
            tracing::info!(
                dns.zone = zone,
                domain.id = c.domain_id,
                domain.name = %c.name,
                weights = %c.weights,
                "noop DNS provider: would set weights"
            );
        }
        Ok(Submitted {
            change_id: format!("noop-{}", uuid_like()),
            in_sync: true,
        })
    }

    async fn in_sync(&self, _change_id: &str) -> Result<bool, ProviderError> {
        Ok(true)
    }
}

/// A unique-enough id without a uuid dependency: nanoseconds since the epoch.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn noop_applies_everything_at_once() {
        let s = NoopProvider
            .apply("example.com", &Batch::default())
            .await
            .unwrap();
        assert!(s.in_sync && s.change_id.starts_with("noop-"));
        assert!(NoopProvider.in_sync(&s.change_id).await.unwrap());
        assert!(ProviderError::Throttled("x".into()).retryable());
        assert!(!ProviderError::InvalidChangeBatch("x".into()).retryable());
    }
}
