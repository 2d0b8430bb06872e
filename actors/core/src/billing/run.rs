//! A billing run's plan: which invoice every unbilled snapshot goes on, priced, and what the run
//! adds to each draft.
//!
//! The Postgres adapter loads a customer's settled, unbilled snapshots, their services' storms
//! and coverage factors, and the status of the invoices of the snapshots' periods (locked for
//! the run) into [`RunInputs`]; [`plan_run`] decides; the adapter applies the [`RunPlan`] in the
//! same transaction. The rules:
//!
//! * every snapshot is priced with [`super::price`], with its service's storms and largest
//!   coverage factor (1 when the service has no policy);
//! * a snapshot goes on the draft of its own period, unless that period's invoice is already
//!   finalized: then it goes, as an adjustment, on the draft of the period containing `now`;
//! * a revised snapshot (revision > 0) is an adjustment too, on its own period's draft;
//! * each draft gains the sums of its new lines' rounded amounts and their count; drafts are
//!   listed in period order (the order the adapter locks and upserts them in).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;

use super::{BillingError, BillingSettings, Line, StormSpan, Totals, Usage, period_of, price};

/// One unbilled snapshot as the run sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbilled {
    pub service_id: i64,
    pub usage: Usage,
    /// 0 for a first report; a later revision is billed as an adjustment.
    pub revision: i32,
}

/// Everything a run decides from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunInputs {
    pub snapshots: Vec<Unbilled>,
    /// Each service's storms that overlap the snapshots (in any order).
    pub storms: HashMap<i64, Vec<StormSpan>>,
    /// Each service's policies' `max_coverage_factor`s (none: the service has no policy).
    pub coverage_factors: HashMap<i64, Vec<Decimal>>,
    /// Of the periods in [`snapshot_periods`], those whose invoice is finalized.
    pub finalized_periods: BTreeSet<DateTime<Utc>>,
}

/// A priced snapshot and the invoice period it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLine {
    /// Index into [`RunInputs::snapshots`].
    pub snapshot: usize,
    /// Start of the period whose draft receives the line.
    pub period_start: DateTime<Utc>,
    pub line: Line,
    pub adjustment: bool,
}

/// What the run adds to one draft invoice (created when it does not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftDelta {
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub totals: Totals,
    pub lines: i32,
}

/// The run's decisions, in the order the adapter applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPlan {
    pub lines: Vec<PlannedLine>,
    /// In period order.
    pub drafts: Vec<DraftDelta>,
}

/// A snapshot that cannot be priced: the run fails and names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot #{snapshot} of the run cannot be priced: {error}")]
pub struct PlanError {
    pub snapshot: usize,
    pub error: BillingError,
}

impl BillingSettings {
    /// Snapshots whose window ended before this instant have settled and are billed.
    pub fn billable_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - delta(self.settle)
    }

    /// Drafts whose period ended at or before this instant are finalized.
    pub fn finalize_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - delta(self.grace)
    }

    /// Tranche's own SLO on the daily invoice finalisation (dogfooding, issue 16), as minutes
    /// after the business date's UTC midnight: the period closes at 24:00 and its invoice is
    /// final by the grace, a billing tick and a quarter of an hour later. `None` unless the
    /// period is a UTC day (the only period a daily calendar describes) and the expected end
    /// fits an SLO's 7 days.
    pub fn finalisation_slo(&self) -> Option<(u32, u32)> {
        if self.period != std::time::Duration::from_secs(86_400) {
            return None;
        }
        let minutes = |d: std::time::Duration| d.as_secs().div_ceil(60);
        let end = 1440 + minutes(self.grace) + minutes(self.tick) + 15;
        (end <= 10_080).then_some((1440, end as u32))
    }
}

fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The periods (starts, ascending) the snapshots fall in: the invoices the adapter locks and
/// reads the status of before planning.
pub fn snapshot_periods(snapshots: &[Unbilled], settings: &BillingSettings) -> Vec<DateTime<Utc>> {
    let set: BTreeSet<DateTime<Utc>> = snapshots
        .iter()
        .map(|s| period_of(s.usage.window_start, settings.period).0)
        .collect();
    set.into_iter().collect()
}

/// Plans one run: see the module documentation for the rules.
pub fn plan_run(
    inputs: &RunInputs,
    now: DateTime<Utc>,
    settings: &BillingSettings,
) -> Result<RunPlan, PlanError> {
    let current = period_of(now, settings.period);
    let no_storms = Vec::new();
    let mut lines = Vec::with_capacity(inputs.snapshots.len());
    let mut drafts: BTreeMap<DateTime<Utc>, DraftDelta> = BTreeMap::new();
    for (i, snapshot) in inputs.snapshots.iter().enumerate() {
        let storms = inputs
            .storms
            .get(&snapshot.service_id)
            .unwrap_or(&no_storms);
        let factor = super::max_coverage_factor(
            inputs
                .coverage_factors
                .get(&snapshot.service_id)
                .into_iter()
                .flatten()
                .copied(),
        );
        let line = price(&snapshot.usage, storms, factor, &settings.rates)
            .map_err(|error| PlanError { snapshot: i, error })?;
        let own = period_of(snapshot.usage.window_start, settings.period);
        let (period, adjustment) = if inputs.finalized_periods.contains(&own.0) {
            (current, true)
        } else {
            (own, snapshot.revision > 0)
        };
        let draft = drafts.entry(period.0).or_insert_with(|| DraftDelta {
            period_start: period.0,
            period_end: period.1,
            totals: Totals::default(),
            lines: 0,
        });
        draft.totals.add(&line);
        draft.lines += 1;
        lines.push(PlannedLine {
            snapshot: i,
            period_start: period.0,
            line,
            adjustment,
        });
    }
    Ok(RunPlan {
        lines,
        drafts: drafts.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const GB: i64 = 1 << 30;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn hour(start: &str, service_id: i64, primary: i64, backup: i64) -> Unbilled {
        let start = t(start);
        Unbilled {
            service_id,
            usage: Usage {
                window_start: start,
                window_end: start + TimeDelta::hours(1),
                primary_bytes: primary,
                backup_bytes: backup,
            },
            revision: 0,
        }
    }

    fn settings() -> BillingSettings {
        BillingSettings::default()
    }

    #[test]
    fn lines_go_on_their_own_periods_drafts_in_period_order() {
        let inputs = RunInputs {
            snapshots: vec![
                hour("2026-11-21T10:00:00Z", 1, GB, GB),
                hour("2026-11-20T10:00:00Z", 1, GB, 0),
                hour("2026-11-21T11:00:00Z", 2, 0, GB),
            ],
            ..RunInputs::default()
        };
        let plan = plan_run(&inputs, t("2026-11-22T12:00:00Z"), &settings()).unwrap();
        let periods: Vec<_> = plan.lines.iter().map(|l| l.period_start).collect();
        assert_eq!(
            periods,
            [
                t("2026-11-21T00:00:00Z"),
                t("2026-11-20T00:00:00Z"),
                t("2026-11-21T00:00:00Z")
            ]
        );
        assert!(plan.lines.iter().all(|l| !l.adjustment));
        assert_eq!(plan.drafts.len(), 2);
        assert_eq!(plan.drafts[0].period_start, t("2026-11-20T00:00:00Z"));
        assert_eq!(plan.drafts[0].period_end, t("2026-11-21T00:00:00Z"));
        assert_eq!(plan.drafts[0].lines, 1);
        assert_eq!(plan.drafts[0].totals.total_cents, Decimal::from(12));
        assert_eq!(plan.drafts[1].lines, 2);
        assert_eq!(plan.drafts[1].totals.subtotal_cents, Decimal::from(36));
    }

    #[test]
    fn a_snapshot_of_a_finalized_period_is_an_adjustment_on_the_current_draft() {
        let inputs = RunInputs {
            snapshots: vec![
                hour("2026-11-20T10:00:00Z", 1, GB, 0),
                hour("2026-11-21T10:00:00Z", 1, GB, 0),
            ],
            finalized_periods: [t("2026-11-20T00:00:00Z")].into(),
            ..RunInputs::default()
        };
        let now = t("2026-11-23T08:00:00Z");
        let plan = plan_run(&inputs, now, &settings()).unwrap();
        assert_eq!(plan.lines[0].period_start, t("2026-11-23T00:00:00Z"));
        assert!(plan.lines[0].adjustment);
        assert_eq!(plan.lines[1].period_start, t("2026-11-21T00:00:00Z"));
        assert!(!plan.lines[1].adjustment);
        let starts: Vec<_> = plan.drafts.iter().map(|d| d.period_start).collect();
        assert_eq!(
            starts,
            [t("2026-11-21T00:00:00Z"), t("2026-11-23T00:00:00Z")]
        );
        assert_eq!(plan.drafts[1].period_end, t("2026-11-24T00:00:00Z"));
    }

    #[test]
    fn a_revision_is_an_adjustment_on_its_own_open_period() {
        let mut revised = hour("2026-11-21T10:00:00Z", 1, GB, 0);
        revised.revision = 2;
        let inputs = RunInputs {
            snapshots: vec![revised],
            ..RunInputs::default()
        };
        let plan = plan_run(&inputs, t("2026-11-22T00:30:00Z"), &settings()).unwrap();
        assert_eq!(plan.lines[0].period_start, t("2026-11-21T00:00:00Z"));
        assert!(plan.lines[0].adjustment);
    }

    #[test]
    fn storms_and_coverage_are_the_snapshots_services() {
        let inputs = RunInputs {
            snapshots: vec![
                hour("2026-11-21T10:00:00Z", 1, 0, GB),
                hour("2026-11-21T10:00:00Z", 2, 0, GB),
            ],
            storms: [(
                1,
                vec![StormSpan {
                    started_at: t("2026-11-21T10:00:00Z"),
                    ended_at: Some(t("2026-11-21T10:30:00Z")),
                }],
            )]
            .into(),
            coverage_factors: [(1, vec![Decimal::ONE, Decimal::TWO])].into(),
            ..RunInputs::default()
        };
        let plan = plan_run(&inputs, t("2026-11-22T00:00:00Z"), &settings()).unwrap();
        // Half an hour of storm × factor 2 = full coverage: 12 ¢ × 0.5 discount.
        assert_eq!(plan.lines[0].line.discount_cents, Decimal::from(6));
        assert_eq!(plan.lines[0].line.storms, [0]);
        assert_eq!(plan.lines[1].line.discount_cents, Decimal::ZERO);
        assert!(plan.lines[1].line.storms.is_empty());
    }

    #[test]
    fn a_snapshot_that_cannot_be_priced_is_named() {
        let mut bad = hour("2026-11-21T10:00:00Z", 1, GB, 0);
        bad.usage.backup_bytes = -1;
        let inputs = RunInputs {
            snapshots: vec![hour("2026-11-21T09:00:00Z", 1, GB, 0), bad],
            ..RunInputs::default()
        };
        let err = plan_run(&inputs, t("2026-11-22T00:00:00Z"), &settings()).unwrap_err();
        assert_eq!(err.snapshot, 1);
        assert_eq!(err.error, BillingError::NegativeBytes);
    }

    #[test]
    fn settle_and_grace_cut_offs() {
        let s = BillingSettings {
            settle: Duration::from_secs(900),
            grace: Duration::from_secs(6 * 3600),
            ..settings()
        };
        let now = t("2026-11-22T12:00:00Z");
        assert_eq!(s.billable_before(now), t("2026-11-22T11:45:00Z"));
        assert_eq!(s.finalize_until(now), t("2026-11-22T06:00:00Z"));
        // The dogfood SLO: closed at 24:00, final by 06:00 + a tick + 15 min the next day.
        assert_eq!(s.finalisation_slo(), Some((1440, 1440 + 360 + 1 + 15)));
        let hourly = BillingSettings {
            period: std::time::Duration::from_secs(3600),
            ..s.clone()
        };
        assert_eq!(hourly.finalisation_slo(), None);
    }

    proptest! {
        /// Every line lands on exactly one draft, the drafts' sums are the lines' sums, and a
        /// line is on its own period unless that period is finalized.
        #[test]
        fn drafts_sum_their_lines(
            rows in prop::collection::vec((0i64..72, 1i64..4, 0i64..(4 * GB), 0i64..(4 * GB), 0i32..2), 1..40),
            finalized in prop::collection::btree_set(0i64..3, 0..3),
        ) {
            let base = t("2026-11-20T00:00:00Z");
            let snapshots: Vec<Unbilled> = rows.iter().map(|&(h, svc, p, b, rev)| {
                let start = base + TimeDelta::hours(h);
                Unbilled {
                    service_id: svc,
                    usage: Usage { window_start: start, window_end: start + TimeDelta::hours(1), primary_bytes: p, backup_bytes: b },
                    revision: rev,
                }
            }).collect();
            let finalized_periods = finalized.iter().map(|&d| base + TimeDelta::days(d)).collect();
            let inputs = RunInputs { snapshots, finalized_periods, ..RunInputs::default() };
            let now = base + TimeDelta::days(3) + TimeDelta::hours(5);
            let plan = plan_run(&inputs, now, &settings()).unwrap();
            prop_assert_eq!(plan.lines.len(), inputs.snapshots.len());
            let mut totals = Totals::default();
            for l in &plan.lines { totals.add(&l.line); }
            let mut draft_totals = Totals::default();
            let mut count = 0;
            for d in &plan.drafts {
                draft_totals.subtotal_cents += d.totals.subtotal_cents;
                draft_totals.discount_cents += d.totals.discount_cents;
                draft_totals.total_cents += d.totals.total_cents;
                count += d.lines;
                prop_assert!(!inputs.finalized_periods.contains(&d.period_start));
            }
            prop_assert_eq!(totals, draft_totals);
            prop_assert_eq!(count as usize, plan.lines.len());
            prop_assert!(plan.drafts.windows(2).all(|w| w[0].period_start < w[1].period_start));
            for l in &plan.lines {
                let s = &inputs.snapshots[l.snapshot];
                let own = period_of(s.usage.window_start, settings().period).0;
                let moved = inputs.finalized_periods.contains(&own);
                prop_assert_eq!(l.period_start, if moved { period_of(now, settings().period).0 } else { own });
                prop_assert_eq!(l.adjustment, moved || s.revision > 0);
            }
        }
    }
}
