//! Billing arithmetic: the pure function that turns one usage snapshot and the service's storms
//! into a priced line item, exactly as DESIGN.md §5 prescribes (the formula is binding).
//!
//! ```text
//! charge(bytes) = round(bytes × rate_cents_per_gb / 2^30)                  whole cents
//! overlap       = seconds of the window inside the union of the storms      (open storm → window end)
//! coverage      = min(overlap × max_cov / window_seconds, max_cov)          0 < max_cov (1: no policy)
//! subtotal      = charge(primary) + charge(backup)
//! discount      = min(round(charge(backup) × discount_rate × coverage), subtotal)
//! total         = subtotal − discount
//! ```
//!
//! `round` is half away from zero. Everything is [`rust_decimal::Decimal`]; products are formed
//! before the single division (by 2^30, or by the window length), and the rounding to whole
//! cents is decided on the exact quotient ([`round_quotient`]), so a discount that is exactly
//! half a cent rounds up even where a 28-digit decimal quotient would not be exact. The
//! unrounded amounts are kept alongside (to 28 significant digits) for the invoice's reader.
//!
//! [`run`] plans a whole billing run on top of it: which invoice each snapshot goes on
//! (adjustments of finalized periods included) and what each draft gains; [`cursor`] how far a
//! run may declare the customer's snapshots billed.
//!
//! Nothing here reads the clock or the database: windows, storms and rates are passed in.

pub mod cursor;
mod period;
pub mod run;

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

pub use cursor::{CursorScan, next_cursor};
pub use period::period_of;
pub use run::{
    DraftDelta, PlanError, PlannedLine, RunInputs, RunPlan, Unbilled, plan_run, snapshot_periods,
};

/// Bytes in a gigabyte for billing: 2^30 (a GiB, as the Go seed used).
pub const BYTES_PER_GB: i64 = 1 << 30;

/// Prices: the base rate for traffic through either CDN, and the share of the backup's charge
/// refunded for storm time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// US cents per GB (2^30 bytes). Default 12.
    pub cents_per_gb: Decimal,
    /// Fraction of the backup charge discounted at coverage 1, in [0, 1]. Default 0.5.
    pub discount_rate: Decimal,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            cents_per_gb: Decimal::from(12),
            discount_rate: Decimal::new(5, 1),
        }
    }
}

impl Rates {
    /// Checks the bounds within which every line is computed without loss: a rate between 0
    /// and 100,000 ¢/GB, a discount rate in [0, 1], each with at most 6 decimal places.
    pub fn validate(&self) -> Result<(), BillingError> {
        let ok = |d: Decimal, max: Decimal| d >= Decimal::ZERO && d <= max && d.scale() <= 6;
        if !ok(self.cents_per_gb, Decimal::from(100_000)) {
            return Err(BillingError::Rates(format!(
                "rate {} ¢/GB must be between 0 and 100000 with at most 6 decimal places",
                self.cents_per_gb
            )));
        }
        if !ok(self.discount_rate, Decimal::ONE) {
            return Err(BillingError::Rates(format!(
                "discount rate {} must be between 0 and 1 with at most 6 decimal places",
                self.discount_rate
            )));
        }
        Ok(())
    }
}

/// How and when invoicing runs (the engine's CustomerBillingActors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingSettings {
    /// How often each customer's billing actor runs. Default 1 min.
    pub tick: Duration,
    /// Length of an invoice's period, aligned to the Unix epoch. Default 24 h (a UTC day).
    pub period: Duration,
    /// A snapshot is billed once its window ended this long ago (its source has settled).
    /// Default 15 min.
    pub settle: Duration,
    /// A draft invoice is finalized this long after its period ends: until then late usage
    /// for the period lands on it. Default 6 h (the usage lookback).
    pub grace: Duration,
    pub rates: Rates,
    /// Most snapshots one transaction bills; a run repeats until fewer remain.
    pub batch: usize,
    /// How long billing-run records are kept. Default 90 days.
    pub run_retention: Duration,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(60),
            period: Duration::from_secs(86_400),
            settle: Duration::from_secs(15 * 60),
            grace: Duration::from_secs(6 * 3600),
            rates: Rates::default(),
            batch: 5000,
            run_retention: Duration::from_secs(90 * 86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("snapshot window must end after it starts")]
    EmptyWindow,
    #[error("byte counts must not be negative")]
    NegativeBytes,
    #[error("max coverage factor {0} must be greater than 0")]
    CoverageFactor(Decimal),
    #[error("invalid rates: {0}")]
    Rates(String),
    /// An intermediate product left the exact range (not reachable within the validated rates).
    #[error("amount out of the exactly representable range")]
    Overflow,
}

/// A storm of the service, as far as billing cares: when it started and (if it has) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormSpan {
    pub started_at: DateTime<Utc>,
    /// `None` while the storm is still open: it covers the window to its end.
    pub ended_at: Option<DateTime<Utc>>,
}

/// The usage of one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub primary_bytes: i64,
    pub backup_bytes: i64,
}

/// A charge: the exact amount and the whole cents billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub exact: Decimal,
    pub cents: Decimal,
}

/// A priced line item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Seconds of the window covered by the union of the storms (microsecond precision).
    pub storm_overlap_seconds: Decimal,
    pub max_coverage_factor: Decimal,
    /// `min(overlap × max_cov / window, max_cov)`, unrounded.
    pub coverage: Decimal,
    pub primary: Charge,
    pub backup: Charge,
    pub subtotal_cents: Decimal,
    /// `charge(backup) × discount_rate × coverage`, unrounded and uncapped.
    pub discount_exact: Decimal,
    pub discount_cents: Decimal,
    pub total_cents: Decimal,
    /// Indices (into the storms passed in) of the storms that overlap the window.
    pub storms: Vec<usize>,
}

/// `round(bytes × rate / 2^30)` in whole cents.
pub fn charge(bytes: i64, rates: &Rates) -> Result<Charge, BillingError> {
    if bytes < 0 {
        return Err(BillingError::NegativeBytes);
    }
    let numerator = Decimal::from(bytes)
        .checked_mul(rates.cents_per_gb)
        .ok_or(BillingError::Overflow)?;
    let denominator = Decimal::from(BYTES_PER_GB);
    Ok(Charge {
        exact: numerator
            .checked_div(denominator)
            .ok_or(BillingError::Overflow)?,
        cents: round_quotient(numerator, denominator)?,
    })
}

/// Microseconds of `[start, end)` covered by the union of `storms` (each clipped to the window,
/// overlapping and adjacent ones merged, an open storm running to the window's end), and the
/// indices of the storms that overlap the window at all.
pub fn storm_overlap(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    storms: &[StormSpan],
) -> (i64, Vec<usize>) {
    let mut clipped: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut touching = Vec::new();
    for (i, s) in storms.iter().enumerate() {
        let s_start = s.started_at.max(start);
        let s_end = s.ended_at.unwrap_or(end).min(end);
        if s_start < s_end {
            clipped.push((s_start, s_end));
            touching.push(i);
        }
    }
    clipped.sort();
    let mut covered: i64 = 0;
    let mut current: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (s, e) in clipped {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                covered += micros(ce - cs);
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        covered += micros(ce - cs);
    }
    (covered, touching)
}

fn micros(d: chrono::TimeDelta) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
}

/// Prices one snapshot: see the module documentation for the formula.
pub fn price(
    usage: &Usage,
    storms: &[StormSpan],
    max_coverage_factor: Decimal,
    rates: &Rates,
) -> Result<Line, BillingError> {
    if usage.window_end <= usage.window_start {
        return Err(BillingError::EmptyWindow);
    }
    if max_coverage_factor <= Decimal::ZERO {
        return Err(BillingError::CoverageFactor(max_coverage_factor));
    }
    rates.validate()?;
    let window_us = micros(usage.window_end - usage.window_start);
    let (overlap_us, touching) = storm_overlap(usage.window_start, usage.window_end, storms);

    let primary = charge(usage.primary_bytes, rates)?;
    let backup = charge(usage.backup_bytes, rates)?;
    let subtotal_cents = primary
        .cents
        .checked_add(backup.cents)
        .ok_or(BillingError::Overflow)?;

    // coverage = min(overlap × max_cov / window, max_cov) = min(overlap × max_cov,
    // window × max_cov) / window: keep the division for last.
    let window = Decimal::from(window_us);
    let covered = exact_mul(Decimal::from(overlap_us), max_coverage_factor)?;
    let cap = exact_mul(window, max_coverage_factor)?;
    let covered = covered.min(cap);
    let coverage = covered.checked_div(window).ok_or(BillingError::Overflow)?;

    let discount_numerator = exact_mul(exact_mul(backup.cents, rates.discount_rate)?, covered)?;
    let discount_exact = discount_numerator
        .checked_div(window)
        .ok_or(BillingError::Overflow)?;
    let discount_cents = round_quotient(discount_numerator, window)?.min(subtotal_cents);
    Ok(Line {
        storm_overlap_seconds: Decimal::new(overlap_us, 6).normalize(),
        max_coverage_factor,
        coverage: coverage.normalize(),
        primary,
        backup,
        subtotal_cents,
        discount_exact: discount_exact.normalize(),
        discount_cents,
        total_cents: subtotal_cents - discount_cents,
        storms: touching,
    })
}

/// `a × b`, failing rather than silently dropping digits.
fn exact_mul(a: Decimal, b: Decimal) -> Result<Decimal, BillingError> {
    let (a, b) = (a.normalize(), b.normalize());
    let product = a.checked_mul(b).ok_or(BillingError::Overflow)?;
    if product.is_zero() || product.scale() == a.scale() + b.scale() {
        Ok(product)
    } else {
        Err(BillingError::Overflow)
    }
}

/// `numerator / denominator` rounded to a whole number, half away from zero, decided on the
/// exact quotient (both operands scaled to integers; the remainder compared with half the
/// divisor), so no intermediate rounding can move a value across the half-cent line.
pub fn round_quotient(numerator: Decimal, denominator: Decimal) -> Result<Decimal, BillingError> {
    if denominator.is_zero() {
        return Err(BillingError::Overflow);
    }
    let scale = numerator.scale().max(denominator.scale());
    let as_integer = |d: Decimal| -> Result<i128, BillingError> {
        let factor = 10i128
            .checked_pow(scale - d.scale())
            .ok_or(BillingError::Overflow)?;
        d.mantissa()
            .checked_mul(factor)
            .ok_or(BillingError::Overflow)
    };
    let (n, d) = (as_integer(numerator)?, as_integer(denominator)?);
    let (q, r) = (n / d, n % d);
    // |r| ≥ |d| / 2  ⇔  2|r| ≥ |d|: away from zero on ties.
    let rounded = if 2 * r.abs() >= d.abs() {
        q + (n.signum() * d.signum())
    } else {
        q
    };
    i64::try_from(rounded)
        .map(Decimal::from)
        .map_err(|_| BillingError::Overflow)
}

/// The coverage factor of a service: the largest `max_coverage_factor` of its policies, 1
/// when it has none.
pub fn max_coverage_factor(factors: impl IntoIterator<Item = Decimal>) -> Decimal {
    factors.into_iter().max().unwrap_or(Decimal::ONE)
}

/// Invoice totals: the sums of the lines' rounded amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub subtotal_cents: Decimal,
    pub discount_cents: Decimal,
    pub total_cents: Decimal,
}

impl Totals {
    pub fn add(&mut self, line: &Line) {
        self.subtotal_cents += line.subtotal_cents;
        self.discount_cents += line.discount_cents;
        self.total_cents += line.total_cents;
    }
}

#[cfg(test)]
mod tests;
