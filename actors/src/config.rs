//! Engine settings and the injected clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// A node whose heartbeat is older than this has lost its shards: the survivors depose it (end
/// its lease session, which frees its advisory locks) and take them over. The node itself stops
/// acting a margin before, by its own clock, so it never acts on a lease the others consider
/// expired.
pub const LEASE_DEADLINE: Duration = Duration::from_secs(3);

/// How much earlier than [`LEASE_DEADLINE`] a node stops trusting its own lease.
pub const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// Until when this node may act for the shards it holds (DNS changes, storm decisions): the
/// lease keeper extends it after every successful heartbeat; actors check it before acting.
///
/// A node frozen (SIGSTOP, a VM pause, a long stall) past its deadline finds, when it wakes, a
/// lease that has expired by its own monotonic clock, before its lease keeper has even noticed
/// that the survivors deposed it — so it does nothing in that gap. Without a lease keeper (unit
/// tests driving actors directly) the lease never expires.
#[derive(Clone)]
pub struct LeaseValidity {
    base: Instant,
    /// Milliseconds after `base` until which the lease holds; `u64::MAX`: unmanaged.
    until_ms: Arc<AtomicU64>,
}

impl Default for LeaseValidity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until_ms: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
}

impl LeaseValidity {
    /// The lease holds until `until`.
    pub fn extend_to(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.base).as_millis() as u64;
        self.until_ms.store(ms, Ordering::SeqCst);
    }

    /// The lease is gone (lost connection, a start from scratch).
    pub fn revoke(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
    }

    /// Whether the node may act now.
    pub fn is_valid(&self) -> bool {
        let until = self.until_ms.load(Ordering::SeqCst);
        until == u64::MAX
            || (Instant::now()
                .saturating_duration_since(self.base)
                .as_millis() as u64)
                < until
    }
}

/// The current time. Injected so tests can run the actors on paused tokio time.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// A clock that follows tokio's (possibly paused) time from `start`: for deterministic tests.
pub fn tokio_clock(start: DateTime<Utc>) -> Clock {
    let origin = tokio::time::Instant::now();
    Arc::new(move || start + chrono::Duration::from_std(origin.elapsed()).unwrap_or_default())
}

#[derive(Clone)]
pub struct EngineConfig {
    /// This node's name in `cluster_nodes` and in audit columns.
    pub node_id: String,
    pub clock: Clock,
    /// Heartbeat and lease rebalancing period.
    pub lease_interval: Duration,
    /// How often the probe supervisor re-reads its domains even without a notification.
    pub reconcile_interval: Duration,
    /// How often observations are flushed to the database.
    pub flush_interval: Duration,
    /// How long per-minute probe aggregates are kept.
    pub probe_retention: Duration,
    /// Whether this node's shard leases still hold (shared by every actor of the node).
    pub lease: LeaseValidity,
    /// This node's vantage: the region its probes see the CDNs from (`eu-west`, …).
    pub vantage: String,
    /// How many distinct vantages probe each domain (the owner's and up to this many − 1
    /// others), when that many exist. Every node of a cluster must use the same value.
    pub vantages_per_domain: usize,
    /// How often an observing node sends its vantages' window summaries to the deciders.
    pub vantage_report_interval: Duration,
}

/// The vantage of a node that declares none.
pub const DEFAULT_VANTAGE: &str = "default";

impl EngineConfig {
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            clock: system_clock(),
            lease_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(10),
            flush_interval: Duration::from_secs(2),
            probe_retention: Duration::from_secs(7 * 86_400),
            lease: LeaseValidity::default(),
            vantage: DEFAULT_VANTAGE.to_owned(),
            vantages_per_domain: 3,
            vantage_report_interval: Duration::from_millis(250),
        }
    }
}

/// Exponential backoff with jitter: `base × 2^(attempt−1)` capped at `max`, then a random
/// point in its upper half, so actors that failed together do not retry in lockstep.
pub fn jittered_backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    use std::hash::BuildHasher;
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let half = exp.as_millis() as u64 / 2;
    Duration::from_millis(half + random % (half + 1))
}
