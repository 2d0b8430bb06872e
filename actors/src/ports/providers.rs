//! The engine's ports to the outside world other than the database: the DNS provider, the
//! prober and the CDN usage sources. The `tranche` crate implements them (Route53, the HTTP(S)
//! prober, Cloudflare); tests and benchmarks use local fakes that speak the same wire protocols.

use tranche_core::dns::planner::Batch;
use tranche_core::dns::provider::{ProviderError, Submitted};
use tranche_core::probe::{ProbeRequest, ProbeResult};
use tranche_core::usage::{HostUsage, SourceError, SourceQuery};

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

/// Performs probes. Implementations must not share connections between probes: a dead edge
/// must not hide behind a pooled connection.
#[async_trait::async_trait]
pub trait Prober: Send + Sync + 'static {
    async fn probe(&self, request: &ProbeRequest) -> ProbeResult;
}

/// A CDN's usage analytics.
#[async_trait::async_trait]
pub trait UsageSource: Send + Sync + 'static {
    /// The CDN this source reports for (matched case-insensitively with services' CDN names),
    /// also the `source` of the snapshots it produces.
    fn cdn(&self) -> &str;
    /// All rows for the query, following the source's paging.
    async fn fetch(&self, query: &SourceQuery) -> Result<Vec<HostUsage>, SourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tranche_core::dns::planner::Batch;
    use tranche_core::dns::provider::ProviderError;

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
