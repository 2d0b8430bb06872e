//! Fencing and lease loss against the real database: a node that lost its shard cannot commit a
//! storm decision, and a node whose lease connection dies drops and re-acquires its shards.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tranche::postgres::engine_store::PgEngineStore;
use tranche::postgres::leases::PgLeaseBackend;
use tranche::prober::NetworkProber;
use tranche_actors::ports::{EngineStore, Fence, LeaseBackend, StoreError};
use tranche_core::storm::{
    Availability, CdnHealth, Decision, StormChange, StormState, Streak, Weights,
};

use crate::helpers::{Auth, eventually, spawn_app};

const DEMO: Auth = Auth::Header(1);

fn storm_decision() -> Decision {
    Decision {
        at: Utc::now(),
        previous: StormState::Healthy,
        state: StormState::Storm,
        weights: Weights::FAILOVER,
        storm: Some(StormChange::Opened),
        primary_failing_since: None,
        primary: CdnHealth::new(
            Availability::Known {
                successes: 0,
                attempts: 5,
            },
            Streak::failing(3),
        )
        .into(),
        backup: CdnHealth::new(
            Availability::Known {
                successes: 5,
                attempts: 5,
            },
            Streak::succeeding(5),
        )
        .into(),
    }
}

#[tokio::test]
async fn a_deposed_node_cannot_open_a_storm() {
    let app = spawn_app().await;
    let service = app.create_service(&DEMO, "web").await;
    app.post(&format!("/v1/services/{service}/domains"), &DEMO, json!({ "name": "app.example.test", "primary_target": "192.0.2.1", "backup_target": "192.0.2.2" }))
        .await
        .expect(201);
    let store = PgEngineStore::new(app.pool.clone());
    let all: Vec<u16> = (0..256).collect();
    let (spec, _) = store.domains_on_shards(&all).await.unwrap().pop().unwrap();

    // Node A takes the shard (epoch 1); node B takes it over (epoch 2) after A's session ended.
    let a = PgLeaseBackend::new(app.pool.clone(), "default");
    let epoch_a = a.try_acquire("node-a", spec.shard).await.unwrap().unwrap();
    a.reset().await;
    let b = PgLeaseBackend::new(app.pool.clone(), "default");
    // The server frees A's locks when its backend has exited, a moment after the close.
    let epoch_b = eventually("A's lock freed", Duration::from_secs(10), || async {
        b.try_acquire("node-b", spec.shard).await.unwrap()
    })
    .await;
    assert!(epoch_b > epoch_a);

    // A, stalled, still believes it owns the shard: its decision is refused and nothing is written.
    let stale = store
        .commit_decision(
            &spec,
            &storm_decision(),
            None,
            Fence {
                shard: spec.shard,
                epoch: epoch_a,
            },
            "node-a",
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    let storms: i64 = sqlx::query_scalar("select count(*) from storm_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let states: i64 = sqlx::query_scalar("select count(*) from domain_states")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((storms, states), (0, 0));

    // B, the owner, commits; a retried commit does not open a second storm.
    let fence = Fence {
        shard: spec.shard,
        epoch: epoch_b,
    };
    store
        .commit_decision(&spec, &storm_decision(), None, fence, "node-b")
        .await
        .unwrap();
    store
        .commit_decision(&spec, &storm_decision(), None, fence, "node-b")
        .await
        .unwrap();
    let (open, by): (i64, Option<String>) = sqlx::query_as(
        "select count(*), max(opened_by_node) from storm_events where ended_at is null",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((open, by.as_deref()), (1, Some("node-b")));
    let (state, primary): (String, i16) = sqlx::query_as(
        "select state, desired_primary_weight from domain_states where domain_id = $1",
    )
    .bind(spec.id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), primary), ("storm", 0));
}

#[tokio::test]
async fn losing_the_lease_connection_drops_and_reacquires_every_shard() {
    let mut app = spawn_app().await;
    app.start_engine(std::sync::Arc::new(NetworkProber::new(&[], true).unwrap()))
        .await;
    let engine = app.engine.as_ref().unwrap().engine.clone();
    let before = eventually("all shards owned", Duration::from_secs(10), || async {
        let owned = engine.owned_shards().await;
        (owned.len() == 256).then_some(owned)
    })
    .await;
    // Kill the node's lease session from the outside, as a network failure would.
    let killed: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(backend_pid) from cluster_nodes) t",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    // The node notices on its next tick, drops everything, and re-acquires on a fresh
    // connection: every shard comes back under a new fencing epoch.
    eventually(
        "shards re-acquired under new epochs",
        Duration::from_secs(10),
        || async {
            let owned = engine.owned_shards().await;
            (owned.len() == 256
                && owned
                    .iter()
                    .all(|(s, e)| before.get(s).is_some_and(|old| e > old)))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn old_probe_aggregates_are_pruned() {
    let app = spawn_app().await;
    let service = app.create_service(&DEMO, "web").await;
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &DEMO,
            json!({ "name": "app.example.test" }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    sqlx::query(
        "insert into probe_minutes (domain_id, cdn, minute, attempts, successes, latency_sum_ms, latency_max_ms)
         values ($1, 'primary', now() - interval '8 days', 6, 6, 60, 12),
                ($1, 'primary', date_trunc('minute', now()), 6, 5, 60, 12)",
    )
    .bind(domain)
    .execute(&app.pool)
    .await
    .unwrap();
    let store = PgEngineStore::new(app.pool.clone());
    let pruned = store
        .prune_observations(Utc::now() - chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: i64 = sqlx::query_scalar("select count(*) from probe_minutes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
}
