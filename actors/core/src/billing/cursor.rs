//! A customer's billing cursor: how far a run may declare the customer's snapshots billed.
//!
//! Every snapshot carries a sequence number (`seq`) assigned when it is written, and every
//! snapshot whose number is at or below the customer's cursor is billed. A run reads what lies
//! above the cursor: the settled snapshots without a line (at most a batch of them, in `seq`
//! order) are billed; the snapshots whose window has not settled yet stay. Snapshots above the
//! cursor that already have a line are skipped (a run billed them while the cursor waited behind
//! an unsettled one).
//!
//! [`next_cursor`] moves the cursor as far as is sound after the run: to the highest number
//! below which nothing is left unbilled. The adapter guarantees what this relies on — that no
//! snapshot commits with a number below one the run has seen (writers and runs of a customer
//! exclude each other by the customer's billing lock).

/// What a run saw above the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorScan {
    /// The cursor before the run.
    pub cursor: i64,
    /// The customer's highest sequence number (`None`: no snapshot at all).
    pub top: Option<i64>,
    /// The lowest sequence number above the cursor of a snapshot whose window has not settled.
    pub first_unsettled: Option<i64>,
    /// How many snapshots the run bills: the settled, unbilled ones above the cursor, lowest
    /// numbers first, at most `batch`.
    pub billed: usize,
    /// The highest number among them.
    pub last_billed: Option<i64>,
    /// The run's batch size (the limit of `billed`).
    pub batch: usize,
}

/// The cursor after the run (never below the cursor before it).
///
/// * A run that billed fewer than a batch billed every settled snapshot above the cursor, so
///   everything up to the customer's highest number is billed but the unsettled ones.
/// * A run that billed a full batch saw nothing beyond its last snapshot: the cursor goes no
///   further than that.
/// * Either way the cursor stops just below the first unsettled snapshot.
pub fn next_cursor(scan: &CursorScan) -> i64 {
    let reached = if scan.billed >= scan.batch {
        scan.last_billed
    } else {
        scan.top
    };
    let mut next = reached.unwrap_or(scan.cursor);
    if let Some(unsettled) = scan.first_unsettled {
        next = next.min(unsettled - 1);
    }
    next.max(scan.cursor)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn scan(cursor: i64, top: Option<i64>, unsettled: Option<i64>, billed: &[i64]) -> CursorScan {
        CursorScan {
            cursor,
            top,
            first_unsettled: unsettled,
            billed: billed.len(),
            last_billed: billed.last().copied(),
            batch: 3,
        }
    }

    #[test]
    fn an_empty_account_keeps_its_cursor() {
        assert_eq!(next_cursor(&scan(0, None, None, &[])), 0);
        assert_eq!(next_cursor(&scan(7, Some(7), None, &[])), 7);
    }

    #[test]
    fn a_run_that_bills_everything_reaches_the_top() {
        assert_eq!(next_cursor(&scan(0, Some(9), None, &[4, 9])), 9);
        // Snapshots above the cursor billed by an earlier run are passed over too.
        assert_eq!(next_cursor(&scan(2, Some(9), None, &[])), 9);
    }

    #[test]
    fn an_unsettled_snapshot_holds_the_cursor_below_it() {
        assert_eq!(next_cursor(&scan(0, Some(9), Some(5), &[4, 9])), 4);
        assert_eq!(next_cursor(&scan(3, Some(9), Some(4), &[6])), 3);
    }

    #[test]
    fn a_full_batch_goes_no_further_than_its_last_snapshot() {
        assert_eq!(next_cursor(&scan(0, Some(20), None, &[1, 2, 5])), 5);
        assert_eq!(next_cursor(&scan(0, Some(20), Some(3), &[1, 2, 5])), 2);
    }

    /// A customer's snapshots: `seq` → (settled, billed).
    type Account = BTreeMap<i64, (bool, bool)>;

    /// One run as the adapter performs it: bill the settled, unbilled snapshots above the
    /// cursor, lowest numbers first, at most `batch`; move the cursor.
    fn run(account: &mut Account, cursor: i64, batch: usize) -> i64 {
        let above = || account.range(cursor + 1..);
        let first_unsettled = above().find(|(_, (settled, _))| !settled).map(|(s, _)| *s);
        let picked: Vec<i64> = above()
            .filter(|(_, (settled, billed))| *settled && !billed)
            .map(|(s, _)| *s)
            .take(batch)
            .collect();
        let top = account.keys().next_back().copied();
        for s in &picked {
            account.get_mut(s).unwrap().1 = true;
        }
        next_cursor(&CursorScan {
            cursor,
            top,
            first_unsettled,
            billed: picked.len(),
            last_billed: picked.last().copied(),
            batch,
        })
    }

    proptest! {
        /// Whatever arrives and settles in whatever order, the cursor never passes an unbilled
        /// snapshot, and once everything has settled, runs bill every snapshot and bring the
        /// cursor to the top.
        #[test]
        fn the_cursor_never_passes_an_unbilled_snapshot(
            steps in prop::collection::vec((0usize..4, any::<bool>(), 0usize..8), 1..60),
            batch in 1usize..5,
        ) {
            let mut account = Account::new();
            let mut cursor = 0;
            let mut next_seq = 1;
            for (arrivals, settled, settle_one) in steps {
                for _ in 0..arrivals {
                    account.insert(next_seq, (settled, false));
                    next_seq += 1;
                }
                // Some snapshot settles (windows settle in any order relative to `seq`).
                let unsettled: Vec<i64> =
                    account.iter().filter(|(_, (s, _))| !s).map(|(k, _)| *k).collect();
                if let Some(&k) = unsettled.get(settle_one) {
                    account.get_mut(&k).unwrap().0 = true;
                }
                cursor = run(&mut account, cursor, batch);
                for (seq, (_, billed)) in account.range(..=cursor) {
                    prop_assert!(billed, "snapshot {} below cursor {} unbilled", seq, cursor);
                }
            }
            for v in account.values_mut() {
                v.0 = true;
            }
            for _ in 0..=account.len() {
                cursor = run(&mut account, cursor, batch);
            }
            prop_assert!(account.values().all(|(_, billed)| *billed));
            prop_assert_eq!(Some(cursor), account.keys().next_back().copied().or(Some(0)));
        }
    }
}
