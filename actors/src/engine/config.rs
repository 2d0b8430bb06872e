//! Engine settings and the injected clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

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
}

impl EngineConfig {
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            clock: system_clock(),
            lease_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(10),
            flush_interval: Duration::from_secs(2),
            probe_retention: Duration::from_secs(7 * 86_400),
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
