//! Storms and the state behind them, read-only: per-domain storm state, storms, and the cluster
//! that decides them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;
use tranche_core::domain::SHARDS;
use uuid::Uuid;

use super::auth::{Admin, Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::resource::service_not_found;
use super::{ApiContext, ApiTags};
use crate::postgres::storms::{self, DomainStateRow, StormFilter, StormRow};

/// Storm state of every domain of a service.
#[derive(Debug, Clone, Object)]
pub struct ServiceState {
    pub service_id: i64,
    pub domains: Vec<DomainState>,
}

/// One domain as the engine sees it.
#[derive(Debug, Clone, Object)]
pub struct DomainState {
    pub domain_id: i64,
    pub name: String,
    /// `healthy`, `storm`, `recovering`, `backup_unhealthy` (primary down, backup not healthy:
    /// no failover), `unknown` (the primary cannot be judged — no target, every probe
    /// blocked, too few results — for longer than a window: see `reason`) or `drill` (an
    /// operator's failover drill holds or ramps traffic back; see `drill`).
    pub state: String,
    /// Why the domain is in its state, where that needs saying (`unknown`).
    #[oai(nullable)]
    pub reason: Option<String>,
    /// When the domain entered this state (null: never left `healthy`).
    #[oai(nullable)]
    pub state_since: Option<DateTime<Utc>>,
    /// DNS weights the engine wants (applying them is the DNS steering's job).
    pub desired_weights: DnsWeights,
    pub primary: CdnObservation,
    pub backup: CdnObservation,
    /// Node currently probing the domain (null while no live node owns its shard).
    #[oai(nullable)]
    pub owning_node: Option<String>,
    /// Time of the latest recorded probe.
    #[oai(nullable)]
    pub observed_at: Option<DateTime<Utc>>,
    /// Every vantage (region) probing the domain, as the deciding node sees them now (its own
    /// view first; refreshed with the observations, every couple of seconds). Empty with a
    /// single vantage.
    pub vantages: Vec<VantageView>,
    /// Every vantage's view when the domain's last decision (or change of disagreement) was
    /// recorded. Empty before the first with several vantages.
    pub decision_vantages: Vec<VantageView>,
    /// Vantages that see a CDN down while the quorum does not — usually a network problem near
    /// that vantage, not at the CDN. Empty when every vantage agrees.
    pub vantage_disagrees: Vec<VantageDisagreement>,
    /// The drill under way (requested and not over), if any.
    #[oai(nullable)]
    pub drill: Option<DrillInProgress>,
    /// The maintenance window covering the domain now, if any: no storm opens while it lasts.
    #[oai(nullable)]
    pub maintenance: Option<MaintenanceInProgress>,
}

/// A drill under way, as `/state` shows it.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct DrillInProgress {
    pub drill_id: Uuid,
    pub reason: String,
    pub ends_at: DateTime<Utc>,
    /// When traffic moved (null: not yet — the backup must be healthy first).
    #[oai(nullable)]
    pub began_at: Option<DateTime<Utc>>,
    pub requested_by: String,
}

/// A maintenance window in force, as `/state` shows it.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct MaintenanceInProgress {
    pub window_id: Uuid,
    pub reason: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// What one vantage saw of a domain's CDNs.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct VantageView {
    /// The vantage's region label.
    pub vantage: String,
    /// The node that probed from it.
    pub node_id: String,
    /// Availability through the primary over the window (decimal string), null while unknown.
    #[oai(nullable)]
    pub primary_availability: Option<String>,
    /// Availability through the backup over the window (decimal string), null while unknown.
    #[oai(nullable)]
    pub backup_availability: Option<String>,
    /// This vantage alone judges the primary down (window below the threshold after
    /// `consecutive_failures` failures in a row).
    pub primary_down: bool,
    /// This vantage alone judges the backup down.
    pub backup_down: bool,
}

/// A vantage that sees a CDN down while the quorum of vantages does not.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct VantageDisagreement {
    pub vantage: String,
    pub node_id: String,
    /// `primary` or `backup`.
    pub cdn: String,
    /// Since when it has disagreed.
    pub since: DateTime<Utc>,
}

/// A JSON array of `T` stored by the engine (entries that do not parse are skipped).
fn json_list<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Vec<T> {
    match v {
        serde_json::Value::Array(items) => items
            .into_iter()
            .filter_map(|i| serde_json::from_value(i).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Weights of the primary and backup DNS records (sum 100).
#[derive(Debug, Clone, Object)]
pub struct DnsWeights {
    pub primary: i32,
    pub backup: i32,
}

/// What the probes through one CDN show.
#[derive(Debug, Clone, Object)]
pub struct CdnObservation {
    /// Availability over the policy window, 0–1; null while the window has too few samples.
    #[oai(nullable)]
    pub availability: Option<f64>,
    #[oai(nullable)]
    pub last_probe: Option<LastProbe>,
}

/// The most recent probe through a CDN.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct LastProbe {
    pub at: DateTime<Utc>,
    /// `ok`, `http_status`, `timeout`, `connect`, `tls`, `dns`, `blocked` or `protocol`.
    pub outcome: String,
    #[oai(nullable)]
    pub status: Option<u16>,
    pub latency_ms: u32,
    #[oai(nullable)]
    pub error: Option<String>,
    /// Expiry of the certificate the CDN served (HTTPS).
    #[oai(nullable)]
    pub cert_expires_at: Option<DateTime<Utc>>,
}

fn availability(text: Option<String>) -> Option<f64> {
    text.and_then(|t| t.parse().ok())
}

fn last_probe(v: Option<serde_json::Value>) -> Option<LastProbe> {
    v.and_then(|v| serde_json::from_value(v).ok())
}

impl From<DomainStateRow> for DomainState {
    fn from(r: DomainStateRow) -> Self {
        Self {
            domain_id: r.domain_id,
            name: r.hostname,
            state: r.state,
            reason: r.state_reason,
            state_since: r.state_since,
            desired_weights: DnsWeights {
                primary: r.desired_primary_weight.into(),
                backup: r.desired_backup_weight.into(),
            },
            primary: CdnObservation {
                availability: availability(r.primary_avail),
                last_probe: last_probe(r.primary_last),
            },
            backup: CdnObservation {
                availability: availability(r.backup_avail),
                last_probe: last_probe(r.backup_last),
            },
            owning_node: r.owner_node,
            observed_at: r.observed_at,
            vantages: json_list(r.vantages),
            decision_vantages: json_list(r.decision_vantages),
            vantage_disagrees: json_list(r.vantage_disagrees),
            drill: r.drill.and_then(|v| serde_json::from_value(v).ok()),
            maintenance: r.maintenance.and_then(|v| serde_json::from_value(v).ok()),
        }
    }
}

/// A storm: a period during which a domain's primary CDN was below its policy and traffic was
/// moved to the backup.
#[derive(Debug, Clone, Object)]
pub struct Storm {
    pub id: Uuid,
    pub service_id: i64,
    #[oai(nullable)]
    pub domain_id: Option<i64>,
    /// The domain's hostname.
    #[oai(nullable)]
    pub domain: Option<String>,
    /// Policy kind that declared it (`http_availability`).
    pub kind: String,
    pub started_at: DateTime<Utc>,
    /// Null while the storm is active.
    #[oai(nullable)]
    pub ended_at: Option<DateTime<Utc>>,
    pub active: bool,
    /// What triggered it: window availabilities of primary and backup, threshold, window.
    pub trigger: serde_json::Value,
    #[oai(nullable)]
    pub opened_by_node: Option<String>,
    #[oai(nullable)]
    pub closed_by_node: Option<String>,
}

impl From<StormRow> for Storm {
    fn from(r: StormRow) -> Self {
        Self {
            id: r.id,
            service_id: r.service_id,
            domain_id: r.domain_id,
            domain: r.hostname,
            kind: r.kind,
            started_at: r.started_at,
            active: r.ended_at.is_none(),
            ended_at: r.ended_at,
            trigger: r.trigger,
            opened_by_node: r.opened_by_node,
            closed_by_node: r.closed_by_node,
        }
    }
}

/// The cluster: nodes and the shards they hold.
#[derive(Debug, Clone, Object)]
pub struct Cluster {
    /// Total number of shards work is split into.
    pub shards: u16,
    /// Shards whose lock no node holds right now (the advisory locks are the one truth: a
    /// shard held by a frozen node counts as owned until the survivors depose it).
    pub unowned_shards: u16,
    /// The nodes, by vantage then id.
    pub nodes: Vec<ClusterNode>,
    /// The vantages (regions) the nodes probe from, with their nodes. A domain is probed from
    /// up to `vantages_per_domain` of the vantages with a live node.
    pub vantages: Vec<ClusterVantage>,
}

/// One vantage (region) of the cluster.
#[derive(Debug, Clone, Object)]
pub struct ClusterVantage {
    pub vantage: String,
    /// Its nodes' ids.
    pub nodes: Vec<String>,
    /// How many of them are alive.
    pub alive_nodes: u32,
}

#[derive(Debug, Clone, Object)]
pub struct ClusterNode {
    pub node_id: String,
    /// The region the node probes from (`region` in its configuration).
    pub vantage: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Heartbeat within the deadline (3 s) and a lease session that exists. A node that is
    /// not alive but still holds shards is frozen or stalled: the survivors depose it.
    pub alive: bool,
    /// Shards whose advisory lock the node's lease session holds now.
    pub shard_count: u32,
    pub shards: Vec<i16>,
    /// When survivors last ended this node's lease session for a missed heartbeat deadline.
    #[oai(nullable)]
    pub deposed_at: Option<DateTime<Utc>>,
    /// The node that deposed it.
    #[oai(nullable)]
    pub deposed_by: Option<String>,
}

pub struct StormsApi;

#[OpenApi]
impl StormsApi {
    /// Storm state of every domain of a service: state, desired DNS weights, window
    /// availability and last probe per CDN, owning node.
    #[oai(
        path = "/v1/services/:id/state",
        method = "get",
        operation_id = "get_service_state",
        tag = "ApiTags::Services"
    )]
    async fn state(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<ServiceState>> {
        let rows = storms::service_state(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| service_not_found(id.0))?;
        Ok(Json(ServiceState {
            service_id: id.0,
            domains: rows.into_iter().map(DomainState::from).collect(),
        }))
    }

    /// Your storms, newest first.
    #[allow(clippy::too_many_arguments)] // one argument per documented query parameter
    #[oai(
        path = "/v1/storms",
        method = "get",
        operation_id = "list_storms",
        tag = "ApiTags::Storms"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// Only this service's storms.
        service_id: Query<Option<i64>>,
        /// `true`: only ongoing storms; `false`: only ended ones.
        active: Query<Option<bool>>,
        /// Storms still active at or after this time (RFC 3339).
        since: Query<Option<DateTime<Utc>>>,
        /// Storms that started before this time (RFC 3339).
        until: Query<Option<DateTime<Utc>>>,
        /// At most this many (1–1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> ApiResult<Json<Vec<Storm>>> {
        let limit = super::page_limit(limit.0)?;
        if let (Some(s), Some(u)) = (since.0, until.0)
            && s > u
        {
            return Err(ApiError::bad_request(
                "since must not be after until",
                Some("since"),
            ));
        }
        let filter = StormFilter {
            service_id: service_id.0,
            active: active.0,
            since: since.0,
            until: until.0,
            limit,
        };
        let rows = storms::list(&ctx.pool, tenant.customer_id, &filter).await?;
        Ok(Json(rows.into_iter().map(Storm::from).collect()))
    }

    /// One storm.
    #[oai(
        path = "/v1/storms/:id",
        method = "get",
        operation_id = "get_storm",
        tag = "ApiTags::Storms"
    )]
    async fn get(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<Uuid>,
    ) -> ApiResult<Json<Storm>> {
        storms::get(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .map(|r| Json(r.into()))
            .ok_or_else(|| ApiError::not_found(format!("storm {} not found", id.0)))
    }

    /// Nodes, heartbeats and the shards each holds (operator).
    #[oai(
        path = "/v1/cluster",
        method = "get",
        operation_id = "get_cluster",
        tag = "ApiTags::Admin"
    )]
    async fn cluster(
        &self,
        _admin: Admin,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Cluster>> {
        let nodes = storms::cluster_nodes(&ctx.pool).await?;
        let owned: std::collections::HashSet<i16> = nodes
            .iter()
            .flat_map(|n| n.shards.iter().copied())
            .collect();
        let mut vantages: Vec<ClusterVantage> = Vec::new();
        for n in &nodes {
            match vantages.last_mut() {
                Some(v) if v.vantage == n.vantage => {}
                _ => vantages.push(ClusterVantage {
                    vantage: n.vantage.clone(),
                    nodes: Vec::new(),
                    alive_nodes: 0,
                }),
            }
            if let Some(v) = vantages.last_mut() {
                v.nodes.push(n.node_id.clone());
                v.alive_nodes += u32::from(n.alive);
            }
        }
        Ok(Json(Cluster {
            shards: SHARDS,
            unowned_shards: SHARDS - owned.len() as u16,
            vantages,
            nodes: nodes
                .into_iter()
                .map(|n| ClusterNode {
                    shard_count: n.shards.len() as u32,
                    node_id: n.node_id,
                    vantage: n.vantage,
                    started_at: n.started_at,
                    heartbeat_at: n.heartbeat_at,
                    alive: n.alive,
                    shards: n.shards,
                    deposed_at: n.deposed_at,
                    deposed_by: n.deposed_by,
                })
                .collect(),
        }))
    }
}
