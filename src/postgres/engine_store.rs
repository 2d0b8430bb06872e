//! The engine's database port over PostgreSQL.

use super::outbox::{NewEvent, emit};
use super::{port_error, timestamp};
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::{FromRow, PgPool};
use tranche_actors::ports::{
    Disagreement, DnsStore, DomainSpec, EngineStore, Fence, Observation, OrphanedChange,
    PersistedState, StoreError, VantageViews,
};
use tranche_core::dns::planner::{Batch, RecordChange, RecordType};
use tranche_core::domain::{
    ExpectedStatuses, Invalid, PolicyKind, PolicyParams, ProbePath, ProbeScheme, ProbeTarget,
    TargetHost,
};
use tranche_core::events::{
    DnsOutcome, EventType, certificate_expiring, dns_change_event, drill_event, state_event,
};
use tranche_core::observations::VantageView;
use tranche_core::observations::{Minute, aggregate};
use tranche_core::storm::{Decision, StormChange, StormState, Vantages, Weights, views};

/// Every vantage's view of both CDNs, as stored in `domain_states.vantages`,
/// `domain_observations.vantages` and storm triggers: `[{vantage, node_id,
/// primary_availability, backup_availability, primary_down, backup_down}]` (availabilities as
/// decimal strings, null while unknown).
fn views_json(views: &[VantageView]) -> serde_json::Value {
    views
        .iter()
        .map(|v| {
            json!({
                "vantage": v.vantage,
                "node_id": v.node_id,
                "primary_availability": v.primary,
                "backup_availability": v.backup,
                "primary_down": v.primary_down,
                "backup_down": v.backup_down,
            })
        })
        .collect()
}

fn vantage_views(
    primary: &Vantages,
    backup: &Vantages,
    policy: &PolicyParams,
) -> serde_json::Value {
    views_json(&views(primary, backup, policy))
}

pub struct PgEngineStore {
    pool: PgPool,
}

impl PgEngineStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(FromRow)]
struct SpecRow {
    id: i64,
    service_id: i64,
    customer_id: i64,
    hostname: String,
    dns_zone: Option<String>,
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
    consecutive_failures: Option<i32>,
    consecutive_successes: Option<i32>,
    quorum: Option<String>,
    state: Option<String>,
    state_since: Option<DateTime<Utc>>,
    desired_primary_weight: Option<i16>,
    drill_until: Option<DateTime<Utc>>,
    maintenance_starts: Option<Vec<DateTime<Utc>>>,
    maintenance_ends: Option<Vec<DateTime<Utc>>>,
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
        // The service's `http_availability` policy (a left join: every column is set when the
        // row exists), or the defaults when it has none.
        let policy = match (
            self.threshold_avail,
            self.window_seconds,
            self.cooldown_seconds,
            self.max_coverage_factor,
            self.probe_interval_seconds,
            self.min_samples,
            self.consecutive_failures,
            self.consecutive_successes,
            self.quorum.as_deref(),
        ) {
            (Some(t), Some(w), Some(c), Some(m), Some(p), Some(n), Some(f), Some(k), Some(q)) => {
                PolicyParams {
                    kind: PolicyKind::HttpAvailability,
                    threshold_avail: t,
                    window_seconds: w,
                    cooldown_seconds: c,
                    max_coverage_factor: m,
                    probe_interval_seconds: p,
                    min_samples: n,
                    consecutive_failures: f,
                    consecutive_successes: k,
                    quorum: q.parse().map_err(|e: Invalid| e.to_string())?,
                }
            }
            (None, None, None, None, None, None, None, None, None) => {
                PolicyParams::defaults(PolicyKind::HttpAvailability)
            }
            _ => return Err("the storm policy row has a null column".into()),
        };
        let spec = DomainSpec {
            id: self.id,
            service_id: self.service_id,
            customer_id: self.customer_id,
            zone: self.dns_zone.unwrap_or_else(|| self.hostname.clone()),
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
            drill_until: self.drill_until,
            maintenance: self
                .maintenance_starts
                .unwrap_or_default()
                .into_iter()
                .zip(self.maintenance_ends.unwrap_or_default())
                .collect(),
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
            "select d.id, d.service_id, s.customer_id, d.hostname, d.dns_zone, d.shard, d.primary_target,
                    d.backup_target, d.probe_scheme, d.probe_path, d.expected_statuses,
                    d.probe_timeout_ms,
                    p.threshold_avail, p.window_seconds, p.cooldown_seconds, p.max_coverage_factor,
                    p.probe_interval_seconds, p.min_samples, p.consecutive_failures,
                    p.consecutive_successes, p.quorum,
                    st.state, st.state_since, st.desired_primary_weight,
                    (select dr.ends_at from drills dr
                      where dr.domain_id = d.id and dr.finished_at is null
                      order by dr.requested_at desc limit 1) as drill_until,
                    mw.maintenance_starts, mw.maintenance_ends
               from service_domains d
               join services s on s.id = d.service_id
               left join storm_policies p on p.service_id = s.id and p.kind = 'http_availability'
               left join domain_states st on st.domain_id = d.id
               left join lateral (
                    select array_agg(m.starts_at order by m.id) as maintenance_starts,
                           array_agg(m.ends_at order by m.id) as maintenance_ends
                      from maintenance_windows m
                     where m.service_id = d.service_id and (m.domain_id is null or m.domain_id = d.id)
                       and m.cancelled_at is null and m.ends_at > now()
               ) mw on true
              where d.deleted_at is null and s.deleted_at is null and d.shard = any($1)",
        )
        .bind(&shards)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
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
        .map_err(port_error)?;
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
        reason: Option<&str>,
        fence: Fence,
        node_id: &str,
    ) -> Result<(), StoreError> {
        let views = vantage_views(&d.primary, &d.backup, &spec.policy);
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        check_fence(&mut tx, fence).await?;
        // The state it replaces (read in the statement's snapshot) decides the announcement.
        let (previous, since): (Option<String>, DateTime<Utc>) = sqlx::query_as(
            "with prev as (select state from domain_states where domain_id = $1)
             insert into domain_states as st (domain_id, state, state_since, desired_primary_weight,
                    desired_backup_weight, trigger_primary_avail, trigger_backup_avail, decided_by_node,
                    state_reason, vantages)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             on conflict (domain_id) do update set
                 state = excluded.state,
                 state_since = case when st.state = excluded.state then st.state_since else excluded.state_since end,
                 desired_primary_weight = excluded.desired_primary_weight,
                 desired_backup_weight = excluded.desired_backup_weight,
                 trigger_primary_avail = excluded.trigger_primary_avail,
                 trigger_backup_avail = excluded.trigger_backup_avail,
                 decided_by_node = excluded.decided_by_node,
                 state_reason = excluded.state_reason,
                 vantages = excluded.vantages
             returning (select state from prev), state_since",
        )
        .bind(spec.id)
        .bind(d.state.as_str())
        .bind(d.at)
        .bind(i16::from(d.weights.primary))
        .bind(i16::from(d.weights.backup))
        .bind(d.primary.availability())
        .bind(d.backup.availability())
        .bind(node_id)
        .bind(reason)
        .bind(&views)
        .fetch_one(&mut *tx)
        .await
        .map_err(port_error)?;
        let mut events = Vec::new();
        let previous = previous.as_deref().and_then(StormState::parse);
        let about = |more: serde_json::Value| {
            let mut payload = json!({
                "service_id": spec.service_id, "domain_id": spec.id, "domain": spec.hostname,
            });
            if let (Some(p), serde_json::Value::Object(m)) = (payload.as_object_mut(), more) {
                p.extend(m);
            }
            payload
        };
        match state_event(previous, d.state) {
            Some(kind @ EventType::StormBackupUnhealthy) => {
                events.push(NewEvent::new(
                    spec.customer_id,
                    kind,
                    about(json!({
                        "since": timestamp(since),
                        "primary_availability": d.primary.availability().map(|r| r.to_string()),
                        "backup_availability": d.backup.availability().map(|r| r.to_string()),
                    })),
                ));
            }
            Some(kind) => {
                events.push(NewEvent::new(
                    spec.customer_id,
                    kind,
                    about(json!({
                        "since": timestamp(since),
                        "reason": reason.unwrap_or("unknown"),
                    })),
                ));
            }
            None => {}
        }
        if let Some(kind) = drill_event(previous, d.state) {
            events.push(drill_transition(&mut tx, spec, d, kind, about(json!({}))).await?);
        }
        let kind = spec.policy.kind.as_str();
        match d.storm {
            Some(StormChange::Opened) => {
                // Ratios as decimal strings (`Decimal` serializes as one), counts as integers.
                // The availabilities are the quorum's (the median of the known vantages); the
                // counts are the decider's own; `vantages` has every vantage's view.
                let own = |v: &Vantages| v.own().copied();
                let trigger = json!({
                    "primary_availability": d.primary.availability(),
                    "primary_attempts": own(&d.primary).map_or(0, |h| h.availability.attempts()),
                    "primary_consecutive_failures": own(&d.primary).map_or(0, |h| h.streak.failures()),
                    "backup_availability": d.backup.availability(),
                    "backup_attempts": own(&d.backup).map_or(0, |h| h.availability.attempts()),
                    "quorum": spec.policy.quorum.as_str(),
                    "vantages": views,
                    "threshold_avail": spec.policy.threshold_avail,
                    "window_seconds": spec.policy.window_seconds,
                    "consecutive_failures": spec.policy.consecutive_failures,
                    "from_state": d.previous.as_str(),
                    "primary_failing_since": d.primary_failing_since.map(timestamp),
                });
                // Idempotent: if a storm is already open (a retried commit), keep that one.
                let opened: Option<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
                    "insert into storm_events (service_id, domain_id, kind, started_at, trigger, opened_by_node)
                     values ($1, $2, $3, $4, $5, $6)
                     on conflict (domain_id, kind) where ended_at is null do nothing
                     returning id, started_at",
                )
                .bind(spec.service_id)
                .bind(spec.id)
                .bind(kind)
                .bind(d.at)
                .bind(&trigger)
                .bind(node_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(port_error)?;
                if let Some((storm_id, started_at)) = opened {
                    events.push(NewEvent::new(
                        spec.customer_id,
                        EventType::StormStarted,
                        about(json!({
                            "storm_id": storm_id, "kind": kind, "started_at": timestamp(started_at),
                            "trigger": trigger,
                        })),
                    ));
                }
            }
            Some(StormChange::Closed) => {
                let closed: Vec<(uuid::Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
                    "update storm_events
                        set ended_at = greatest($3, started_at), closed_by_node = $4,
                            trigger = trigger || jsonb_build_object('closing_primary_availability', $5::text)
                      where domain_id = $1 and kind = $2 and ended_at is null
                  returning id, started_at, ended_at",
                )
                .bind(spec.id)
                .bind(kind)
                .bind(d.at)
                .bind(node_id)
                .bind(d.primary.availability().map(|r| r.to_string()))
                .fetch_all(&mut *tx)
                .await
                .map_err(port_error)?;
                for (storm_id, started_at, ended_at) in closed {
                    events.push(NewEvent::new(
                        spec.customer_id,
                        EventType::StormEnded,
                        about(json!({
                            "storm_id": storm_id, "kind": kind, "started_at": timestamp(started_at),
                            "ended_at": timestamp(ended_at),
                        })),
                    ));
                }
            }
            None => {}
        }
        emit(&mut tx, &events).await.map_err(port_error)?;
        tx.commit().await.map_err(port_error)?;
        let m = &crate::metrics::METRICS;
        match d.storm {
            Some(StormChange::Opened) => {
                m.storms_opened.inc();
                if let Some(since) = d.primary_failing_since {
                    m.storm_detection_seconds
                        .observe((d.at - since).to_std().unwrap_or_default().as_secs_f64());
                }
            }
            Some(StormChange::Closed) => {
                m.storms_closed.inc();
            }
            None => {}
        }
        Ok(())
    }

    async fn record_disagreement(
        &self,
        spec: &DomainSpec,
        disagreeing: &[Disagreement],
        views: VantageViews<'_>,
        fence: Fence,
    ) -> Result<(), StoreError> {
        let views = vantage_views(views.primary, views.backup, &spec.policy);
        let now: Vec<serde_json::Value> = disagreeing
            .iter()
            .map(|d| json!({"vantage": d.vantage, "node_id": d.node_id, "cdn": d.cdn.as_str()}))
            .collect();
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        check_fence(&mut tx, fence).await?;
        // The previous set (read under the row lock) decides which vantages are new.
        let previous: Option<serde_json::Value> = sqlx::query_scalar(
            "select vantage_disagrees from domain_states where domain_id = $1 for update",
        )
        .bind(spec.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(port_error)?;
        let since = timestamp(Utc::now());
        let before: Vec<serde_json::Value> = previous
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let same = |a: &serde_json::Value, b: &serde_json::Value| {
            a["vantage"] == b["vantage"] && a["cdn"] == b["cdn"]
        };
        // Keep when each disagreement started.
        let stored: Vec<serde_json::Value> = now
            .iter()
            .map(|d| {
                let started = before
                    .iter()
                    .find(|b| same(b, d))
                    .map(|b| b["since"].clone())
                    .unwrap_or_else(|| json!(since));
                let mut d = d.clone();
                d["since"] = started;
                d
            })
            .collect();
        sqlx::query(
            "insert into domain_states (domain_id, vantage_disagrees, vantages) values ($1, $2, $3)
             on conflict (domain_id) do update
                set vantage_disagrees = excluded.vantage_disagrees, vantages = excluded.vantages",
        )
        .bind(spec.id)
        .bind(serde_json::Value::Array(stored.clone()))
        .bind(&views)
        .execute(&mut *tx)
        .await
        .map_err(port_error)?;
        let events: Vec<NewEvent> = stored
            .iter()
            .filter(|d| !before.iter().any(|b| same(b, d)))
            .map(|d| {
                NewEvent::new(
                    spec.customer_id,
                    EventType::VantageDisagrees,
                    json!({
                        "service_id": spec.service_id, "domain_id": spec.id, "domain": spec.hostname,
                        "vantage": d["vantage"], "node_id": d["node_id"], "cdn": d["cdn"],
                        "since": d["since"], "quorum": spec.policy.quorum.as_str(), "vantages": views,
                    }),
                )
            })
            .collect();
        emit(&mut tx, &events).await.map_err(port_error)?;
        tx.commit().await.map_err(port_error)
    }

    async fn step_applied(&self, domain_id: i64, weights: Weights) -> Result<bool, StoreError> {
        let row: Option<StepRow> = sqlx::query_as(
            "select d.steering_enabled and d.verification_status = 'verified' and d.dns_zone is not null
                        and d.deleted_at is null as steered,
                    d.primary_target, d.backup_target,
                    p.domain_id is not null as pinned,
                    r.applied_primary_weight as applied_primary,
                    coalesce(r.failed_at >= st.updated_at, false) as failed,
                    c.status as last_status
               from service_domains d
               left join domain_states st on st.domain_id = d.id
               left join dns_pins p on p.domain_id = d.id
               left join dns_records r on r.domain_id = d.id
               left join dns_changes c on c.id = r.last_change_id
              where d.id = $1",
        )
        .bind(domain_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(row.is_none_or(|r| r.in_effect(weights)))
    }

    async fn write_observations(
        &self,
        node_id: &str,
        batch: &[Observation],
    ) -> Result<(), StoreError> {
        let aggregate = aggregate(batch);
        let minutes = &aggregate.minutes;
        let column = |f: &dyn Fn(&Minute) -> i64| -> Vec<i64> { minutes.iter().map(f).collect() };
        let mut tx = self.pool.begin().await.map_err(port_error)?;
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
        .bind(column(&|m| m.domain_id))
        .bind(minutes.iter().map(|m| m.cdn.as_str()).collect::<Vec<_>>())
        .bind(minutes.iter().map(|m| m.minute).collect::<Vec<_>>())
        .bind(minutes.iter().map(|m| m.attempts).collect::<Vec<_>>())
        .bind(minutes.iter().map(|m| m.successes).collect::<Vec<_>>())
        .bind(column(&|m| m.latency_sum_ms))
        .bind(minutes.iter().map(|m| m.latency_max_ms).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(port_error)?;

        let describe = |o: Option<&Observation>| {
            o.map(|o| {
                json!({
                    "at": o.at, "outcome": o.outcome.as_str(), "status": o.status,
                    "latency_ms": o.latency_ms, "error": o.error, "cert_expires_at": o.cert_expires_at,
                })
            })
        };
        let latest = &aggregate.latest;
        sqlx::query(
            "insert into domain_observations as o (domain_id, node_id, observed_at, primary_avail, backup_avail, primary_last, backup_last, vantages)
             select b.domain_id, $2, b.at, b.pa, b.ba, b.pl, b.bl, b.v
               from unnest($1::bigint[], $3::timestamptz[], $4::numeric[], $5::numeric[], $6::jsonb[], $7::jsonb[], $8::jsonb[])
                    as b(domain_id, at, pa, ba, pl, bl, v)
               join service_domains d on d.id = b.domain_id
             on conflict (domain_id) do update set
                 node_id = excluded.node_id,
                 observed_at = greatest(o.observed_at, excluded.observed_at),
                 primary_avail = coalesce(excluded.primary_avail, case when excluded.primary_last is null then o.primary_avail end),
                 backup_avail = coalesce(excluded.backup_avail, case when excluded.backup_last is null then o.backup_avail end),
                 primary_last = coalesce(excluded.primary_last, o.primary_last),
                 backup_last = coalesce(excluded.backup_last, o.backup_last),
                 vantages = excluded.vantages",
        )
        .bind(latest.iter().map(|l| l.domain_id).collect::<Vec<_>>())
        .bind(node_id)
        .bind(latest.iter().map(|l| l.observed_at).collect::<Vec<_>>())
        .bind(latest.iter().map(|l| l.primary.and_then(|o| o.availability)).collect::<Vec<_>>())
        .bind(latest.iter().map(|l| l.backup.and_then(|o| o.availability)).collect::<Vec<_>>())
        .bind(latest.iter().map(|l| describe(l.primary)).collect::<Vec<_>>())
        .bind(latest.iter().map(|l| describe(l.backup)).collect::<Vec<_>>())
        .bind(
            latest
                .iter()
                .map(|l| l.vantages.map(views_json))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await
        .map_err(port_error)?;
        expiring_certificates(&mut tx, latest).await?;
        tx.commit().await.map_err(port_error)
    }

    async fn prune_observations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        sqlx::query("delete from probe_minutes where minute < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(port_error)
    }
}

/// Fencing: the lease row is share-locked until the transaction ends, so the epoch cannot move
/// on between this check and the caller's writes (a new owner's bump waits, then wins).
/// Fails with [`StoreError::Fenced`] unless `fence` is the shard's current epoch; the shared
/// row lock holds the epoch still until the transaction ends.
pub(crate) async fn check_fence(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    fence: Fence,
) -> Result<(), StoreError> {
    let epoch: Option<i64> =
        sqlx::query_scalar("select epoch from shard_leases where shard = $1 for share")
            .bind(fence.shard as i16)
            .fetch_optional(&mut **tx)
            .await
            .map_err(port_error)?;
    fence_holds(fence, epoch)
}

/// [`StoreError::Fenced`] unless `current` (the shard's epoch as read, share-locked) is the
/// fence's.
pub(crate) fn fence_holds(fence: Fence, current: Option<i64>) -> Result<(), StoreError> {
    if current == Some(fence.epoch) {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            shard: fence.shard,
            epoch: fence.epoch,
        })
    }
}

/// A drill row as a decision marks it.
#[derive(FromRow)]
struct DrillMark {
    id: uuid::Uuid,
    reason: String,
    ends_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
}

/// Records a drill starting (traffic moved) or ending (the domain left the drill) on its row,
/// and builds its event.
async fn drill_transition(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    spec: &DomainSpec,
    d: &Decision,
    kind: EventType,
    mut payload: serde_json::Value,
) -> Result<NewEvent, StoreError> {
    let row: Option<DrillMark> = if kind == EventType::DrillStarted {
        sqlx::query_as(
            "update drills set began_at = coalesce(began_at, $2)
                  where id = (select id from drills where domain_id = $1 and finished_at is null
                               order by requested_at desc limit 1)
              returning id, reason, ends_at, null::timestamptz as finished_at, null::text as outcome",
        )
        .bind(spec.id)
        .bind(d.at)
        .fetch_optional(&mut **tx)
        .await
        .map_err(port_error)?
    } else {
        // Ended by a real storm or a failing backup, by a cancellation, or on time.
        let outcome = match d.state {
            StormState::Storm => "storm",
            StormState::BackupUnhealthy => "backup_unhealthy",
            _ => "completed",
        };
        sqlx::query_as(
            "update drills set finished_at = $2,
                        outcome = case when $3 = 'completed' and cancelled_at is not null
                                       then 'cancelled' else $3 end
                  where id = (select id from drills where domain_id = $1 and finished_at is null
                               order by requested_at desc limit 1)
              returning id, reason, ends_at, finished_at, outcome",
        )
        .bind(spec.id)
        .bind(d.at)
        .bind(outcome)
        .fetch_optional(&mut **tx)
        .await
        .map_err(port_error)?
    };
    if let Some(p) = payload.as_object_mut() {
        match row {
            Some(DrillMark {
                id,
                reason,
                ends_at,
                finished_at,
                outcome,
            }) => {
                p.insert("drill_id".into(), json!(id));
                p.insert("reason".into(), json!(reason));
                p.insert("ends_at".into(), timestamp(ends_at));
                if kind == EventType::DrillEnded {
                    p.insert("finished_at".into(), json!(finished_at.map(timestamp)));
                    p.insert("outcome".into(), json!(outcome));
                }
            }
            // A domain restored in a drill whose row is gone (deleted with its service).
            None => {
                p.insert("drill_id".into(), serde_json::Value::Null);
            }
        }
        p.insert(
            "weights".into(),
            json!({ "primary": d.weights.primary, "backup": d.weights.backup }),
        );
    }
    Ok(NewEvent::new(spec.customer_id, kind, payload))
}

/// A change the provider confirmed (its row already marked `insync`): announces it and returns
/// the failover latencies it completes, to be observed once committed.
async fn now_in_sync(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    change: uuid::Uuid,
    attempt: i32,
) -> Result<Vec<f64>, StoreError> {
    emit_dns_change(tx, change, DnsOutcome::InSync, attempt).await?;
    failover_latencies(tx, change).await
}

fn observe_failovers(seconds: &[f64]) {
    for &s in seconds {
        crate::metrics::METRICS.failover_seconds.observe(s);
    }
}

/// Failover latency: for each domain this in-sync change moved away from its primary while a
/// storm of the domain is open, the time from the storm's start to now, if no earlier change
/// already put it in sync since that start (only the first move of a storm counts).
async fn failover_latencies(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    change: uuid::Uuid,
) -> Result<Vec<f64>, StoreError> {
    sqlx::query_scalar(
        "select distinct on (s.id) extract(epoch from c.insync_at - s.started_at)::float8
           from dns_changes c
          cross join lateral jsonb_array_elements(c.changes) ch
           join storm_events s on s.domain_id = (ch ->> 'domain_id')::int8 and s.ended_at is null
          where c.id = $1
            and (ch -> 'to' ->> 'primary')::int < coalesce((ch -> 'from' ->> 'primary')::int, 100)
            and s.started_at <= c.submitted_at
            and not exists (
                  select 1 from dns_changes e
                   where e.domain_ids @> array[s.domain_id] and e.id <> c.id
                     and e.status = 'insync' and e.submitted_at >= s.started_at)",
    )
    .bind(change)
    .fetch_all(&mut **tx)
    .await
    .map_err(port_error)
}

/// Announces edge certificates the batch saw expiring soon (the core's rule), once per domain,
/// CDN and expiry (`certificate_alerts` keeps what was announced).
async fn expiring_certificates(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    latest: &[tranche_core::observations::Latest<'_>],
) -> Result<(), StoreError> {
    let now = Utc::now();
    let mut candidates: (Vec<i64>, Vec<&str>, Vec<DateTime<Utc>>) = Default::default();
    for l in latest {
        for (cdn, o) in [("primary", l.primary), ("backup", l.backup)] {
            if let Some(expires) = o.and_then(|o| o.cert_expires_at)
                && certificate_expiring(expires, now).is_some()
            {
                candidates.0.push(l.domain_id);
                candidates.1.push(cdn);
                candidates.2.push(expires);
            }
        }
    }
    if candidates.0.is_empty() {
        return Ok(());
    }
    let fresh: Vec<(i64, String, DateTime<Utc>, i64, i64, String)> = sqlx::query_as(
        "with fresh as (
             insert into certificate_alerts (domain_id, cdn, expires_at)
             select b.domain_id, b.cdn, b.expires_at
               from unnest($1::int8[], $2::text[], $3::timestamptz[]) as b(domain_id, cdn, expires_at)
               join service_domains d on d.id = b.domain_id
             on conflict do nothing
             returning domain_id, cdn, expires_at
         )
         select f.domain_id, f.cdn, f.expires_at, s.customer_id, d.service_id, d.hostname
           from fresh f
           join service_domains d on d.id = f.domain_id
           join services s on s.id = d.service_id
          order by f.domain_id, f.cdn desc",
    )
    .bind(&candidates.0)
    .bind(&candidates.1)
    .bind(&candidates.2)
    .fetch_all(&mut **tx)
    .await
    .map_err(port_error)?;
    let events: Vec<NewEvent> = fresh
        .into_iter()
        .map(|(domain_id, cdn, expires, customer, service_id, host)| {
            NewEvent::new(
                customer,
                EventType::CertificateExpiring,
                json!({
                    "service_id": service_id, "domain_id": domain_id, "domain": host, "cdn": cdn,
                    "expires_at": timestamp(expires),
                    "days_left": certificate_expiring(expires, now).unwrap_or(0),
                }),
            )
        })
        .collect();
    emit(tx, &events).await.map_err(port_error)?;
    Ok(())
}

/// Announces a DNS change attempt's outcome when the core's rule says so: one event per
/// customer with domains in the change, listing only that customer's records.
async fn emit_dns_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    change: uuid::Uuid,
    outcome: DnsOutcome,
    attempt: i32,
) -> Result<(), StoreError> {
    let Some(kind) = dns_change_event(outcome, attempt) else {
        return Ok(());
    };
    let payloads: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "select s.customer_id,
                jsonb_build_object('change_id', c.id, 'zone', c.zone, 'provider', c.provider,
                    'changes', (select coalesce(jsonb_agg(x), '[]'::jsonb)
                                  from jsonb_array_elements(c.changes) x
                                 where (x->>'domain_id')::bigint in (
                                       select d2.id from service_domains d2
                                         join services s2 on s2.id = d2.service_id
                                        where s2.customer_id = s.customer_id)),
                    'error', c.error, 'attempt', c.attempt,
                    'will_retry', c.status = 'failed' and c.will_retry)
           from dns_changes c
           join service_domains d on d.id = any(c.domain_ids)
           join services s on s.id = d.service_id
          where c.id = $1
          group by s.customer_id, c.id
          order by s.customer_id",
    )
    .bind(change)
    .fetch_all(&mut **tx)
    .await
    .map_err(port_error)?;
    let events: Vec<NewEvent> = payloads
        .into_iter()
        .map(|(customer, payload)| NewEvent::new(customer, kind, payload))
        .collect();
    emit(tx, &events).await.map_err(port_error)?;
    Ok(())
}

/// The record type and value a probe target becomes in DNS.
fn record_of(target: &str) -> Option<(RecordType, String)> {
    let t = ProbeTarget::parse(target).ok()?;
    Some(match t.host {
        TargetHost::Name(h) => (RecordType::Cname, h.to_string()),
        TargetHost::Ip(ip @ std::net::IpAddr::V4(_)) => (RecordType::A, ip.to_string()),
        TargetHost::Ip(ip @ std::net::IpAddr::V6(_)) => (RecordType::Aaaa, ip.to_string()),
    })
}

/// What decides whether a domain's desired weights are in effect at the provider.
#[derive(FromRow)]
struct StepRow {
    steered: bool,
    primary_target: Option<String>,
    backup_target: Option<String>,
    pinned: bool,
    applied_primary: Option<i16>,
    failed: bool,
    last_status: Option<String>,
}

impl StepRow {
    /// In effect: applied and in sync — or nothing to wait for, because the zone actors do not
    /// steer this domain (not verified or steering off, targets missing or of different record
    /// types; the same rules as `pending_dns`), a pin overrides it, or its records were
    /// rejected for good.
    fn in_effect(&self, weights: Weights) -> bool {
        let types = |t: &Option<String>| t.as_deref().and_then(record_of).map(|(rt, _)| rt);
        let steered = self.steered && {
            let (p, b) = (types(&self.primary_target), types(&self.backup_target));
            p.is_some() && p == b
        };
        !steered
            || self.pinned
            || self.failed
            || (self.applied_primary == Some(i16::from(weights.primary))
                && self.last_status.as_deref() == Some("insync"))
    }
}

#[derive(FromRow)]
struct PendingRow {
    id: i64,
    hostname: String,
    primary_target: String,
    backup_target: String,
    desired_primary: i16,
    decided_at: DateTime<Utc>,
    applied_primary: Option<i16>,
    pinned: bool,
}

fn batch_json(batch: &Batch, storms: &HashMap<i64, uuid::Uuid>) -> serde_json::Value {
    let changes: Vec<serde_json::Value> = batch
        .changes
        .iter()
        .map(|c| {
            let reason = match c.applied {
                _ if c.pinned => "manual",
                None => "initial",
                Some(_) if c.is_failover() => "failover",
                Some(_) => "ramp",
            };
            json!({
                "domain_id": c.domain_id,
                "name": c.name,
                "type": c.rtype.as_str(),
                "from": c.applied.map(|w| json!({ "primary": w.primary, "backup": w.backup })),
                "to": { "primary": c.weights.primary, "backup": c.weights.backup },
                "reason": reason,
                "storm_id": storms.get(&c.domain_id),
            })
        })
        .collect();
    serde_json::Value::Array(changes)
}

#[async_trait::async_trait]
impl DnsStore for PgEngineStore {
    async fn zones_on_shards(&self, shards: &[u16]) -> Result<Vec<(String, u16)>, StoreError> {
        let shards: Vec<i16> = shards.iter().map(|s| *s as i16).collect();
        let rows: Vec<(String, i16)> = sqlx::query_as(
            "select distinct d.dns_zone, d.shard
               from service_domains d join services s on s.id = d.service_id
              where d.deleted_at is null and s.deleted_at is null and d.steering_enabled
                and d.verification_status = 'verified'
                and d.dns_zone is not null and d.shard = any($1)",
        )
        .bind(&shards)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows.into_iter().map(|(z, s)| (z, s as u16)).collect())
    }

    async fn pending_dns(&self, zone: &str) -> Result<Vec<RecordChange>, StoreError> {
        let rows: Vec<PendingRow> = sqlx::query_as(
            "select d.id, d.hostname, d.primary_target, d.backup_target,
                    coalesce(p.primary_weight, st.desired_primary_weight, 100::smallint) as desired_primary,
                    greatest(p.pinned_at, coalesce(st.updated_at, d.created_at)) as decided_at,
                    r.applied_primary_weight as applied_primary,
                    p.domain_id is not null as pinned
               from service_domains d
               join services s on s.id = d.service_id
               left join domain_states st on st.domain_id = d.id
               left join dns_pins p on p.domain_id = d.id
               left join dns_records r on r.domain_id = d.id
              where d.dns_zone = $1 and d.deleted_at is null and s.deleted_at is null
                and d.steering_enabled and d.verification_status = 'verified'
                and d.primary_target is not null and d.backup_target is not null
                and (r.applied_primary_weight is null
                     or r.applied_primary_weight
                        <> coalesce(p.primary_weight, st.desired_primary_weight, 100::smallint))
                and (r.failed_at is null
                     or r.failed_at < greatest(p.pinned_at, coalesce(st.updated_at, d.updated_at)))",
        )
        .bind(zone)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let (pt, pv) = record_of(&r.primary_target)?;
                let (bt, bv) = record_of(&r.backup_target)?;
                if pt != bt {
                    tracing::warn!(
                        domain.id = r.id,
                        "primary and backup targets need different record types; not steering"
                    );
                    return None;
                }
                Some(RecordChange {
                    domain_id: r.id,
                    name: r.hostname,
                    rtype: pt,
                    primary_value: pv,
                    backup_value: bv,
                    weights: Weights::new(r.desired_primary.clamp(0, 100) as u8),
                    applied: r
                        .applied_primary
                        .map(|p| Weights::new(p.clamp(0, 100) as u8)),
                    decided_at: r.decided_at,
                    pinned: r.pinned,
                })
            })
            .collect())
    }

    async fn dns_submitted(
        &self,
        zone: &str,
        provider: &str,
        batch: &Batch,
        attempt: i32,
        fence: Fence,
        node_id: &str,
    ) -> Result<String, StoreError> {
        let ids: Vec<i64> = batch.changes.iter().map(|c| c.domain_id).collect();
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        check_fence(&mut tx, fence).await?;
        let storms: HashMap<i64, uuid::Uuid> = sqlx::query_as::<_, (i64, uuid::Uuid)>(
            "select domain_id, id from storm_events where domain_id = any($1) and ended_at is null",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(port_error)?
        .into_iter()
        .collect();
        let id: uuid::Uuid = sqlx::query_scalar(
            "insert into dns_changes (zone, provider, domain_ids, changes, status, attempt, node_id)
             values ($1, $2, $3, $4, 'submitted', $5, $6) returning id",
        )
        .bind(zone)
        .bind(provider)
        .bind(&ids)
        .bind(batch_json(batch, &storms))
        .bind(attempt)
        .bind(node_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(port_error)?;
        tx.commit().await.map_err(port_error)?;
        Ok(id.to_string())
    }

    async fn dns_applied(
        &self,
        change_id: &str,
        batch: &Batch,
        provider_change_id: &str,
        in_sync: bool,
        fence: Fence,
    ) -> Result<(), StoreError> {
        let change: uuid::Uuid = change_id
            .parse()
            .map_err(|e| StoreError::Other(format!("{e}")))?;
        let ids: Vec<i64> = batch.changes.iter().map(|c| c.domain_id).collect();
        let primaries: Vec<i16> = batch
            .changes
            .iter()
            .map(|c| i16::from(c.weights.primary))
            .collect();
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        check_fence(&mut tx, fence).await?;
        sqlx::query(
            "insert into dns_records as r (domain_id, zone, provider, applied_primary_weight,
                    applied_backup_weight, applied_at, last_change_id)
             select b.id, c.zone, c.provider, b.p, 100 - b.p, now(), c.id
               from unnest($1::bigint[], $2::smallint[]) as b(id, p)
               join service_domains d on d.id = b.id
               join dns_changes c on c.id = $3
             on conflict (domain_id) do update set
                 zone = excluded.zone, provider = excluded.provider,
                 applied_primary_weight = excluded.applied_primary_weight,
                 applied_backup_weight = excluded.applied_backup_weight,
                 applied_at = excluded.applied_at, last_change_id = excluded.last_change_id,
                 last_error = null, failed_at = null",
        )
        .bind(&ids)
        .bind(&primaries)
        .bind(change)
        .execute(&mut *tx)
        .await
        .map_err(port_error)?;
        let attempt: i32 = sqlx::query_scalar(
            "update dns_changes
                set status = case when $3 then 'insync' else 'submitted' end,
                    provider_change_id = $2,
                    insync_at = case when $3 then now() end
              where id = $1
          returning attempt",
        )
        .bind(change)
        .bind(provider_change_id)
        .bind(in_sync)
        .fetch_one(&mut *tx)
        .await
        .map_err(port_error)?;
        let failovers = if in_sync {
            now_in_sync(&mut tx, change, attempt).await?
        } else {
            Vec::new()
        };
        tx.commit().await.map_err(port_error)?;
        observe_failovers(&failovers);
        Ok(())
    }

    async fn dns_failed(
        &self,
        change_id: &str,
        error: &str,
        permanent: &[i64],
    ) -> Result<(), StoreError> {
        let change: uuid::Uuid = change_id
            .parse()
            .map_err(|e| StoreError::Other(format!("{e}")))?;
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        // No domain marked failed: the zone actor retries (backoff, or the halves of a
        // bisected batch); `dns.change_failed` waits for that to fail for good or for long.
        let will_retry = permanent.is_empty();
        let attempt: i32 = sqlx::query_scalar(
            "update dns_changes set status = 'failed', error = $2, failed_at = now(),
                    will_retry = $3
              where id = $1
          returning attempt",
        )
        .bind(change)
        .bind(error)
        .bind(will_retry)
        .fetch_one(&mut *tx)
        .await
        .map_err(port_error)?;
        emit_dns_change(&mut tx, change, DnsOutcome::Failed { will_retry }, attempt).await?;
        if !permanent.is_empty() {
            sqlx::query(
                "insert into dns_records (domain_id, zone, provider, last_change_id, last_error, failed_at)
                 select b.id, c.zone, c.provider, c.id, $3, now()
                   from unnest($1::bigint[]) as b(id)
                   join service_domains d on d.id = b.id
                   join dns_changes c on c.id = $2
                 on conflict (domain_id) do update set
                     last_change_id = excluded.last_change_id, last_error = excluded.last_error,
                     failed_at = excluded.failed_at",
            )
            .bind(permanent)
            .bind(change)
            .bind(error)
            .execute(&mut *tx)
            .await
            .map_err(port_error)?;
        }
        tx.commit().await.map_err(port_error)
    }

    async fn orphaned_changes(&self, zone: &str) -> Result<Vec<OrphanedChange>, StoreError> {
        let rows: Vec<(uuid::Uuid, Option<String>, String)> = sqlx::query_as(
            "select id, provider_change_id, node_id from dns_changes
              where zone = $1 and status = 'submitted' order by submitted_at",
        )
        .bind(zone)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, provider_change_id, node_id)| OrphanedChange {
                id: id.to_string(),
                provider_change_id,
                node_id,
            })
            .collect())
    }

    async fn dns_superseded(
        &self,
        change_id: &str,
        reason: &str,
        fence: Fence,
    ) -> Result<(), StoreError> {
        let change: uuid::Uuid = change_id
            .parse()
            .map_err(|e| StoreError::Other(format!("{e}")))?;
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        check_fence(&mut tx, fence).await?;
        sqlx::query(
            "update dns_changes set status = 'superseded', error = $2 where id = $1 and status = 'submitted'",
        )
        .bind(change)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(port_error)?;
        tx.commit().await.map_err(port_error)
    }

    async fn dns_insync(&self, change_id: &str) -> Result<(), StoreError> {
        let change: uuid::Uuid = change_id
            .parse()
            .map_err(|e| StoreError::Other(format!("{e}")))?;
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        let attempt: Option<i32> = sqlx::query_scalar(
            "update dns_changes set status = 'insync', insync_at = now()
              where id = $1 and status = 'submitted'
          returning attempt",
        )
        .bind(change)
        .fetch_optional(&mut *tx)
        .await
        .map_err(port_error)?;
        let failovers = match attempt {
            Some(attempt) => now_in_sync(&mut tx, change, attempt).await?,
            None => Vec::new(),
        };
        tx.commit().await.map_err(port_error)?;
        observe_failovers(&failovers);
        Ok(())
    }
}
