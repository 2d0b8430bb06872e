//! The per-domain storm state machine.
//!
//! ```text
//!            primary down, backup healthy
//!   Healthy ─────────────────────────────────▶ Storm (weights 0/100, storm opened)
//!    ▲ │ ▲ primary down, backup NOT healthy          │ primary healthy for cooldown_seconds and
//!    │ │ └──────────────▶ BackupUnhealthy            │ consecutive_successes probes in a row,
//!    │ │   (no failover: 100/0; primary healthy →    │ and 0/100 applied at the provider
//!    │ │    Healthy; backup healthy → Storm)          ▼
//!    │ │                                         Recovering (25/75 → 50/50 → …)
//!    │ └──▶ Unknown (the primary cannot be        │ one step per probe interval of health, each
//!    │      judged: no target, probes blocked);   │ after the previous one is applied at the
//!    │      primary known again → Healthy         │ provider; primary down again → Storm
//!    └──────────────────── last step (100/0): storm closed ┘
//!
//!   Healthy ── a drill is on, backup healthy ──▶ Drill (0/100, no storm: never billed as one)
//!      ▲   drill over: the same ramp, step by step;   │ primary down → Storm (opened);
//!      └── backup unhealthy: straight back to 100/0 ──┘ (to BackupUnhealthy if the primary is down)
//! ```
//!
//! **Maintenance**: while a maintenance window covers the domain, probes still run and are
//! shown, but nothing moves *away* from `Healthy`: no storm opens, and neither
//! `BackupUnhealthy` nor `Unknown` is entered (so nothing is announced). What was already under
//! way (a storm, its ramp) carries on, and a drill may still run.
//!
//! "Primary down" is flap-damped: the primary's window is known and below the threshold *and*
//! its last `consecutive_failures` probes failed (as Route53's failure threshold and
//! Cloudflare's consecutive-down count do), so one blip never fails over. "Backup healthy" is
//! its window known and at or above the threshold with fewer than `consecutive_failures`
//! failures in a row.
//!
//! With several vantages, each of these judgements is taken by the policy's quorum of the
//! vantages whose window is known ([`Vantages`]); one vantage decides alone.
//!
//! Invariants (property-tested below): a storm opens only when the primary's window is known
//! and below the threshold after `consecutive_failures` failures in a row; traffic never moves
//! *towards* the backup unless the backup is healthy; at most one storm is open; a storm closes
//! only after the primary has been healthy for the whole cooldown; each ramp step is taken only
//! once the previous weights are applied at the provider; and from any restored state a healthy
//! primary brings the domain back to 100/0 with the storm closed in bounded time.

use std::fmt;

use chrono::{DateTime, Duration, Utc};

use super::{Availability, Streak, Vantages};
use crate::domain::PolicyParams;

/// DNS weights for the primary and backup records (they sum to 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weights {
    pub primary: u8,
    pub backup: u8,
}

impl Weights {
    /// No storm: everything on the primary.
    pub const NORMAL: Weights = Weights {
        primary: 100,
        backup: 0,
    };
    /// Storm: everything on the backup.
    pub const FAILOVER: Weights = Weights {
        primary: 0,
        backup: 100,
    };

    pub const fn new(primary: u8) -> Self {
        Self {
            primary,
            backup: 100 - primary,
        }
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.primary, self.backup)
    }
}

/// The ramp back to the primary after a storm, one step per healthy probe interval. The last
/// step is normal weighting and closes the storm.
pub const RAMP_STEPS: [Weights; 3] = [Weights::new(25), Weights::new(50), Weights::NORMAL];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StormState {
    /// Primary fine (or not yet known): normal weights.
    Healthy,
    /// Primary below threshold: traffic on the backup; a storm is open.
    Storm,
    /// Primary healthy again after a storm: weights ramp back; the storm is still open.
    Recovering,
    /// Primary below threshold but the backup is not healthy either: no failover (moving traffic
    /// to a dead backup is worse than staying); visible, and alerted on.
    BackupUnhealthy,
    /// The primary's health could not be judged for longer than a window (no target, every
    /// probe blocked, too few results): normal weights, visible, and alerted on.
    Unknown,
    /// An operator's failover drill: traffic on the backup for a chosen time, then ramped back.
    /// No storm is open.
    Drill,
}

impl StormState {
    pub const ALL: [StormState; 6] = [
        Self::Healthy,
        Self::Storm,
        Self::Recovering,
        Self::BackupUnhealthy,
        Self::Unknown,
        Self::Drill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Storm => "storm",
            Self::Recovering => "recovering",
            Self::BackupUnhealthy => "backup_unhealthy",
            Self::Unknown => "unknown",
            Self::Drill => "drill",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether a storm event is open in this state.
    pub fn storm_open(self) -> bool {
        matches!(self, Self::Storm | Self::Recovering)
    }
}

/// A storm event starting or ending with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StormChange {
    Opened,
    Closed,
}

/// What the machine knows of one CDN at an evaluation: its window and its latest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdnHealth {
    pub availability: Availability,
    pub streak: Streak,
}

impl CdnHealth {
    pub const fn new(availability: Availability, streak: Streak) -> Self {
        Self {
            availability,
            streak,
        }
    }

    /// Down, flap-damped: window known and below the threshold, and the last
    /// `consecutive_failures` probes failed.
    pub fn is_down(&self, policy: &PolicyParams) -> bool {
        self.availability.is_below(policy.threshold_avail)
            && self.streak.failures() >= policy.consecutive_failures.max(1) as u32
    }

    /// Healthy enough to take traffic: window known and at or above the threshold, and not in
    /// a run of `consecutive_failures` failures.
    pub fn can_take_traffic(&self, policy: &PolicyParams) -> bool {
        self.availability.is_healthy(policy.threshold_avail)
            && self.streak.failures() < policy.consecutive_failures.max(1) as u32
    }
}

/// One evaluation's inputs: what every vantage sees of each CDN (judged by the policy's
/// quorum; one vantage on a single-node install).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub primary: Vantages,
    pub backup: Vantages,
    /// Whether the current desired weights are in effect at the DNS provider (or the domain is
    /// not steered, so there is nothing to wait for). The ramp waits for it.
    pub step_applied: bool,
    /// Until when an operator's drill holds traffic on the backup (`None`: no drill, or it was
    /// cancelled). A drill whose time has passed ramps back.
    pub drill_until: Option<DateTime<Utc>>,
    /// Whether a maintenance window covers the domain now.
    pub maintenance: bool,
}

/// A change of state or desired weights. The actor commits it (with the storm event, if any)
/// before anything acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub at: DateTime<Utc>,
    pub previous: StormState,
    pub state: StormState,
    pub weights: Weights,
    pub storm: Option<StormChange>,
    /// The CDNs as every vantage saw them when the decision was made.
    pub primary: Vantages,
    pub backup: Vantages,
    /// The earliest failed primary probe in the deciding node's window: when the trouble that
    /// opened a storm began, as far as the window remembers. The machine leaves it `None`; the
    /// caller, which holds the window, fills it in (detection latency is measured from it).
    pub primary_failing_since: Option<DateTime<Utc>>,
}

/// One domain's storm state. Construct with [`StormMachine::new`] or restore from the persisted
/// state with [`StormMachine::restore`]; feed it with [`StormMachine::evaluate`].
#[derive(Debug, Clone)]
pub struct StormMachine {
    state: StormState,
    since: DateTime<Utc>,
    weights: Weights,
    /// Start of the current unbroken run of evaluations with a healthy primary window.
    primary_healthy_since: Option<DateTime<Utc>>,
    /// Since when the current weights are known to be in effect at the provider (`None`: not
    /// yet, or not since this machine was built).
    applied_since: Option<DateTime<Utc>>,
    /// The last evaluation at which the primary's window was known (or when the machine was
    /// built).
    primary_known_at: DateTime<Utc>,
}

impl StormMachine {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self::restore(StormState::Healthy, now, Weights::NORMAL, now)
    }

    /// Rebuilds the machine from persisted state. Nothing observed before is assumed: the
    /// primary's healthy run and the cooldown are counted again, and the current weights count
    /// as applied from the first evaluation that finds them applied at the provider — so a
    /// domain restored in `Recovering` takes its next step one healthy interval after that.
    pub fn restore(
        state: StormState,
        since: DateTime<Utc>,
        weights: Weights,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            state,
            since,
            weights,
            primary_healthy_since: None,
            applied_since: None,
            primary_known_at: now,
        }
    }

    pub fn state(&self) -> StormState {
        self.state
    }

    pub fn since(&self) -> DateTime<Utc> {
        self.since
    }

    pub fn weights(&self) -> Weights {
        self.weights
    }

    /// Whether the machine is waiting to learn that its weights are applied at the provider (a
    /// storm is open and they are not known to be): the actor asks the provider's side only then.
    pub fn awaits_provider(&self) -> bool {
        (self.state.storm_open() || self.state == StormState::Drill) && self.applied_since.is_none()
    }

    /// The next step back towards the primary: the first ramp weight above the current one;
    /// reaching normal weights ends the storm.
    fn ramp_step(&self) -> (StormState, Weights, Option<StormChange>) {
        let next = RAMP_STEPS
            .iter()
            .copied()
            .find(|w| w.primary > self.weights.primary)
            .unwrap_or(Weights::NORMAL);
        if next == Weights::NORMAL {
            (StormState::Healthy, next, Some(StormChange::Closed))
        } else {
            (StormState::Recovering, next, None)
        }
    }

    /// Evaluates the CDNs at `now`; returns the decision if state or weights change.
    pub fn evaluate(
        &mut self,
        now: DateTime<Utc>,
        inputs: Inputs,
        policy: &PolicyParams,
    ) -> Option<Decision> {
        let Inputs {
            primary,
            backup,
            step_applied,
            drill_until,
            maintenance,
        } = inputs;
        let drilling = drill_until.is_some_and(|until| now < until);
        let primary_down = primary.is_down(policy);
        let primary_healthy = primary.is_healthy(policy);
        let backup_ok = backup.can_take_traffic(policy);
        if primary_healthy {
            self.primary_healthy_since.get_or_insert(now);
        } else {
            self.primary_healthy_since = None;
        }
        if primary.is_known() {
            self.primary_known_at = now;
        }
        if step_applied {
            self.applied_since.get_or_insert(now);
        }
        let interval = Duration::seconds(i64::from(policy.probe_interval_seconds));
        let unknown_for = now - self.primary_known_at;
        let unjudgeable =
            unknown_for > Duration::seconds(i64::from(policy.window_seconds)) + interval;
        let successes_enough =
            primary.successes(policy.quorum) >= policy.consecutive_successes.max(1) as u32;

        let (state, weights, storm) = match self.state {
            StormState::Healthy if drilling && backup_ok && !primary_down => {
                (StormState::Drill, Weights::FAILOVER, None)
            }
            // A maintenance window: nothing moves away from healthy (a drill may still start).
            StormState::Healthy if maintenance => return None,
            StormState::BackupUnhealthy | StormState::Unknown
                if maintenance && !primary_healthy =>
            {
                return None;
            }
            StormState::Healthy | StormState::BackupUnhealthy | StormState::Unknown
                if primary_down && backup_ok =>
            {
                (
                    StormState::Storm,
                    Weights::FAILOVER,
                    Some(StormChange::Opened),
                )
            }
            StormState::Healthy | StormState::Unknown if primary_down => {
                (StormState::BackupUnhealthy, Weights::NORMAL, None)
            }
            StormState::BackupUnhealthy | StormState::Unknown if primary_healthy => {
                (StormState::Healthy, Weights::NORMAL, None)
            }
            StormState::Healthy | StormState::BackupUnhealthy if unjudgeable => {
                (StormState::Unknown, Weights::NORMAL, None)
            }
            StormState::Healthy | StormState::BackupUnhealthy | StormState::Unknown => {
                return None;
            }

            StormState::Storm => {
                let cooldown = Duration::seconds(i64::from(policy.cooldown_seconds));
                let healthy_for = self.primary_healthy_since.map(|s| now - s);
                if healthy_for.is_some_and(|h| h >= cooldown)
                    && successes_enough
                    && self.applied_since.is_some()
                {
                    self.ramp_step()
                } else if self.weights != Weights::FAILOVER && backup_ok && primary_down {
                    // Weights were held while the backup was unhealthy; it is healthy now.
                    (StormState::Storm, Weights::FAILOVER, None)
                } else {
                    return None;
                }
            }
            StormState::Drill => {
                if primary_down && backup_ok && !maintenance {
                    // A real storm during the drill: traffic is already on the backup.
                    (
                        StormState::Storm,
                        Weights::FAILOVER,
                        Some(StormChange::Opened),
                    )
                } else if !backup_ok && self.weights != Weights::NORMAL {
                    // Never keep traffic on a failing backup for a drill: straight back.
                    let state = if primary_down && !maintenance {
                        StormState::BackupUnhealthy
                    } else {
                        StormState::Healthy
                    };
                    (state, Weights::NORMAL, None)
                } else if drilling {
                    if self.weights == Weights::FAILOVER || !backup_ok {
                        return None;
                    }
                    (StormState::Drill, Weights::FAILOVER, None)
                } else {
                    // The drill is over: the storm's ramp, without a storm to close.
                    let carried = match (self.primary_healthy_since, self.applied_since) {
                        (Some(healthy), Some(applied)) => now - healthy.max(applied) >= interval,
                        _ => false,
                    };
                    if self.weights == Weights::NORMAL
                        || (carried && primary.successes(policy.quorum) > 0)
                    {
                        match self.ramp_step() {
                            (StormState::Recovering, w, _) => (StormState::Drill, w, None),
                            (_, w, _) => (StormState::Healthy, w, None),
                        }
                    } else {
                        return None;
                    }
                }
            }
            StormState::Recovering => {
                if primary_down {
                    let weights = if backup_ok {
                        Weights::FAILOVER
                    } else {
                        self.weights
                    };
                    (StormState::Storm, weights, None)
                } else {
                    // The step has carried traffic for a whole interval with the primary healthy
                    // throughout, and the last probe of the primary succeeded.
                    let carried = match (self.primary_healthy_since, self.applied_since) {
                        (Some(healthy), Some(applied)) => now - healthy.max(applied) >= interval,
                        _ => false,
                    };
                    if carried && primary.successes(policy.quorum) > 0 {
                        self.ramp_step()
                    } else {
                        return None;
                    }
                }
            }
        };
        let previous = self.state;
        if state == previous && weights == self.weights && storm.is_none() {
            return None;
        }
        if state != previous {
            self.since = now;
        }
        if weights != self.weights {
            self.applied_since = None;
        }
        self.state = state;
        self.weights = weights;
        Some(Decision {
            at: now,
            previous,
            state,
            weights,
            storm,
            primary,
            backup,
            primary_failing_since: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PolicyKind, PolicyParams, PolicyPatch};
    use crate::storm::AvailabilityWindow;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn policy(cooldown: i32) -> PolicyParams {
        PolicyParams::new(
            PolicyKind::HttpAvailability,
            &PolicyPatch {
                cooldown_seconds: Some(cooldown),
                ..Default::default()
            },
        )
        .unwrap()
    }

    use crate::storm::fixtures::{DOWN, UP};
    const UNKNOWN: CdnHealth =
        CdnHealth::new(Availability::Unknown { attempts: 1 }, Streak::succeeding(1));

    /// Inputs with the current weights applied at the provider.
    fn i(primary: CdnHealth, backup: CdnHealth) -> Inputs {
        Inputs {
            primary: primary.into(),
            backup: backup.into(),
            step_applied: true,
            drill_until: None,
            maintenance: false,
        }
    }

    /// Inputs with the current weights not yet applied at the provider.
    fn pending(primary: CdnHealth, backup: CdnHealth) -> Inputs {
        Inputs {
            step_applied: false,
            ..i(primary, backup)
        }
    }

    fn drill(until: i64, primary: CdnHealth, backup: CdnHealth) -> Inputs {
        Inputs {
            drill_until: Some(t(until)),
            ..i(primary, backup)
        }
    }

    fn maintenance(primary: CdnHealth, backup: CdnHealth) -> Inputs {
        Inputs {
            maintenance: true,
            ..i(primary, backup)
        }
    }

    #[test]
    fn a_drill_moves_traffic_to_the_backup_then_ramps_back_without_a_storm() {
        let p = policy(30);
        let mut m = StormMachine::new(t(0));
        let d = m.evaluate(t(1), drill(60, UP, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (StormState::Drill, Weights::FAILOVER, None)
        );
        // Held for the drill's duration (applied at the provider).
        for s in 2..60 {
            assert_eq!(m.evaluate(t(s), drill(60, UP, UP), &p), None, "t={s}");
        }
        // Over: the ramp, one step per interval once applied, and no storm to close.
        let mut steps = Vec::new();
        for s in 60..120 {
            if let Some(d) = m.evaluate(t(s), drill(60, UP, UP), &p) {
                assert_eq!(d.storm, None);
                steps.push((d.state, d.weights.primary));
            }
        }
        assert_eq!(
            steps,
            [
                (StormState::Drill, 25),
                (StormState::Drill, 50),
                (StormState::Healthy, 100)
            ]
        );
    }

    #[test]
    fn a_drill_waits_for_a_healthy_backup_and_abandons_a_failing_one() {
        let p = policy(30);
        let mut m = StormMachine::new(t(0));
        assert_eq!(
            m.evaluate(t(1), drill(60, UP, DOWN), &p),
            None,
            "backup down: no drill"
        );
        assert_eq!(
            m.evaluate(t(2), drill(60, UP, UNKNOWN), &p),
            None,
            "backup unknown: none"
        );
        let d = m.evaluate(t(3), drill(60, UP, UP), &p).unwrap();
        assert_eq!(d.state, StormState::Drill);
        // The backup fails mid-drill: straight back to the primary, not step by step.
        let d = m.evaluate(t(4), drill(60, UP, DOWN), &p).unwrap();
        assert_eq!((d.state, d.weights), (StormState::Healthy, Weights::NORMAL));
    }

    #[test]
    fn a_real_outage_during_a_drill_opens_a_storm_and_cancelling_ramps_back() {
        let p = policy(30);
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(1), drill(600, UP, UP), &p).unwrap();
        let d = m.evaluate(t(2), drill(600, DOWN, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (
                StormState::Storm,
                Weights::FAILOVER,
                Some(StormChange::Opened)
            )
        );

        // Cancelled (no drill any more): the ramp starts once the failover has carried
        // traffic for an interval.
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(1), drill(600, UP, UP), &p).unwrap();
        assert_eq!(m.evaluate(t(2), drill(600, UP, UP), &p), None);
        let first = (3..60)
            .find_map(|s| m.evaluate(t(s), i(UP, UP), &p))
            .unwrap();
        assert_eq!(
            (first.state, first.weights.primary, first.storm),
            (StormState::Drill, 25, None)
        );
    }

    #[test]
    fn a_maintenance_window_opens_no_storm_and_enters_no_alerting_state() {
        let p = policy(30);
        let mut m = StormMachine::new(t(0));
        for s in 1..200 {
            for inputs in [
                maintenance(DOWN, UP),
                maintenance(DOWN, DOWN),
                maintenance(UNKNOWN, UP),
            ] {
                assert_eq!(m.evaluate(t(s), inputs, &p), None, "t={s}");
            }
        }
        // The window ends with the primary still down: the storm opens then.
        let d = m.evaluate(t(200), i(DOWN, UP), &p).unwrap();
        assert_eq!(d.storm, Some(StormChange::Opened));
        // A storm already open carries on, ramp included, inside a window.
        let mut closed = false;
        for s in 201..400 {
            if let Some(d) = m.evaluate(t(s), maintenance(UP, UP), &p) {
                closed |= d.storm == Some(StormChange::Closed);
            }
        }
        assert!(closed, "the storm ramped back and closed during the window");
        // A drill may still run inside a window.
        let d = m.evaluate(
            t(400),
            Inputs {
                drill_until: Some(t(500)),
                ..maintenance(UP, UP)
            },
            &p,
        );
        assert_eq!(d.map(|d| d.state), Some(StormState::Drill));
    }

    #[test]
    fn full_storm_cycle_with_ramp_back() {
        let p = policy(30);
        let mut m = StormMachine::new(t(0));
        assert_eq!(m.evaluate(t(1), i(UP, UP), &p), None);
        let d = m.evaluate(t(10), i(DOWN, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (
                StormState::Storm,
                Weights::FAILOVER,
                Some(StormChange::Opened)
            )
        );
        assert_eq!(m.evaluate(t(20), i(DOWN, UP), &p), None);
        // Healthy from t=30; cooldown 30 s → Recovering at t=60, not before.
        assert_eq!(m.evaluate(t(30), i(UP, UP), &p), None);
        assert_eq!(m.evaluate(t(50), i(UP, UP), &p), None);
        let d = m.evaluate(t(60), i(UP, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights),
            (StormState::Recovering, Weights::new(25))
        );
        // One step per probe interval (10 s) after the step is applied.
        assert_eq!(m.evaluate(t(65), i(UP, UP), &p), None);
        let d = m.evaluate(t(75), i(UP, UP), &p).unwrap();
        assert_eq!(d.weights, Weights::new(50));
        assert_eq!(m.evaluate(t(80), i(UP, UP), &p), None);
        let d = m.evaluate(t(90), i(UP, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (
                StormState::Healthy,
                Weights::NORMAL,
                Some(StormChange::Closed)
            )
        );
    }

    #[test]
    fn fewer_failures_in_a_row_than_the_policy_asks_never_open_a_storm() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        let below = Availability::Known {
            successes: 4,
            attempts: 6,
        };
        // The window is below 90%, but only two failures in a row.
        for (k, streak) in [Streak::failing(1), Streak::failing(2)]
            .into_iter()
            .enumerate()
        {
            let primary = CdnHealth::new(below, streak);
            assert_eq!(m.evaluate(t(k as i64), i(primary, UP), &p), None);
        }
        let d = m
            .evaluate(t(3), i(CdnHealth::new(below, Streak::failing(3)), UP), &p)
            .unwrap();
        assert_eq!(d.storm, Some(StormChange::Opened));
    }

    #[test]
    fn the_ramp_waits_for_each_step_to_be_applied_at_the_provider() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(1), pending(DOWN, UP), &p).unwrap();
        // Healthy again, but 0/100 is not applied yet: no ramp.
        assert_eq!(m.evaluate(t(100), pending(UP, UP), &p), None);
        assert!(m.awaits_provider());
        let d = m.evaluate(t(101), i(UP, UP), &p).unwrap();
        assert_eq!(d.weights, Weights::new(25));
        assert!(m.awaits_provider(), "25/75 is not known to be applied");
        // Long after the interval, but 25/75 has not reached the provider.
        assert_eq!(m.evaluate(t(200), pending(UP, UP), &p), None);
        // Applied at t=201: the step carries traffic for an interval before the next one.
        assert_eq!(m.evaluate(t(201), i(UP, UP), &p), None);
        assert_eq!(m.evaluate(t(210), pending(UP, UP), &p), None);
        let d = m.evaluate(t(211), pending(UP, UP), &p).unwrap();
        assert_eq!(d.weights, Weights::new(50));
    }

    #[test]
    fn restored_in_recovering_finishes_the_ramp() {
        // The defect this guards against: a machine restored at 25/75 never took its next step.
        let p = policy(300);
        let mut m = StormMachine::restore(StormState::Recovering, t(0), Weights::new(25), t(100));
        assert_eq!(m.evaluate(t(101), i(UP, UP), &p), None);
        let d = m.evaluate(t(111), i(UP, UP), &p).unwrap();
        assert_eq!(d.weights, Weights::new(50));
        // 50/50 is seen applied at the next evaluation, and carries traffic for an interval.
        assert_eq!(m.evaluate(t(112), i(UP, UP), &p), None);
        let d = m.evaluate(t(122), i(UP, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (
                StormState::Healthy,
                Weights::NORMAL,
                Some(StormChange::Closed)
            )
        );
    }

    #[test]
    fn unknown_windows_never_open_a_storm() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        assert_eq!(m.evaluate(t(1), i(UNKNOWN, UP), &p), None);
        assert_eq!(m.evaluate(t(2), i(UNKNOWN, UNKNOWN), &p), None);
        assert_eq!(m.state(), StormState::Healthy);
    }

    #[test]
    fn a_primary_that_cannot_be_judged_becomes_unknown_and_recovers() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        // Window 60 s + one interval of grace.
        assert_eq!(m.evaluate(t(70), i(UNKNOWN, UP), &p), None);
        let d = m.evaluate(t(71), i(UNKNOWN, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (StormState::Unknown, Weights::NORMAL, None)
        );
        assert_eq!(m.evaluate(t(80), i(UNKNOWN, UP), &p), None);
        let d = m.evaluate(t(90), i(UP, UP), &p).unwrap();
        assert_eq!(d.state, StormState::Healthy);
        // From unknown straight into a storm when the primary turns out to be down.
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(71), i(UNKNOWN, UP), &p).unwrap();
        let d = m.evaluate(t(80), i(DOWN, UP), &p).unwrap();
        assert_eq!(d.storm, Some(StormChange::Opened));
    }

    #[test]
    fn no_failover_to_an_unhealthy_backup() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        let d = m.evaluate(t(1), i(DOWN, DOWN), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (StormState::BackupUnhealthy, Weights::NORMAL, None)
        );
        assert_eq!(m.evaluate(t(2), i(DOWN, UNKNOWN), &p), None);
        // A backup whose window is fine but whose last probes failed is not trusted either.
        let flapping = CdnHealth::new(UP.availability, Streak::failing(3));
        assert_eq!(m.evaluate(t(3), i(DOWN, flapping), &p), None);
        // The backup recovers: now fail over.
        let d = m.evaluate(t(4), i(DOWN, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.storm),
            (StormState::Storm, Some(StormChange::Opened))
        );
    }

    #[test]
    fn backup_only_outage_changes_nothing_but_the_visible_state_when_primary_is_fine() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        assert_eq!(m.evaluate(t(1), i(UP, DOWN), &p), None);
        assert_eq!(m.state(), StormState::Healthy);
    }

    #[test]
    fn relapse_during_recovery_returns_to_storm_without_a_new_event() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(1), i(DOWN, UP), &p).unwrap();
        let d = m.evaluate(t(2), i(UP, UP), &p).unwrap();
        assert_eq!(d.state, StormState::Recovering);
        let d = m.evaluate(t(3), i(DOWN, UP), &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (StormState::Storm, Weights::FAILOVER, None)
        );
    }

    #[test]
    fn relapse_with_a_dead_backup_holds_the_weights() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(1), i(DOWN, UP), &p).unwrap();
        m.evaluate(t(2), i(UP, UP), &p).unwrap();
        let d = m.evaluate(t(3), i(DOWN, DOWN), &p).unwrap();
        assert_eq!((d.state, d.weights), (StormState::Storm, Weights::new(25)));
        let d = m.evaluate(t(4), i(DOWN, UP), &p).unwrap();
        assert_eq!(d.weights, Weights::FAILOVER);
    }

    /// One step of a random scenario: seconds since the last step, the two probe outcomes, and
    /// whether the provider has applied the current weights by then.
    fn step() -> impl Strategy<Value = (i64, bool, bool, bool)> {
        (1i64..15, any::<bool>(), any::<bool>(), any::<bool>())
    }

    /// A probe-driven harness: windows and streaks per CDN fed with outcomes, as the domain
    /// actor does.
    struct Harness {
        primary: (AvailabilityWindow, Streak),
        backup: (AvailabilityWindow, Streak),
    }

    impl Harness {
        fn new() -> Self {
            Self {
                primary: (AvailabilityWindow::new(), Streak::default()),
                backup: (AvailabilityWindow::new(), Streak::default()),
            }
        }

        fn record(
            &mut self,
            now: DateTime<Utc>,
            p_ok: bool,
            b_ok: bool,
            p: &PolicyParams,
        ) -> (CdnHealth, CdnHealth) {
            let health = |(w, s): &mut (AvailabilityWindow, Streak), ok: bool| {
                w.record(now, ok);
                s.record(ok);
                CdnHealth::new(w.availability(now, p.window_seconds, p.min_samples), *s)
            };
            (
                health(&mut self.primary, p_ok),
                health(&mut self.backup, b_ok),
            )
        }
    }

    fn arbitrary_policy(
        threshold_pct: u32,
        window: i32,
        min_samples: i32,
        interval: i32,
        cooldown: i32,
        failures: i32,
        successes: i32,
    ) -> PolicyParams {
        PolicyParams::new(
            PolicyKind::HttpAvailability,
            &PolicyPatch {
                threshold_avail: Some(Decimal::new(i64::from(threshold_pct), 2)),
                window_seconds: Some(window.max(interval * min_samples)),
                min_samples: Some(min_samples),
                probe_interval_seconds: Some(interval),
                cooldown_seconds: Some(cooldown),
                consecutive_failures: Some(failures),
                consecutive_successes: Some(successes),
                ..Default::default()
            },
        )
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn invariants_hold_for_random_probe_sequences(
            steps in prop::collection::vec(step(), 1..400),
            threshold_pct in prop::sample::select(vec![50u32, 80, 90, 95, 100]),
            window in 10i32..90,
            min_samples in 1i32..4,
            interval in 1i32..5,
            cooldown in 0i32..60,
            failures in 1i32..4,
            successes in 1i32..4,
            bias in 0u8..4,
            drill in (0i64..3000, 0i64..600),
            window_of_maintenance in (0i64..3000, 0i64..600),
        ) {
            let p = arbitrary_policy(threshold_pct, window, min_samples, interval, cooldown, failures, successes);
            let threshold = p.threshold_avail;
            let (drill_from, drill_len) = drill;
            let (maint_from, maint_len) = window_of_maintenance;
            let mut machine = StormMachine::new(t(0));
            let mut h = Harness::new();
            let mut now = t(0);
            let mut open = 0;
            let mut last_primary_not_healthy = t(0);
            let mut last_primary_down = t(0);
            let mut weights = Weights::NORMAL;
            // Whether the weights the machine last decided were reported applied since.
            let mut applied = true;
            for (dt, p_ok, b_ok, applies) in steps {
                now += Duration::seconds(dt);
                // Bias some runs towards long outages or long health.
                let p_ok = match bias { 1 => p_ok && dt % 3 != 0, 2 => p_ok || dt % 2 == 0, _ => p_ok };
                let (pa, ba) = h.record(now, p_ok, b_ok, &p);
                if !pa.availability.is_healthy(threshold) {
                    last_primary_not_healthy = now;
                }
                if pa.is_down(&p) {
                    last_primary_down = now;
                }
                applied |= applies;
                // A drill and a maintenance window somewhere in the run.
                let since_start = (now - t(0)).num_seconds();
                let drill_until = (since_start >= drill_from).then(|| t(drill_from + drill_len));
                let maintenance = (maint_from..maint_from + maint_len).contains(&since_start);
                let inputs = Inputs { primary: pa.into(), backup: ba.into(), step_applied: applied, drill_until, maintenance };
                let before = machine.weights();
                if let Some(d) = machine.evaluate(now, inputs, &p) {
                    if maintenance {
                        prop_assert!(d.storm != Some(StormChange::Opened), "a storm opened in a maintenance window");
                        prop_assert!(
                            !matches!(d.state, StormState::BackupUnhealthy | StormState::Unknown) || d.state == d.previous,
                            "entered {:?} in a maintenance window", d.state
                        );
                    }
                    if d.state == StormState::Drill && d.previous != StormState::Drill {
                        prop_assert!(drill_until.is_some_and(|u| now < u), "a drill started outside its time");
                    }
                    match d.storm {
                        Some(StormChange::Opened) => {
                            prop_assert!(pa.availability.is_below(threshold), "storm opened without a window below threshold: {pa:?}");
                            prop_assert!(pa.streak.failures() >= failures as u32, "storm opened after fewer than {failures} failures in a row: {pa:?}");
                            prop_assert_eq!(open, 0, "two open storms");
                            open += 1;
                        }
                        Some(StormChange::Closed) => {
                            prop_assert_eq!(open, 1, "closed a storm that was not open");
                            open -= 1;
                            // A blip during the ramp pauses it; only a primary that is down
                            // again sends it back to the storm and its cooldown.
                            prop_assert!(
                                now - last_primary_down >= Duration::seconds(i64::from(cooldown)) || cooldown == 0,
                                "storm closed less than the cooldown after the primary was down"
                            );
                        }
                        None => {}
                    }
                    if d.previous == StormState::Storm && d.weights.primary > before.primary {
                        prop_assert!(
                            now - last_primary_not_healthy >= Duration::seconds(i64::from(cooldown)) || cooldown == 0,
                            "ramp started before the primary was healthy for the cooldown"
                        );
                    }
                    if d.weights.backup > weights.backup {
                        prop_assert!(ba.can_take_traffic(&p), "traffic moved towards an unhealthy backup: {ba:?}");
                    }
                    // (A drill abandoned for a failing backup goes straight back.)
                    let abandoned = d.previous == StormState::Drill && !ba.can_take_traffic(&p);
                    if d.weights.primary > before.primary && !abandoned {
                        prop_assert!(applied, "ramp step {} → {} taken before {} was applied", before, d.weights, before);
                    }
                    prop_assert_eq!(d.weights.primary as u16 + d.weights.backup as u16, 100);
                    if d.weights != before {
                        applied = false;
                    }
                    weights = d.weights;
                }
                prop_assert_eq!(machine.state().storm_open(), open == 1);
                if !machine.state().storm_open() && machine.state() != StormState::Drill {
                    prop_assert_eq!(machine.weights(), Weights::NORMAL);
                }
            }
        }

        /// With the default policy, no probe sequence whose failures never run
        /// `consecutive_failures` long opens a storm, whatever the backup does.
        #[test]
        fn no_storm_without_enough_failures_in_a_row(
            outcomes in prop::collection::vec((any::<bool>(), any::<bool>()), 1..300),
        ) {
            let p = PolicyParams::defaults(PolicyKind::HttpAvailability);
            let mut machine = StormMachine::new(t(0));
            let mut h = Harness::new();
            let mut run = 0;
            for (k, (p_ok, b_ok)) in outcomes.into_iter().enumerate() {
                // Break any run that would reach the threshold.
                run = if p_ok { 0 } else { run + 1 };
                let p_ok = p_ok || run >= p.consecutive_failures;
                if p_ok { run = 0; }
                let now = t(k as i64 * i64::from(p.probe_interval_seconds));
                let (pa, ba) = h.record(now, p_ok, b_ok, &p);
                let d = machine.evaluate(now, i(pa, ba), &p);
                prop_assert!(d.as_ref().is_none_or(|d| d.storm.is_none() && d.weights == Weights::NORMAL), "{d:?}");
            }
        }

        /// From every state a domain can be restored in, a primary (and backup) that stay healthy
        /// bring it back to 100/0 with its storm closed within the window fill + cooldown +
        /// ramp steps × (interval + the provider's delay).
        #[test]
        fn every_restored_state_recovers_with_a_healthy_primary(
            state in prop::sample::select(StormState::ALL.to_vec()),
            held in prop::sample::select(vec![0u8, 25, 50, 100]),
            cooldown in 0i32..400,
            interval in 1i32..30,
            min_samples in 1i32..4,
            successes in 1i32..5,
            provider_delay in 0i64..5,
            age in 0i64..100_000,
        ) {
            let p = arbitrary_policy(90, 60, min_samples, interval, cooldown, 3, successes);
            let weights = if state.storm_open() || state == StormState::Drill { Weights::new(held) } else { Weights::NORMAL };
            let restored_at = t(age);
            let mut machine = StormMachine::restore(state, t(0), weights, restored_at);
            let mut h = Harness::new();
            let step = i64::from(interval);
            let bound = i64::from(p.window_seconds) + i64::from(cooldown.max(successes * interval))
                + (RAMP_STEPS.len() as i64 + 1) * (step + provider_delay + 1) + step;
            let mut decided_at = restored_at;
            let mut now = restored_at;
            while now - restored_at <= Duration::seconds(bound) {
                now += Duration::seconds(step);
                let (pa, ba) = h.record(now, true, true, &p);
                let applied = now - decided_at >= Duration::seconds(provider_delay);
                if let Some(d) = machine.evaluate(now, Inputs { primary: pa.into(), backup: ba.into(), step_applied: applied, drill_until: None, maintenance: false }, &p) {
                    prop_assert!(d.weights.primary >= weights.primary.min(d.weights.primary));
                    decided_at = now;
                }
                if machine.state() == StormState::Healthy && machine.weights() == Weights::NORMAL {
                    return Ok(());
                }
            }
            let (left, at) = (machine.state(), machine.weights());
            prop_assert!(false, "restored {state:?} at {weights} still {left:?} at {at} after {bound} s");
        }
    }

    /// Three vantages' views of the primary, each up, down or unknown.
    fn views(v: [u8; 3]) -> Vantages {
        Vantages {
            views: v
                .iter()
                .enumerate()
                .map(|(i, k)| crate::storm::VantageHealth {
                    vantage: format!("v{i}"),
                    node_id: format!("n{i}"),
                    health: match k {
                        0 => UP,
                        1 => DOWN,
                        _ => UNKNOWN,
                    },
                })
                .collect(),
        }
    }

    proptest! {
        /// Under a majority quorum, a storm never opens while no more than half of the vantages
        /// with a known window see the primary down — whatever the others report, however long.
        #[test]
        fn a_minority_of_vantages_never_opens_a_storm(
            steps in proptest::collection::vec(proptest::array::uniform3(0u8..3), 1..80),
        ) {
            let p = policy(30);
            let mut m = StormMachine::new(t(0));
            for (k, v) in steps.iter().enumerate() {
                let known = v.iter().filter(|x| **x < 2).count();
                let down = v.iter().filter(|x| **x == 1).count();
                let inputs = Inputs { primary: views(*v), backup: UP.into(), step_applied: true, drill_until: None, maintenance: false };
                let d = m.evaluate(t(k as i64 * 10), inputs, &p);
                if 2 * down <= known {
                    prop_assert!(d.as_ref().is_none_or(|d| d.storm != Some(StormChange::Opened)), "{v:?}: {d:?}");
                } else {
                    prop_assert!(m.state().storm_open() || m.state() == StormState::Recovering, "{v:?}: {:?}", m.state());
                }
            }
        }
    }
}
