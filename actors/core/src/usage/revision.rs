//! Usage revisions: how a source's report for a window becomes stored snapshot revisions.
//!
//! A report carries the usage a source sees *now* for one window (cumulative), keyed by
//! (service, window, source). The stored revisions of that key must add up to it:
//!
//! * no snapshot yet → revision 0 is created ([`Outcome::Created`]);
//! * the latest revision is unbilled → it is set to the report minus what earlier, invoiced
//!   revisions already billed ([`Outcome::Updated`], or [`Outcome::Unchanged`] when that is
//!   what it holds);
//! * every revision is invoiced and the report exceeds their sum → a new revision holds the
//!   difference: an *adjustment*, billed on the next invoice ([`Outcome::Adjusted`]); a report
//!   below what was billed records nothing ([`Outcome::BelowBilled`]): invoiced usage is never
//!   reduced or credited automatically.
//!
//! Each byte count is treated on its own: a report may exceed what was billed in one and not
//! the other; the new revision then holds the excess of each (never a negative amount).

use std::collections::HashMap;
use std::hash::Hash;

/// A stored revision of one key, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision {
    pub revision: i32,
    pub primary_bytes: i64,
    pub backup_bytes: i64,
    /// On an invoice already: never changed again.
    pub billed: bool,
}

/// What recording a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Adjusted,
    BelowBilled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Adjusted => "adjusted",
            Self::BelowBilled => "below_billed",
        }
    }

    /// Whether a snapshot is written.
    pub fn wrote(self) -> bool {
        matches!(self, Self::Created | Self::Updated | Self::Adjusted)
    }
}

/// The write a report needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new revision with these bytes.
    Insert {
        revision: i32,
        primary_bytes: i64,
        backup_bytes: i64,
    },
    /// The latest (unbilled) revision gets these bytes.
    UpdateLatest {
        primary_bytes: i64,
        backup_bytes: i64,
    },
    /// Nothing is written.
    Keep,
}

/// The outcome of one report and the write it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionPlan {
    pub outcome: Outcome,
    pub change: Change,
}

/// Plans one report against its key's stored revisions (in revision order; empty when the key
/// has none).
pub fn plan_revision(
    revisions: &[Revision],
    primary_bytes: i64,
    backup_bytes: i64,
) -> RevisionPlan {
    let Some(last) = revisions.last() else {
        return RevisionPlan {
            outcome: Outcome::Created,
            change: Change::Insert {
                revision: 0,
                primary_bytes,
                backup_bytes,
            },
        };
    };
    let (billed_p, billed_b) =
        revisions
            .iter()
            .filter(|r| r.billed)
            .fold((0i64, 0i64), |(p, b), r| {
                (
                    p.saturating_add(r.primary_bytes),
                    b.saturating_add(r.backup_bytes),
                )
            });
    let want_p = primary_bytes.saturating_sub(billed_p).max(0);
    let want_b = backup_bytes.saturating_sub(billed_b).max(0);
    let keep = |outcome| RevisionPlan {
        outcome,
        change: Change::Keep,
    };
    if !last.billed {
        if last.primary_bytes == want_p && last.backup_bytes == want_b {
            keep(Outcome::Unchanged)
        } else {
            RevisionPlan {
                outcome: Outcome::Updated,
                change: Change::UpdateLatest {
                    primary_bytes: want_p,
                    backup_bytes: want_b,
                },
            }
        }
    } else if want_p > 0 || want_b > 0 {
        RevisionPlan {
            outcome: Outcome::Adjusted,
            change: Change::Insert {
                revision: last.revision + 1,
                primary_bytes: want_p,
                backup_bytes: want_b,
            },
        }
    } else if primary_bytes < billed_p || backup_bytes < billed_b {
        keep(Outcome::BelowBilled)
    } else {
        keep(Outcome::Unchanged)
    }
}

/// Of reports repeating a key within one call, the last wins: the indices of each key's last
/// report, ascending.
pub fn last_per_key<K: Eq + Hash>(keys: impl IntoIterator<Item = K>) -> Vec<usize> {
    let mut latest: HashMap<K, usize> = HashMap::new();
    for (i, k) in keys.into_iter().enumerate() {
        latest.insert(k, i);
    }
    let mut out: Vec<usize> = latest.into_values().collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rev(revision: i32, p: i64, b: i64, billed: bool) -> Revision {
        Revision {
            revision,
            primary_bytes: p,
            backup_bytes: b,
            billed,
        }
    }

    #[test]
    fn a_first_report_creates_revision_zero() {
        let plan = plan_revision(&[], 10, 20);
        assert_eq!(plan.outcome, Outcome::Created);
        assert_eq!(
            plan.change,
            Change::Insert {
                revision: 0,
                primary_bytes: 10,
                backup_bytes: 20
            }
        );
    }

    #[test]
    fn an_unbilled_latest_revision_is_updated_to_the_report_minus_the_billed() {
        let revs = [rev(0, 10, 10, true), rev(1, 5, 0, false)];
        let plan = plan_revision(&revs, 30, 10);
        assert_eq!(plan.outcome, Outcome::Updated);
        assert_eq!(
            plan.change,
            Change::UpdateLatest {
                primary_bytes: 20,
                backup_bytes: 0
            }
        );
        assert_eq!(plan_revision(&revs, 15, 10).outcome, Outcome::Unchanged);
    }

    #[test]
    fn growth_after_billing_is_an_adjustment_and_shrinkage_is_ignored() {
        let revs = [rev(0, 10, 10, true)];
        assert_eq!(
            plan_revision(&revs, 12, 10).change,
            Change::Insert {
                revision: 1,
                primary_bytes: 2,
                backup_bytes: 0
            }
        );
        assert_eq!(plan_revision(&revs, 12, 10).outcome, Outcome::Adjusted);
        assert_eq!(plan_revision(&revs, 9, 10).outcome, Outcome::BelowBilled);
        assert_eq!(plan_revision(&revs, 10, 10).outcome, Outcome::Unchanged);
        // One count above, the other below: the excess is adjusted, nothing credited.
        assert_eq!(
            plan_revision(&revs, 15, 2).change,
            Change::Insert {
                revision: 1,
                primary_bytes: 5,
                backup_bytes: 0
            }
        );
    }

    #[test]
    fn the_last_report_of_a_key_wins() {
        assert_eq!(last_per_key(["a", "b", "a", "c", "b"]), [2, 3, 4]);
        assert!(last_per_key(Vec::<u8>::new()).is_empty());
    }

    fn apply(revs: &mut Vec<Revision>, plan: RevisionPlan) {
        match plan.change {
            Change::Insert {
                revision,
                primary_bytes,
                backup_bytes,
            } => revs.push(rev(revision, primary_bytes, backup_bytes, false)),
            Change::UpdateLatest {
                primary_bytes,
                backup_bytes,
            } => {
                let last = revs.last_mut().unwrap();
                assert!(!last.billed, "a billed revision is never changed");
                last.primary_bytes = primary_bytes;
                last.backup_bytes = backup_bytes;
            }
            Change::Keep => {}
        }
    }

    proptest! {
        /// Any sequence of reports and billing runs: billed revisions never change, nothing is
        /// negative, and the stored revisions add up to the latest report whenever it is at
        /// least what was billed (otherwise to what was billed).
        #[test]
        fn revisions_add_up_to_the_report(
            steps in prop::collection::vec((0i64..1000, 0i64..1000, any::<bool>()), 1..30),
        ) {
            let mut revs: Vec<Revision> = Vec::new();
            for (p, b, bill) in steps {
                let billed_before: Vec<Revision> = revs.iter().filter(|r| r.billed).copied().collect();
                let plan = plan_revision(&revs, p, b);
                prop_assert_eq!(plan.outcome.wrote(), plan.change != Change::Keep);
                apply(&mut revs, plan);
                let billed_after: Vec<Revision> = revs.iter().filter(|r| r.billed).copied().collect();
                prop_assert_eq!(&billed_before, &billed_after);
                prop_assert!(revs.iter().all(|r| r.primary_bytes >= 0 && r.backup_bytes >= 0));
                prop_assert!(revs.windows(2).all(|w| w[1].revision == w[0].revision + 1));
                let billed_p: i64 = billed_after.iter().map(|r| r.primary_bytes).sum();
                let billed_b: i64 = billed_after.iter().map(|r| r.backup_bytes).sum();
                let sum_p: i64 = revs.iter().map(|r| r.primary_bytes).sum();
                let sum_b: i64 = revs.iter().map(|r| r.backup_bytes).sum();
                prop_assert_eq!(sum_p, p.max(billed_p));
                prop_assert_eq!(sum_b, b.max(billed_b));
                if bill {
                    for r in &mut revs { r.billed = true; }
                }
            }
        }
    }
}
