//! Customer settings: created with the customer; for now the defaults of new storm policies.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use tranche_core::domain::{PolicyKind, PolicyParams};

#[derive(Debug, Clone, FromRow)]
pub struct SettingsRow {
    pub policy_threshold_avail: rust_decimal::Decimal,
    pub policy_window_seconds: i32,
    pub policy_cooldown_seconds: i32,
    pub policy_max_coverage_factor: rust_decimal::Decimal,
    pub policy_probe_interval_seconds: i32,
    pub policy_min_samples: i32,
    pub policy_consecutive_failures: i32,
    pub policy_consecutive_successes: i32,
    pub updated_at: DateTime<Utc>,
}

impl SettingsRow {
    /// The policy defaults as parameters of a policy of `kind`.
    pub fn policy(&self, kind: PolicyKind) -> PolicyParams {
        PolicyParams {
            kind,
            threshold_avail: self.policy_threshold_avail,
            window_seconds: self.policy_window_seconds,
            cooldown_seconds: self.policy_cooldown_seconds,
            max_coverage_factor: self.policy_max_coverage_factor,
            probe_interval_seconds: self.policy_probe_interval_seconds,
            min_samples: self.policy_min_samples,
            consecutive_failures: self.policy_consecutive_failures,
            consecutive_successes: self.policy_consecutive_successes,
            // Not a customer default (yet): every new policy decides by majority.
            quorum: Default::default(),
        }
    }
}

/// The columns of a [`SettingsRow`], as a macro so queries stay `&'static str`.
macro_rules! settings_columns {
    () => {
        "policy_threshold_avail, policy_window_seconds, policy_cooldown_seconds,
         policy_max_coverage_factor, policy_probe_interval_seconds, policy_min_samples,
         policy_consecutive_failures, policy_consecutive_successes, updated_at"
    };
}

/// Writes the customer's settings (creating the row if it is missing).
async fn upsert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    customer_id: i64,
    policy: &PolicyParams,
) -> sqlx::Result<SettingsRow> {
    sqlx::query_as(concat!(
        "insert into customer_settings
                (customer_id, policy_threshold_avail, policy_window_seconds,
                 policy_cooldown_seconds, policy_max_coverage_factor,
                 policy_probe_interval_seconds, policy_min_samples,
                 policy_consecutive_failures, policy_consecutive_successes)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict (customer_id) do update set
             policy_threshold_avail = excluded.policy_threshold_avail,
             policy_window_seconds = excluded.policy_window_seconds,
             policy_cooldown_seconds = excluded.policy_cooldown_seconds,
             policy_max_coverage_factor = excluded.policy_max_coverage_factor,
             policy_probe_interval_seconds = excluded.policy_probe_interval_seconds,
             policy_min_samples = excluded.policy_min_samples,
             policy_consecutive_failures = excluded.policy_consecutive_failures,
             policy_consecutive_successes = excluded.policy_consecutive_successes
         returning ",
        settings_columns!()
    ))
    .bind(customer_id)
    .bind(policy.threshold_avail)
    .bind(policy.window_seconds)
    .bind(policy.cooldown_seconds)
    .bind(policy.max_coverage_factor)
    .bind(policy.probe_interval_seconds)
    .bind(policy.min_samples)
    .bind(policy.consecutive_failures)
    .bind(policy.consecutive_successes)
    .fetch_one(executor)
    .await
}

/// The product defaults for a new customer, inside its provisioning transaction.
pub async fn create_defaults(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: i64,
) -> sqlx::Result<SettingsRow> {
    let defaults = PolicyParams::defaults(PolicyKind::HttpAvailability);
    upsert(&mut **tx, customer_id, &defaults).await
}

/// The customer's settings; `None` for a customer provisioned outside the API without them
/// (callers fall back to the product defaults).
pub async fn get(pool: &PgPool, customer_id: i64) -> sqlx::Result<Option<SettingsRow>> {
    sqlx::query_as(concat!(
        "select ",
        settings_columns!(),
        " from customer_settings where customer_id = $1"
    ))
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// The defaults a new policy of `kind` takes for the fields its request leaves out.
pub async fn policy_defaults(
    pool: &PgPool,
    customer_id: i64,
    kind: PolicyKind,
) -> sqlx::Result<PolicyParams> {
    Ok(get(pool, customer_id)
        .await?
        .map_or_else(|| PolicyParams::defaults(kind), |s| s.policy(kind)))
}

/// Changes the customer's policy defaults with `change` (which validates), reading and writing
/// under the row's lock so concurrent changes do not lose each other's fields. `Ok(Err(e))`:
/// `change` refused, nothing written.
pub async fn change_policy_defaults<E>(
    pool: &PgPool,
    customer_id: i64,
    kind: PolicyKind,
    change: impl FnOnce(PolicyParams) -> Result<PolicyParams, E>,
) -> sqlx::Result<Result<SettingsRow, E>> {
    let mut tx = pool.begin().await?;
    let current: Option<SettingsRow> = sqlx::query_as(concat!(
        "select ",
        settings_columns!(),
        " from customer_settings where customer_id = $1 for update"
    ))
    .bind(customer_id)
    .fetch_optional(&mut *tx)
    .await?;
    let current = current.map_or_else(|| PolicyParams::defaults(kind), |s| s.policy(kind));
    let next = match change(current) {
        Ok(next) => next,
        Err(e) => return Ok(Err(e)),
    };
    let row = upsert(&mut *tx, customer_id, &next).await?;
    tx.commit().await?;
    Ok(Ok(row))
}
