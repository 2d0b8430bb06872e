//! Route53: weighted CNAME record sets, one `ChangeBatch` per planned batch.
//!
//! For each domain the batch UPSERTs two record sets with the domain's name, type `CNAME` and
//! `SetIdentifier` `primary` / `backup`, weighted as decided. The hosted zone is the one whose
//! name is the longest suffix of the hostname (listed once, then cached). Errors are mapped to
//! what the zone actor should do: retry (throttling, `PriorRequestNotComplete`, 5xx, network),
//! bisect (`InvalidChangeBatch`, `InvalidInput`) or give up (no hosted zone, access denied).

use std::time::Duration;

use aws_sdk_route53::Client;
use aws_sdk_route53::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use tokio::sync::Mutex;
use tranche_actors::dns::planner::{Batch, RecordType};
use tranche_actors::dns::provider::{DnsProvider, ProviderError, Submitted};

/// TTL of the weighted records unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

pub struct Route53Provider {
    client: Client,
    ttl: Duration,
    /// Hosted zones as (name without trailing dot, id), longest name first; loaded on first use.
    zones: Mutex<Option<Vec<(String, String)>>>,
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
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
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
            .build();
        Self::with_client(Client::from_conf(config), ttl)
    }

    pub fn with_client(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            zones: Mutex::new(None),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Forgets the cached hosted zones (after zones were created or deleted).
    pub async fn refresh_zones(&self) {
        *self.zones.lock().await = None;
    }

    /// The hosted zone id for `hostname`: the zone with the longest name that is a suffix of it.
    pub async fn zone_id_for(&self, hostname: &str) -> Result<String, ProviderError> {
        let mut cache = self.zones.lock().await;
        if cache.is_none() {
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
            *cache = Some(zones);
        }
        let host = hostname.trim_end_matches('.').to_ascii_lowercase();
        cache
            .as_ref()
            .and_then(|zones| {
                zones
                    .iter()
                    .find(|(name, _)| host == *name || host.ends_with(&format!(".{name}")))
                    .map(|(_, id)| id.clone())
            })
            .ok_or_else(|| {
                ProviderError::Permanent(format!("no Route53 hosted zone contains {hostname}"))
            })
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
                "NoSuchHostedZone"
                | "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId" => ProviderError::Permanent(message),
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
        let out = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(change_batch)
            .send()
            .await
            .map_err(map_error)?;
        let info = out.change_info();
        Ok(Submitted {
            change_id: info
                .map(|i| i.id().trim_start_matches("/change/").to_owned())
                .unwrap_or_default(),
            in_sync: info.is_some_and(|i| *i.status() == ChangeStatus::Insync),
        })
    }

    async fn in_sync(&self, change_id: &str) -> Result<bool, ProviderError> {
        let out = self
            .client
            .get_change()
            .id(change_id)
            .send()
            .await
            .map_err(map_error)?;
        Ok(out
            .change_info()
            .is_some_and(|i| *i.status() == ChangeStatus::Insync))
    }
}
