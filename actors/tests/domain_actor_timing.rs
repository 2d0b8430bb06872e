//! Deterministic timing of the engine's actors on paused tokio time.
//!
//! The database and network ports are replaced by in-memory doubles here *only* so that time
//! can be paused (real sockets and PostgreSQL would race a paused clock); the PostgreSQL
//! adapters are exercised end to end in the `tranche` crate's tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tranche_actors::config::tokio_clock;
use tranche_actors::ports::Prober;
use tranche_actors::ports::{
    DomainSpec, EngineStore, Fence, LeaseBackend, Observation, PersistedState, StoreError,
};
use tranche_actors::{Engine, EngineConfig, RootArgs};
use tranche_core::domain::{
    ExpectedStatuses, PolicyKind, PolicyParams, PolicyPatch, ProbePath, ProbeScheme, ProbeTarget,
};
use tranche_core::probe::{Outcome, ProbeRequest, ProbeResult};
use tranche_core::storm::{Decision, StormChange, StormState, Weights};

type Decisions = Arc<Mutex<Vec<Decision>>>;

struct MemoryStore {
    spec: DomainSpec,
    decisions: Decisions,
    /// Panic in the first commit (a bug in the actor's path), to exercise supervision.
    panic_once: AtomicBool,
    loads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl EngineStore for MemoryStore {
    async fn domains_on_shards(
        &self,
        shards: &[u16],
    ) -> Result<Vec<(DomainSpec, Option<PersistedState>)>, StoreError> {
        Ok(if shards.contains(&self.spec.shard) {
            vec![(self.spec.clone(), None)]
        } else {
            vec![]
        })
    }
    async fn load_state(&self, _: i64) -> Result<Option<PersistedState>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let last = self.decisions.lock().unwrap().last().cloned();
        Ok(last.map(|d| PersistedState {
            state: d.state,
            since: d.at,
            weights: d.weights,
        }))
    }
    async fn commit_decision(
        &self,
        _: &DomainSpec,
        d: &Decision,
        _: Option<&str>,
        _: Fence,
        _: &str,
    ) -> Result<(), StoreError> {
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("injected failure while committing");
        }
        self.decisions.lock().unwrap().push(d.clone());
        Ok(())
    }
    async fn record_disagreement(
        &self,
        _: &DomainSpec,
        _: &[tranche_actors::ports::Disagreement],
        _: tranche_actors::ports::VantageViews<'_>,
        _: Fence,
    ) -> Result<(), StoreError> {
        // One vantage: it can never disagree with itself.
        unreachable!("a single vantage never disagrees")
    }
    async fn step_applied(&self, _: i64, _: Weights) -> Result<bool, StoreError> {
        // No DNS steering on this node: never consulted.
        unreachable!("the engine has no DNS steering here")
    }
    async fn write_observations(&self, _: &str, _: &[Observation]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn prune_observations(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }
}

struct AllShards;

#[async_trait::async_trait]
impl LeaseBackend for AllShards {
    async fn heartbeat(&self, _: &str, _: &[u16]) -> Result<usize, StoreError> {
        Ok(1)
    }
    async fn depose_stale(&self, _: &str, _: Duration) -> Result<Vec<String>, StoreError> {
        Ok(vec![])
    }
    async fn try_acquire(&self, _: &str, _: u16) -> Result<Option<i64>, StoreError> {
        Ok(Some(1))
    }
    async fn release(&self, _: u16) -> Result<(), StoreError> {
        Ok(())
    }
    async fn reset(&self) {}
    async fn deregister(&self, _: &str) {}
    async fn members(&self) -> Result<tranche_actors::ports::Membership, StoreError> {
        // Alone in its vantage: nothing to observe for others.
        Ok(Default::default())
    }
}

/// Answers instantly: OK unless the CDN is switched to failing.
struct Switch {
    primary_up: AtomicBool,
    backup_up: AtomicBool,
    clock: tranche_actors::Clock,
}

#[async_trait::async_trait]
impl Prober for Switch {
    async fn probe(&self, request: &ProbeRequest) -> ProbeResult {
        let up = if request.target.port == Some(1) {
            &self.primary_up
        } else {
            &self.backup_up
        };
        let ok = up.load(Ordering::SeqCst);
        ProbeResult {
            at: (self.clock)(),
            outcome: if ok { Outcome::Ok } else { Outcome::HttpStatus },
            latency_ms: 1,
            status: Some(if ok { 200 } else { 503 }),
            cert_expires_at: None,
            error: None,
        }
    }
}

fn spec(policy: PolicyParams) -> DomainSpec {
    DomainSpec {
        id: 7,
        service_id: 1,
        customer_id: 1,
        hostname: "app.example.test".into(),
        zone: "example.test".into(),
        shard: 3,
        primary_target: Some(ProbeTarget::parse("192.0.2.1:1").unwrap()),
        backup_target: Some(ProbeTarget::parse("192.0.2.2:2").unwrap()),
        scheme: ProbeScheme::Https,
        path: ProbePath::parse("/").unwrap(),
        expected: ExpectedStatuses::default(),
        timeout: Duration::from_secs(1),
        policy,
        drill_until: None,
        maintenance: Vec::new(),
    }
}

/// One engine node over the in-memory doubles, with its switches.
struct Harness {
    engine: Engine,
    decisions: Decisions,
    store: Arc<MemoryStore>,
    prober: Arc<Switch>,
    clock: tranche_actors::Clock,
}

async fn harness(patch: PolicyPatch, primary_up: bool, panic_once: bool) -> Harness {
    let clock = tokio_clock(DateTime::from_timestamp(1_800_000_000, 0).unwrap());
    let policy = PolicyParams::new(PolicyKind::HttpAvailability, &patch).unwrap();
    let decisions: Decisions = Arc::default();
    let store = Arc::new(MemoryStore {
        spec: spec(policy),
        decisions: decisions.clone(),
        panic_once: AtomicBool::new(panic_once),
        loads: Default::default(),
    });
    let prober = Arc::new(Switch {
        primary_up: AtomicBool::new(primary_up),
        backup_up: AtomicBool::new(true),
        clock: clock.clone(),
    });
    let mut config = EngineConfig::new("paused-node");
    config.clock = clock.clone();
    let engine = Engine::start(RootArgs {
        config,
        store: store.clone(),
        leases: Arc::new(AllShards),
        prober: prober.clone(),
        dns: None,
        billing: None,
        usage: None,
        verify: None,
        webhooks: None,
        vantages: None,
        slos: None,
    })
    .await
    .unwrap();
    Harness {
        engine,
        decisions,
        store,
        prober,
        clock,
    }
}

#[tokio::test(start_paused = true)]
async fn storm_timing_is_exact_on_paused_time() {
    let Harness {
        engine,
        decisions,
        prober,
        clock,
        ..
    } = harness(
        PolicyPatch {
            threshold_avail: Some("0.9".parse().unwrap()),
            window_seconds: Some(10),
            probe_interval_seconds: Some(1),
            min_samples: Some(3),
            cooldown_seconds: Some(5),
            consecutive_failures: Some(2),
            ..Default::default()
        },
        true,
        false,
    )
    .await;

    // Healthy for 20 s: no decision.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(decisions.lock().unwrap().is_empty());
    assert_eq!(engine.running_domains().await, vec![7]);

    // The backup fails alone: a visible non-event for the storm machine.
    prober.backup_up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        decisions.lock().unwrap().is_empty(),
        "backup-only failure decided something"
    );
    prober.backup_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Primary fails: with 10 samples per window, the second failure takes availability to
    // 8/10 < 0.9, and is the second in a row the policy asks for. The storm is decided at the
    // second failed probe: within 2 intervals.
    let broke = clock();
    prober.primary_up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let storm = decisions
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("storm decided");
    assert_eq!(
        (storm.state, storm.weights, storm.storm),
        (
            StormState::Storm,
            Weights::FAILOVER,
            Some(StormChange::Opened)
        )
    );
    let detection = storm.at - broke;
    assert!(
        detection <= chrono::Duration::seconds(2),
        "detected after {detection}"
    );
    assert!(
        detection > chrono::Duration::seconds(1),
        "one failure (9/10 = threshold) is not a storm: {detection}"
    );

    // Repair at R. The window (10 samples) is healthy again once at most one failure is left in
    // it: when the second-to-last failure (about R - 1 s) leaves, at about R + 9 s, minus the
    // phase of the probes within the second. Then the 5 s cooldown → recovering at R + 13..15 s;
    // then one ramp step per interval; then closed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let repaired = clock();
    prober.primary_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let all = decisions.lock().unwrap().clone();
    let after: Vec<&Decision> = all.iter().skip(1).collect();
    let summary: Vec<(StormState, Weights)> = after.iter().map(|d| (d.state, d.weights)).collect();
    assert_eq!(
        summary,
        vec![
            (StormState::Recovering, Weights::new(25)),
            (StormState::Recovering, Weights::new(50)),
            (StormState::Healthy, Weights::NORMAL),
        ]
    );
    let recovering = after[0].at - repaired;
    assert!(
        recovering >= chrono::Duration::seconds(13) && recovering <= chrono::Duration::seconds(15),
        "recovering after {recovering}"
    );
    assert_eq!(after[1].at - after[0].at, chrono::Duration::seconds(1));
    assert_eq!(after[2].at - after[1].at, chrono::Duration::seconds(1));
    assert_eq!(after[2].storm, Some(StormChange::Closed));
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_domain_actor_is_restarted_from_the_store() {
    let Harness {
        engine,
        decisions,
        store,
        ..
    } = harness(
        PolicyPatch {
            window_seconds: Some(5),
            probe_interval_seconds: Some(1),
            min_samples: Some(3),
            ..Default::default()
        },
        false,
        true,
    )
    .await;
    // The first storm decision panics inside the actor; the supervisor restarts it, the new
    // actor reloads its (still healthy) state from the store and decides again.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let all = decisions.lock().unwrap().clone();
    let opened = all
        .iter()
        .filter(|d| d.storm == Some(StormChange::Opened))
        .count();
    assert_eq!(opened, 1, "{all:?}");
    assert_eq!(
        all.last().map(|d| d.state),
        Some(StormState::Storm),
        "{all:?}"
    );
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        1,
        "the restarted actor reloaded its state"
    );
    assert_eq!(engine.running_domains().await, vec![7]);
    engine.shutdown().await;
}
