//! Route53: weighted CNAME record sets, one `ChangeBatch` per planned batch.
//!
//! For each domain the batch UPSERTs two record sets with the domain's name, type `CNAME` and
//! `SetIdentifier` `primary` / `backup`, weighted as decided. The hosted zone is the one whose
//! name is the longest suffix of the hostname, from a cached list of the account's zones that
//! is refreshed every 5 minutes and on a miss (at most every 5 seconds), so a zone created after
//! start-up is found. Errors are mapped to what the zone actor should do: retry (throttling,
//! `PriorRequestNotComplete`, 5xx, network, a zone not found yet), bisect (`InvalidChangeBatch`,
//! `InvalidInput`) or give up (access denied).
//!
//! The SDK's own retries are off: the zone actor's backoff is the only one, so the node-wide
//! rate limiter and the audit log (one `dns_changes` row per attempt) count every request
//! Route53 sees. Each call has a timeout, so a hung request cannot hold its zone.

use std::time::Duration;

use aws_sdk_route53::Client;
use aws_sdk_route53::config::retry::RetryConfig;
use aws_sdk_route53::config::timeout::TimeoutConfig;
use aws_sdk_route53::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tranche_actors::ports::DnsProvider;
use tranche_core::dns::planner::{Batch, RecordType};
use tranche_core::dns::provider::{ProviderError, Submitted};

/// TTL of the weighted records unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The hosted zone list is re-read when older than this…
const ZONES_MAX_AGE: Duration = Duration::from_secs(300);
/// …and on a miss, but not more often than this (`ListHostedZones` counts against the account's
/// request rate too).
const ZONES_MIN_REFRESH: Duration = Duration::from_secs(5);
/// Longest time one Route53 request may take, and to connect.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct ZoneCache {
    /// Hosted zones as (name without trailing dot, id), longest name first.
    zones: Vec<(String, String)>,
    loaded_at: Option<Instant>,
}

impl ZoneCache {
    fn find(&self, hostname: &str) -> Option<String> {
        let host = hostname.trim_end_matches('.').to_ascii_lowercase();
        self.zones
            .iter()
            .find(|(name, _)| host == *name || host.ends_with(&format!(".{name}")))
            .map(|(_, id)| id.clone())
    }

    fn older_than(&self, age: Duration) -> bool {
        self.loaded_at.is_none_or(|t| t.elapsed() >= age)
    }
}

pub struct Route53Provider {
    client: Client,
    ttl: Duration,
    zones: Mutex<ZoneCache>,
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(OPERATION_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
}

/// The SDK's HTTP client on rustls with *ring* (the project's one crypto provider).
fn http_client() -> aws_sdk_route53::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl Route53Provider {
    /// Credentials and region from the standard AWS chain (environment, profile, instance
    /// role); `endpoint_url` overrides the service endpoint (e.g. a local `moto_server`).
    pub async fn from_environment(endpoint_url: Option<&str>, ttl: Duration) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts());
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        Self::with_client(Client::new(&shared), ttl)
    }

    /// Static test credentials against `endpoint_url` (moto accepts any).
    pub fn for_endpoint(endpoint_url: &str, ttl: Duration) -> Self {
        let config = aws_sdk_route53::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint_url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "static"))
            .http_client(http_client())
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts())
            .build();
        Self::with_client(Client::from_conf(config), ttl)
    }

    pub fn with_client(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            zones: Mutex::new(ZoneCache::default()),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Forgets the cached hosted zones (after zones were created or deleted).
    pub async fn refresh_zones(&self) {
        *self.zones.lock().await = ZoneCache::default();
    }

    async fn load_zones(&self, cache: &mut ZoneCache) -> Result<(), ProviderError> {
        let mut zones = Vec::new();
        let mut pages = self.client.list_hosted_zones().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(map_error)?;
            for zone in page.hosted_zones() {
                let name = zone.name().trim_end_matches('.').to_ascii_lowercase();
                let id = zone.id().trim_start_matches("/hostedzone/").to_owned();
                zones.push((name, id));
            }
        }
        zones.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        *cache = ZoneCache {
            zones,
            loaded_at: Some(Instant::now()),
        };
        Ok(())
    }

    /// The hosted zone id for `hostname`: the zone with the longest name that is a suffix of it.
    /// The cached list is re-read when stale, and on a miss when it is not brand new.
    pub async fn zone_id_for(&self, hostname: &str) -> Result<String, ProviderError> {
        let mut cache = self.zones.lock().await;
        if cache.older_than(ZONES_MAX_AGE) {
            self.load_zones(&mut cache).await?;
        }
        if let Some(id) = cache.find(hostname) {
            return Ok(id);
        }
        if cache.older_than(ZONES_MIN_REFRESH) {
            self.load_zones(&mut cache).await?;
            if let Some(id) = cache.find(hostname) {
                return Ok(id);
            }
        }
        Err(ProviderError::ZoneNotFound(format!(
            "no Route53 hosted zone contains {hostname} (will look again)"
        )))
    }

    fn record_set(
        &self,
        name: &str,
        rtype: RecordType,
        identifier: &str,
        weight: u8,
        value: &str,
    ) -> Result<ResourceRecordSet, ProviderError> {
        let record = ResourceRecord::builder()
            .value(value)
            .build()
            .map_err(|e| ProviderError::InvalidChangeBatch(e.to_string()))?;
        ResourceRecordSet::builder()
            .name(name)
            .r#type(match rtype {
                RecordType::Cname => RrType::Cname,
                RecordType::A => RrType::A,
                RecordType::Aaaa => RrType::Aaaa,
            })
            .set_identifier(identifier)
            .weight(i64::from(weight))
            .ttl(self.ttl.as_secs() as i64)
            .resource_records(record)
            .build()
            .map_err(|e| ProviderError::InvalidChangeBatch(e.to_string()))
    }
}

/// Maps an SDK error to what the caller should do about it.
fn map_error<E, R>(err: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or_default();
            let message = format!("{code}: {}", e.message().unwrap_or_default());
            match code {
                "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException" => ProviderError::Throttled(message),
                "PriorRequestNotComplete" => ProviderError::PriorRequestNotComplete(message),
                "InvalidChangeBatch" | "InvalidInput" => ProviderError::InvalidChangeBatch(message),
                // A cached zone id that was deleted: the list is refreshed on the next miss.
                "NoSuchHostedZone" => ProviderError::ZoneNotFound(message),
                "AccessDenied" | "AccessDeniedException" | "InvalidClientTokenId" => {
                    ProviderError::Permanent(message)
                }
                _ => ProviderError::Transient(message),
            }
        }
        SdkError::ResponseError(_) | SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            ProviderError::Transient(format!("{err:?}"))
        }
        _ => ProviderError::Transient(err.to_string()),
    }
}

#[async_trait::async_trait]
impl DnsProvider for Route53Provider {
    fn name(&self) -> &'static str {
        "route53"
    }

    async fn apply(&self, _zone: &str, batch: &Batch) -> Result<Submitted, ProviderError> {
        let Some(first) = batch.changes.first() else {
            return Err(ProviderError::InvalidChangeBatch("empty batch".into()));
        };
        let zone_id = self.zone_id_for(&first.name).await?;
        let mut changes = Vec::with_capacity(batch.changes.len() * 2);
        for c in &batch.changes {
            for (identifier, weight, value) in [
                ("primary", c.weights.primary, c.primary_value.as_str()),
                ("backup", c.weights.backup, c.backup_value.as_str()),
            ] {
                let change = Change::builder()
                    .action(ChangeAction::Upsert)
                    .resource_record_set(
                        self.record_set(&c.name, c.rtype, identifier, weight, value)?,
                    )
                    .build()
                    .map_err(|e| ProviderError::InvalidChangeBatch(e.to_string()))?;
                changes.push(change);
            }
        }
        let change_batch = ChangeBatch::builder()
            .comment(format!("tranche: {} domain(s)", batch.changes.len()))
            .set_changes(Some(changes))
            .build()
            .map_err(|e| ProviderError::InvalidChangeBatch(e.to_string()))?;
        let started = std::time::Instant::now();
        let sent = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(change_batch)
            .send()
            .await
            .map_err(map_error);
        crate::metrics::METRICS.dns_call("route53", sent.is_ok(), started.elapsed());
        let out = match sent {
            Ok(out) => out,
            Err(e @ ProviderError::ZoneNotFound(_)) => {
                // Deleted since it was listed: list again next time.
                self.zones.lock().await.loaded_at = None;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let info = out.change_info();
        Ok(Submitted {
            change_id: info
                .map(|i| i.id().trim_start_matches("/change/").to_owned())
                .unwrap_or_default(),
            in_sync: info.is_some_and(|i| *i.status() == ChangeStatus::Insync),
        })
    }

    async fn in_sync(&self, change_id: &str) -> Result<bool, ProviderError> {
        let started = std::time::Instant::now();
        let out = self
            .client
            .get_change()
            .id(change_id)
            .send()
            .await
            .map_err(map_error);
        crate::metrics::METRICS.dns_call("route53", out.is_ok(), started.elapsed());
        let out = out?;
        Ok(out
            .change_info()
            .is_some_and(|i| *i.status() == ChangeStatus::Insync))
    }
}
