//! The engine's database port over PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::{FromRow, PgPool};
use tranche_actors::domain::{
    ExpectedStatuses, PolicyKind, PolicyParams, ProbePath, ProbeScheme, ProbeTarget,
};
use tranche_actors::engine::ports::{
    DomainSpec, EngineStore, Fence, Observation, PersistedState, StoreError,
};
use tranche_actors::probe::Cdn;
use tranche_actors::storm::{Decision, StormChange, StormState, Weights};

pub struct PgEngineStore {
    pool: PgPool,
}

impl PgEngineStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn other(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.to_string())
}

#[derive(FromRow)]
struct SpecRow {
    id: i64,
    service_id: i64,
    customer_id: i64,
    hostname: String,
    shard: i16,
    primary_target: Option<String>,
    backup_target: Option<String>,
    probe_scheme: String,
    probe_path: String,
    expected_statuses: String,
    probe_timeout_ms: i32,
    threshold_avail: Option<Decimal>,
    window_seconds: Option<i32>,
    cooldown_seconds: Option<i32>,
    max_coverage_factor: Option<Decimal>,
    probe_interval_seconds: Option<i32>,
    min_samples: Option<i32>,
    state: Option<String>,
    state_since: Option<DateTime<Utc>>,
    desired_primary_weight: Option<i16>,
}

impl SpecRow {
    /// Parses the row; stored values were validated on the way in, so a failure here means the
    /// row was edited by hand: the domain is skipped (and logged) rather than probed wrongly.
    fn parse(self) -> Result<(DomainSpec, Option<PersistedState>), String> {
        let target = |t: &Option<String>| {
            t.as_deref()
                .map(ProbeTarget::parse)
                .transpose()
                .map_err(|e| e.to_string())
        };
        let policy = match self.threshold_avail {
            Some(threshold_avail) => PolicyParams {
                kind: PolicyKind::HttpAvailability,
                threshold_avail,
                window_seconds: self.window_seconds.unwrap_or(60),
                cooldown_seconds: self.cooldown_seconds.unwrap_or(300),
                max_coverage_factor: self.max_coverage_factor.unwrap_or(Decimal::ONE),
                probe_interval_seconds: self.probe_interval_seconds.unwrap_or(10),
                min_samples: self.min_samples.unwrap_or(3),
            },
            None => PolicyParams::defaults(PolicyKind::HttpAvailability),
        };
        let spec = DomainSpec {
            id: self.id,
            service_id: self.service_id,
            customer_id: self.customer_id,
            hostname: self.hostname,
            shard: self.shard as u16,
            primary_target: target(&self.primary_target)?,
            backup_target: target(&self.backup_target)?,
            scheme: ProbeScheme::parse(&self.probe_scheme).map_err(|e| e.to_string())?,
            path: ProbePath::parse(&self.probe_path).map_err(|e| e.to_string())?,
            expected: ExpectedStatuses::parse(&self.expected_statuses)
                .map_err(|e| e.to_string())?,
            timeout: Duration::from_millis(self.probe_timeout_ms.max(1) as u64),
            policy,
        };
        let persisted = match (
            self.state.as_deref().and_then(StormState::parse),
            self.state_since,
            self.desired_primary_weight,
        ) {
            (Some(state), Some(since), Some(primary)) => Some(PersistedState {
                state,
                since,
                weights: Weights::new(primary.clamp(0, 100) as u8),
            }),
            _ => None,
        };
        Ok((spec, persisted))
    }
}

#[async_trait::async_trait]
impl EngineStore for PgEngineStore {
    async fn domains_on_shards(
        &self,
        shards: &[u16],
    ) -> Result<Vec<(DomainSpec, Option<PersistedState>)>, StoreError> {
        let shards: Vec<i16> = shards.iter().map(|s| *s as i16).collect();
        let rows: Vec<SpecRow> = sqlx::query_as(
            "select d.id, d.service_id, s.customer_id, d.hostname, d.shard, d.primary_target,
                    d.backup_target, d.probe_scheme, d.probe_path, d.expected_statuses,
                    d.probe_timeout_ms,
                    p.threshold_avail, p.window_seconds, p.cooldown_seconds, p.max_coverage_factor,
                    p.probe_interval_seconds, p.min_samples,
                    st.state, st.state_since, st.desired_primary_weight
               from service_domains d
               join services s on s.id = d.service_id
               left join storm_policies p on p.service_id = s.id and p.kind = 'http_availability'
               left join domain_states st on st.domain_id = d.id
              where d.deleted_at is null and s.deleted_at is null and d.shard = any($1)",
        )
        .bind(&shards)
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let id = row.id;
                row.parse()
                    .map_err(|e| tracing::error!(domain.id = id, error = %e, "stored domain is invalid; not probing it"))
                    .ok()
            })
            .collect())
    }

    async fn load_state(&self, domain_id: i64) -> Result<Option<PersistedState>, StoreError> {
        let row: Option<(String, DateTime<Utc>, i16)> = sqlx::query_as(
            "select state, state_since, desired_primary_weight from domain_states where domain_id = $1",
        )
        .bind(domain_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.and_then(|(state, since, primary)| {
            Some(PersistedState {
                state: StormState::parse(&state)?,
                since,
                weights: Weights::new(primary.clamp(0, 100) as u8),
            })
        }))
    }

    async fn commit_decision(
        &self,
        spec: &DomainSpec,
        d: &Decision,
        fence: Fence,
        node_id: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(other)?;
        // Fencing: the lease row is share-locked until commit, so the epoch cannot move on
        // between this check and our writes (a new owner's bump waits for us, then wins).
        let epoch: Option<i64> =
            sqlx::query_scalar("select epoch from shard_leases where shard = $1 for share")
                .bind(fence.shard as i16)
                .fetch_optional(&mut *tx)
                .await
                .map_err(other)?;
        if epoch != Some(fence.epoch) {
            return Err(StoreError::Fenced {
                shard: fence.shard,
                epoch: fence.epoch,
            });
        }
        sqlx::query(
            "insert into domain_states as st (domain_id, state, state_since, desired_primary_weight,
                    desired_backup_weight, trigger_primary_avail, trigger_backup_avail, decided_by_node)
             values ($1, $2, $3, $4, $5, $6, $7, $8)
             on conflict (domain_id) do update set
                 state = excluded.state,
                 state_since = case when st.state = excluded.state then st.state_since else excluded.state_since end,
                 desired_primary_weight = excluded.desired_primary_weight,
                 desired_backup_weight = excluded.desired_backup_weight,
                 trigger_primary_avail = excluded.trigger_primary_avail,
                 trigger_backup_avail = excluded.trigger_backup_avail,
                 decided_by_node = excluded.decided_by_node",
        )
        .bind(spec.id)
        .bind(d.state.as_str())
        .bind(d.at)
        .bind(i16::from(d.weights.primary))
        .bind(i16::from(d.weights.backup))
        .bind(d.primary.ratio())
        .bind(d.backup.ratio())
        .bind(node_id)
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        let kind = spec.policy.kind.as_str();
        match d.storm {
            Some(StormChange::Opened) => {
                let trigger = json!({
                    "primary_availability": d.primary.ratio(),
                    "primary_attempts": d.primary.attempts(),
                    "backup_availability": d.backup.ratio(),
                    "backup_attempts": d.backup.attempts(),
                    "threshold_avail": spec.policy.threshold_avail,
                    "window_seconds": spec.policy.window_seconds,
                    "from_state": d.previous.as_str(),
                });
                // Idempotent: if a storm is already open (a retried commit), keep that one.
                sqlx::query(
                    "insert into storm_events (service_id, domain_id, kind, started_at, trigger, opened_by_node)
                     values ($1, $2, $3, $4, $5, $6)
                     on conflict (domain_id, kind) where ended_at is null do nothing",
                )
                .bind(spec.service_id)
                .bind(spec.id)
                .bind(kind)
                .bind(d.at)
                .bind(trigger)
                .bind(node_id)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            Some(StormChange::Closed) => {
                sqlx::query(
                    "update storm_events
                        set ended_at = greatest($3, started_at), closed_by_node = $4,
                            trigger = trigger || jsonb_build_object('closing_primary_availability', $5::numeric)
                      where domain_id = $1 and kind = $2 and ended_at is null",
                )
                .bind(spec.id)
                .bind(kind)
                .bind(d.at)
                .bind(node_id)
                .bind(d.primary.ratio())
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            None => {}
        }
        tx.commit().await.map_err(other)
    }

    async fn write_observations(
        &self,
        node_id: &str,
        batch: &[Observation],
    ) -> Result<(), StoreError> {
        #[derive(Default)]
        struct Minute {
            attempts: i32,
            successes: i32,
            latency_sum: i64,
            latency_max: i32,
        }
        let mut minutes: HashMap<(i64, Cdn, DateTime<Utc>), Minute> = HashMap::new();
        let mut latest: HashMap<(i64, Cdn), &Observation> = HashMap::new();
        for o in batch {
            let minute = o.at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(o.at);
            let m = minutes.entry((o.domain_id, o.cdn, minute)).or_default();
            m.attempts += 1;
            m.successes += i32::from(o.outcome == tranche_actors::probe::Outcome::Ok);
            m.latency_sum += i64::from(o.latency_ms);
            m.latency_max = m.latency_max.max(o.latency_ms.min(i32::MAX as u32) as i32);
            let slot = latest.entry((o.domain_id, o.cdn)).or_insert(o);
            if o.at >= slot.at {
                *slot = o;
            }
        }
        let mut ids = Vec::with_capacity(minutes.len());
        let mut cdns = Vec::with_capacity(minutes.len());
        let mut starts = Vec::with_capacity(minutes.len());
        let mut attempts = Vec::with_capacity(minutes.len());
        let mut successes = Vec::with_capacity(minutes.len());
        let mut sums = Vec::with_capacity(minutes.len());
        let mut maxes = Vec::with_capacity(minutes.len());
        for ((id, cdn, minute), m) in minutes {
            ids.push(id);
            cdns.push(cdn.as_str());
            starts.push(minute);
            attempts.push(m.attempts);
            successes.push(m.successes);
            sums.push(m.latency_sum);
            maxes.push(m.latency_max);
        }
        let mut tx = self.pool.begin().await.map_err(other)?;
        // Domains deleted meanwhile are skipped by the join instead of failing the batch.
        sqlx::query(
            "insert into probe_minutes (domain_id, cdn, minute, attempts, successes, latency_sum_ms, latency_max_ms)
             select b.* from unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::int[], $5::int[], $6::bigint[], $7::int[])
                    as b(domain_id, cdn, minute, attempts, successes, latency_sum_ms, latency_max_ms)
               join service_domains d on d.id = b.domain_id
             on conflict (domain_id, cdn, minute) do update set
                 attempts = probe_minutes.attempts + excluded.attempts,
                 successes = probe_minutes.successes + excluded.successes,
                 latency_sum_ms = probe_minutes.latency_sum_ms + excluded.latency_sum_ms,
                 latency_max_ms = greatest(probe_minutes.latency_max_ms, excluded.latency_max_ms)",
        )
        .bind(&ids)
        .bind(&cdns)
        .bind(&starts)
        .bind(&attempts)
        .bind(&successes)
        .bind(&sums)
        .bind(&maxes)
        .execute(&mut *tx)
        .await
        .map_err(other)?;

        let mut per_domain: HashMap<i64, (Option<&Observation>, Option<&Observation>)> =
            HashMap::new();
        for ((id, cdn), o) in latest {
            let slot = per_domain.entry(id).or_default();
            match cdn {
                Cdn::Primary => slot.0 = Some(o),
                Cdn::Backup => slot.1 = Some(o),
            }
        }
        let describe = |o: Option<&Observation>| {
            o.map(|o| {
                json!({
                    "at": o.at, "outcome": o.outcome.as_str(), "status": o.status,
                    "latency_ms": o.latency_ms, "error": o.error, "cert_expires_at": o.cert_expires_at,
                })
            })
        };
        let mut dids = Vec::new();
        let mut at = Vec::new();
        let (mut pa, mut ba, mut pl, mut bl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, (p, b)) in per_domain {
            dids.push(id);
            at.push(
                p.iter()
                    .chain(b.iter())
                    .map(|o| o.at)
                    .max()
                    .unwrap_or_else(Utc::now),
            );
            pa.push(p.and_then(|o| o.availability));
            ba.push(b.and_then(|o| o.availability));
            pl.push(describe(p));
            bl.push(describe(b));
        }
        sqlx::query(
            "insert into domain_observations as o (domain_id, node_id, observed_at, primary_avail, backup_avail, primary_last, backup_last)
             select b.domain_id, $2, b.at, b.pa, b.ba, b.pl, b.bl
               from unnest($1::bigint[], $3::timestamptz[], $4::numeric[], $5::numeric[], $6::jsonb[], $7::jsonb[])
                    as b(domain_id, at, pa, ba, pl, bl)
               join service_domains d on d.id = b.domain_id
             on conflict (domain_id) do update set
                 node_id = excluded.node_id,
                 observed_at = greatest(o.observed_at, excluded.observed_at),
                 primary_avail = coalesce(excluded.primary_avail, case when excluded.primary_last is null then o.primary_avail end),
                 backup_avail = coalesce(excluded.backup_avail, case when excluded.backup_last is null then o.backup_avail end),
                 primary_last = coalesce(excluded.primary_last, o.primary_last),
                 backup_last = coalesce(excluded.backup_last, o.backup_last)",
        )
        .bind(&dids)
        .bind(node_id)
        .bind(&at)
        .bind(&pa)
        .bind(&ba)
        .bind(&pl)
        .bind(&bl)
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        tx.commit().await.map_err(other)
    }

    async fn prune_observations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        sqlx::query("delete from probe_minutes where minute < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(other)
    }
}
