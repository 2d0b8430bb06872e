//! Deciding by quorum: what several vantages see of one CDN, combined into one judgement.
//!
//! A domain is probed from up to `vantages_per_domain` vantages (regions); each keeps its own
//! window and streak and reports a [`CdnHealth`]. The storm machine judges a CDN through a
//! [`Vantages`] value: a predicate ("down", "healthy", "can take traffic") holds for the CDN when
//! the policy's [`Quorum`] of the vantages whose window is *known* say so. A vantage with an
//! unknown window (too few samples, a report that stopped arriving) never votes either way, so a
//! vantage that vanishes never counts as down. With one vantage every rule is exactly the
//! single-vantage rule (a quorum of one).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;

use super::machine::CdnHealth;
use super::window::Availability;
use crate::domain::PolicyParams;
pub use crate::domain::Quorum;
use crate::observations::VantageView;
use crate::probe::Cdn;

/// What one vantage reports of one CDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VantageHealth {
    /// The vantage's label (a region, e.g. `eu-west`).
    pub vantage: String,
    /// The node that probed from it.
    pub node_id: String,
    pub health: CdnHealth,
}

impl VantageHealth {
    pub fn known(&self) -> bool {
        matches!(self.health.availability, Availability::Known { .. })
    }
}

/// Every vantage's view of one CDN at an evaluation (the decider's own first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vantages {
    pub views: Vec<VantageHealth>,
}

impl From<CdnHealth> for Vantages {
    /// A single vantage (a one-node install, and the machine's unit tests).
    fn from(health: CdnHealth) -> Self {
        Self {
            views: vec![VantageHealth {
                vantage: String::new(),
                node_id: String::new(),
                health,
            }],
        }
    }
}

impl Vantages {
    fn known(&self) -> impl Iterator<Item = &CdnHealth> {
        self.views.iter().filter(|v| v.known()).map(|v| &v.health)
    }

    fn quorum_of(&self, quorum: Quorum, says: impl Fn(&CdnHealth) -> bool) -> bool {
        let known = self.known().count();
        let votes = self.known().filter(|h| says(h)).count();
        quorum.holds(votes, known)
    }

    /// At least one vantage's window is known.
    pub fn is_known(&self) -> bool {
        self.known().next().is_some()
    }

    /// Down by quorum (each vote flap-damped: window below the threshold and the last
    /// `consecutive_failures` probes failed).
    pub fn is_down(&self, policy: &PolicyParams) -> bool {
        self.quorum_of(policy.quorum, |h| h.is_down(policy))
    }

    /// Healthy by quorum (window at or above the threshold).
    pub fn is_healthy(&self, policy: &PolicyParams) -> bool {
        self.quorum_of(policy.quorum, |h| {
            h.availability.is_healthy(policy.threshold_avail)
        })
    }

    /// Able to take traffic by quorum (the backup gate).
    pub fn can_take_traffic(&self, policy: &PolicyParams) -> bool {
        self.quorum_of(policy.quorum, |h| h.can_take_traffic(policy))
    }

    /// The longest run of successes a quorum of the known vantages has reached: the largest
    /// `n` such that the quorum's number of vantages each ended with ≥ `n` successes in a row
    /// (0 when nothing is known).
    pub fn successes(&self, quorum: Quorum) -> u32 {
        let mut runs: Vec<u32> = self.known().map(|h| h.streak.successes()).collect();
        let needed = quorum.needed(runs.len());
        if needed == 0 {
            return 0;
        }
        runs.sort_unstable_by(|a, b| b.cmp(a));
        runs[needed - 1]
    }

    /// The vantages that see the CDN down while the quorum does not: their own network may be
    /// at fault (`vantage_disagrees`). Empty when the quorum says down.
    pub fn disagreeing(&self, policy: &PolicyParams) -> Vec<&VantageHealth> {
        if self.is_down(policy) {
            return Vec::new();
        }
        self.views
            .iter()
            .filter(|v| v.health.is_down(policy))
            .collect()
    }

    /// Each vantage's availability (rounded, for audit), by vantage label.
    pub fn availabilities(&self) -> Vec<(&str, &str, Option<Decimal>)> {
        self.views
            .iter()
            .map(|v| {
                (
                    v.vantage.as_str(),
                    v.node_id.as_str(),
                    v.health.availability.ratio(),
                )
            })
            .collect()
    }

    /// The decider's own view (the first), for audit fields that name one availability.
    pub fn own(&self) -> Option<&CdnHealth> {
        self.views.first().map(|v| &v.health)
    }

    /// The availability the decision rests on: the median of the known vantages' availabilities
    /// (the decider's own when it is the only one), `None` when none is known.
    pub fn availability(&self) -> Option<Decimal> {
        let mut ratios: Vec<Decimal> = self
            .known()
            .filter_map(|h| h.availability.ratio())
            .collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_unstable();
        Some(ratios[(ratios.len() - 1) / 2])
    }
}

/// Damps disagreements. Vantages probe at different moments, so at the start and the end of a
/// real outage they briefly disagree; a vantage that sees a CDN down while the quorum does not
/// is reported only once that has lasted `hold` (the policy's window), and is cleared as soon
/// as it stops.
#[derive(Debug, Clone, Default)]
pub struct DisagreementDamper {
    /// Since when each (vantage, CDN) has disagreed without a break.
    since: BTreeMap<(String, Cdn), DateTime<Utc>>,
}

impl DisagreementDamper {
    /// Feeds the disagreements seen at `now`; returns those that have lasted `hold`.
    pub fn settle(
        &mut self,
        now: DateTime<Utc>,
        seen: impl IntoIterator<Item = (String, Cdn)>,
        hold: TimeDelta,
    ) -> BTreeSet<(String, Cdn)> {
        let seen: BTreeSet<(String, Cdn)> = seen.into_iter().collect();
        self.since.retain(|k, _| seen.contains(k));
        for k in &seen {
            self.since.entry(k.clone()).or_insert(now);
        }
        self.since
            .iter()
            .filter(|(_, since)| now - **since >= hold)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Every vantage's view of both CDNs (the primary's vantages, in their order), for the record.
pub fn views(primary: &Vantages, backup: &Vantages, policy: &PolicyParams) -> Vec<VantageView> {
    primary
        .views
        .iter()
        .map(|p| {
            let b = backup.views.iter().find(|b| b.vantage == p.vantage);
            VantageView {
                vantage: p.vantage.clone(),
                node_id: p.node_id.clone(),
                primary: p.health.availability.ratio(),
                backup: b.and_then(|b| b.health.availability.ratio()),
                primary_down: p.health.is_down(policy),
                backup_down: b.is_some_and(|b| b.health.is_down(policy)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PolicyKind, PolicyPatch};
    use crate::storm::Streak;
    use proptest::prelude::*;

    fn policy(quorum: Quorum) -> PolicyParams {
        let mut p =
            PolicyParams::new(PolicyKind::HttpAvailability, &PolicyPatch::default()).unwrap();
        p.quorum = quorum;
        p
    }

    fn view(i: usize, health: CdnHealth) -> VantageHealth {
        VantageHealth {
            vantage: format!("v{i}"),
            node_id: format!("n{i}"),
            health,
        }
    }

    use crate::storm::fixtures::{DOWN, UP};
    const UNKNOWN: CdnHealth =
        CdnHealth::new(Availability::Unknown { attempts: 1 }, Streak::failing(1));

    fn of(healths: &[CdnHealth]) -> Vantages {
        Vantages {
            views: healths
                .iter()
                .enumerate()
                .map(|(i, h)| view(i, *h))
                .collect(),
        }
    }

    #[test]
    fn one_vantage_down_of_three_is_not_a_storm_but_disagrees() {
        let p = policy(Quorum::Majority);
        let v = of(&[DOWN, UP, UP]);
        assert!(!v.is_down(&p));
        assert!(v.is_healthy(&p));
        assert_eq!(v.disagreeing(&p).len(), 1);
        assert_eq!(v.disagreeing(&p)[0].vantage, "v0");
        let v = of(&[DOWN, DOWN, UP]);
        assert!(v.is_down(&p));
        assert!(v.disagreeing(&p).is_empty());
    }

    #[test]
    fn unknown_vantages_never_vote() {
        let p = policy(Quorum::Majority);
        // Two known, both down: a majority of the known.
        assert!(of(&[DOWN, DOWN, UNKNOWN]).is_down(&p));
        // One known and down, two unknown: down (the only known view).
        assert!(of(&[UNKNOWN, DOWN, UNKNOWN]).is_down(&p));
        // Nothing known: neither down nor healthy.
        let v = of(&[UNKNOWN, UNKNOWN]);
        assert!(!v.is_down(&p) && !v.is_healthy(&p) && !v.is_known());
        // An even split: neither side has a majority.
        let v = of(&[DOWN, UP]);
        assert!(!v.is_down(&p) && !v.is_healthy(&p));
    }

    #[test]
    fn any_and_all() {
        let v = of(&[DOWN, UP, UP]);
        assert!(v.is_down(&policy(Quorum::Any)));
        assert!(!v.is_down(&policy(Quorum::All)));
        assert!(of(&[DOWN, DOWN, UNKNOWN]).is_down(&policy(Quorum::All)));
        assert!(!of(&[DOWN, DOWN, UP]).is_healthy(&policy(Quorum::All)));
    }

    #[test]
    fn successes_at_quorum() {
        let s = |n| CdnHealth::new(UP.availability, Streak::succeeding(n));
        let v = of(&[s(1), s(5), s(3)]);
        assert_eq!(v.successes(Quorum::Majority), 3);
        assert_eq!(v.successes(Quorum::Any), 5);
        assert_eq!(v.successes(Quorum::All), 1);
        assert_eq!(of(&[UNKNOWN]).successes(Quorum::Any), 0);
    }

    #[test]
    fn parses_and_names_the_allowed_values() {
        assert_eq!("any".parse::<Quorum>().unwrap(), Quorum::Any);
        let e = "most".parse::<Quorum>().unwrap_err();
        assert!(e.to_string().contains("majority, any, all"), "{e}");
    }

    #[test]
    fn disagreements_count_once_they_last() {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let hold = TimeDelta::seconds(30);
        let eu = || ("eu".to_owned(), Cdn::Primary);
        let mut d = DisagreementDamper::default();
        assert!(d.settle(t(0), [eu()], hold).is_empty());
        assert!(d.settle(t(29), [eu()], hold).is_empty());
        assert_eq!(d.settle(t(30), [eu()], hold), BTreeSet::from([eu()]));
        // A break restarts the clock; clearing is immediate.
        assert!(d.settle(t(31), [], hold).is_empty());
        assert!(d.settle(t(32), [eu()], hold).is_empty());
        assert!(d.settle(t(61), [eu()], hold).is_empty());
        assert_eq!(d.settle(t(62), [eu()], hold).len(), 1);
    }

    fn health() -> impl Strategy<Value = CdnHealth> {
        prop_oneof![Just(UP), Just(DOWN), Just(UNKNOWN)]
    }

    fn quorum() -> impl Strategy<Value = Quorum> {
        prop_oneof![Just(Quorum::Majority), Just(Quorum::Any), Just(Quorum::All)]
    }

    proptest! {
        /// Adding a vantage that knows nothing never changes a judgement.
        #[test]
        fn unknown_vantages_change_nothing(hs in proptest::collection::vec(health(), 1..6), q in quorum()) {
            let p = policy(q);
            let v = of(&hs);
            let mut more = hs.clone();
            more.push(UNKNOWN);
            let w = of(&more);
            prop_assert_eq!(v.is_down(&p), w.is_down(&p));
            prop_assert_eq!(v.is_healthy(&p), w.is_healthy(&p));
            prop_assert_eq!(v.can_take_traffic(&p), w.can_take_traffic(&p));
        }

        /// One vantage is a quorum of one: every rule is that vantage's own.
        #[test]
        fn a_single_vantage_decides_alone(h in health(), q in quorum()) {
            let p = policy(q);
            let v = Vantages::from(h);
            prop_assert_eq!(v.is_down(&p), h.is_down(&p));
            prop_assert_eq!(v.is_healthy(&p), h.availability.is_healthy(p.threshold_avail));
            prop_assert_eq!(v.can_take_traffic(&p), h.can_take_traffic(&p));
            prop_assert_eq!(v.successes(q), if v.is_known() { h.streak.successes() } else { 0 });
        }

        /// Down and healthy are never both true under a majority or all; `any` is the
        /// sensitive rule, `all` the strict one, and majority lies between.
        #[test]
        fn quorums_are_ordered_and_majority_is_never_both(hs in proptest::collection::vec(health(), 0..7)) {
            let v = of(&hs);
            let (any, maj, all) = (policy(Quorum::Any), policy(Quorum::Majority), policy(Quorum::All));
            prop_assert!(!(v.is_down(&maj) && v.is_healthy(&maj)));
            prop_assert!(!(v.is_down(&all) && v.is_healthy(&all)));
            prop_assert!(!v.is_down(&all) || v.is_down(&maj));
            prop_assert!(!v.is_down(&maj) || v.is_down(&any));
            // A minority of known vantages down never makes a majority storm.
            let known = hs.iter().filter(|h| **h != UNKNOWN).count();
            let down = hs.iter().filter(|h| **h == DOWN).count();
            prop_assert_eq!(v.is_down(&maj), known > 0 && 2 * down > known);
            // Whoever sees it down alone is reported as disagreeing, unless the quorum agrees.
            let disagreeing = v.disagreeing(&maj).len();
            prop_assert_eq!(disagreeing, if v.is_down(&maj) { 0 } else { down });
        }
    }
}
