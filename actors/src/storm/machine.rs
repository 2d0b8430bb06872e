//! The per-domain storm state machine.
//!
//! ```text
//!            primary < threshold, backup healthy
//!   Healthy ───────────────────────────────────────▶ Storm (weights 0/100, storm opened)
//!    ▲  │ primary < threshold, backup NOT healthy        │ primary ≥ threshold for cooldown_seconds
//!    │  ▼                                                ▼
//!    │ BackupUnhealthy (no failover: 100/0)          Recovering (25/75 → 50/50 → …)
//!    │   primary healthy → Healthy;                      │ one step per probe interval the
//!    │   backup healthy → Storm                          │ primary stays healthy; primary fails
//!    │                                                   │ again → Storm
//!    └──────────────────── last step (100/0): storm closed ┘
//! ```
//!
//! Invariants (property-tested below): a storm opens only when the primary's window is known
//! and below the threshold; traffic never moves *towards* the backup unless the backup is
//! healthy; at most one storm is open; a storm closes only after the primary has been healthy
//! for the whole cooldown.

use std::fmt;

use chrono::{DateTime, Duration, Utc};

use super::Availability;
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
    /// to a dead backup is worse than staying); visible, and alerted on by a later issue.
    BackupUnhealthy,
}

impl StormState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Storm => "storm",
            Self::Recovering => "recovering",
            Self::BackupUnhealthy => "backup_unhealthy",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Healthy,
            Self::Storm,
            Self::Recovering,
            Self::BackupUnhealthy,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
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

/// A change of state or desired weights. The actor commits it (with the storm event, if any)
/// before anything acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub at: DateTime<Utc>,
    pub previous: StormState,
    pub state: StormState,
    pub weights: Weights,
    pub storm: Option<StormChange>,
    /// The windows that triggered the decision.
    pub primary: Availability,
    pub backup: Availability,
}

/// One domain's storm state. Construct with [`StormMachine::new`] or restore from the persisted
/// state with [`StormMachine::restore`]; feed it with [`StormMachine::evaluate`].
#[derive(Debug, Clone)]
pub struct StormMachine {
    state: StormState,
    since: DateTime<Utc>,
    weights: Weights,
    /// Start of the current unbroken run of evaluations with a healthy primary.
    primary_healthy_since: Option<DateTime<Utc>>,
    /// When the current ramp step was applied (Recovering only).
    step_at: DateTime<Utc>,
}

impl StormMachine {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self::restore(StormState::Healthy, now, Weights::NORMAL, now)
    }

    /// Rebuilds the machine from persisted state. The primary's healthy run restarts from
    /// scratch: after a restart the cooldown is counted again rather than assumed.
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
            step_at: now,
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

    /// Evaluates the windows at `now`; returns the decision if state or weights change.
    pub fn evaluate(
        &mut self,
        now: DateTime<Utc>,
        primary: Availability,
        backup: Availability,
        policy: &PolicyParams,
    ) -> Option<Decision> {
        let threshold = policy.threshold_avail;
        let primary_below = primary.is_below(threshold);
        let primary_healthy = primary.is_healthy(threshold);
        let backup_healthy = backup.is_healthy(threshold);
        if primary_healthy {
            self.primary_healthy_since.get_or_insert(now);
        } else {
            self.primary_healthy_since = None;
        }
        let healthy_for = |since: Option<DateTime<Utc>>| since.map_or(Duration::MIN, |s| now - s);

        let (state, weights, storm) = match self.state {
            StormState::Healthy | StormState::BackupUnhealthy
                if primary_below && backup_healthy =>
            {
                (
                    StormState::Storm,
                    Weights::FAILOVER,
                    Some(StormChange::Opened),
                )
            }
            StormState::Healthy if primary_below => {
                (StormState::BackupUnhealthy, Weights::NORMAL, None)
            }
            StormState::BackupUnhealthy if primary_healthy => {
                (StormState::Healthy, Weights::NORMAL, None)
            }
            StormState::Healthy | StormState::BackupUnhealthy => return None,

            StormState::Storm => {
                let cooldown = Duration::seconds(i64::from(policy.cooldown_seconds));
                if healthy_for(self.primary_healthy_since) >= cooldown {
                    self.ramp_step()
                } else if self.weights != Weights::FAILOVER && backup_healthy && !primary_healthy {
                    // Weights were held while the backup was unhealthy; it is healthy now.
                    (StormState::Storm, Weights::FAILOVER, None)
                } else {
                    return None;
                }
            }
            StormState::Recovering => {
                if primary_below {
                    let weights = if backup_healthy {
                        Weights::FAILOVER
                    } else {
                        self.weights
                    };
                    (StormState::Storm, weights, None)
                } else {
                    let interval = Duration::seconds(i64::from(policy.probe_interval_seconds));
                    let healthy_through_step = self
                        .primary_healthy_since
                        .is_some_and(|s| s <= self.step_at);
                    if healthy_through_step && now - self.step_at >= interval {
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
            self.step_at = now;
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

    const UP: Availability = Availability::Known {
        successes: 10,
        attempts: 10,
    };
    const DOWN: Availability = Availability::Known {
        successes: 0,
        attempts: 10,
    };
    const UNKNOWN: Availability = Availability::Unknown { attempts: 1 };

    #[test]
    fn full_storm_cycle_with_ramp_back() {
        let p = policy(30);
        let mut m = StormMachine::new(t(0));
        assert_eq!(m.evaluate(t(1), UP, UP, &p), None);
        let d = m.evaluate(t(10), DOWN, UP, &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (
                StormState::Storm,
                Weights::FAILOVER,
                Some(StormChange::Opened)
            )
        );
        assert_eq!(m.evaluate(t(20), DOWN, UP, &p), None);
        // Healthy from t=30; cooldown 30 s → Recovering at t=60, not before.
        assert_eq!(m.evaluate(t(30), UP, UP, &p), None);
        assert_eq!(m.evaluate(t(50), UP, UP, &p), None);
        let d = m.evaluate(t(60), UP, UP, &p).unwrap();
        assert_eq!(
            (d.state, d.weights),
            (StormState::Recovering, Weights::new(25))
        );
        // One step per probe interval (10 s).
        assert_eq!(m.evaluate(t(65), UP, UP, &p), None);
        let d = m.evaluate(t(70), UP, UP, &p).unwrap();
        assert_eq!(d.weights, Weights::new(50));
        let d = m.evaluate(t(80), UP, UP, &p).unwrap();
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
        assert_eq!(m.evaluate(t(1), UNKNOWN, UP, &p), None);
        assert_eq!(m.evaluate(t(2), UNKNOWN, UNKNOWN, &p), None);
        assert_eq!(m.state(), StormState::Healthy);
    }

    #[test]
    fn no_failover_to_an_unhealthy_backup() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        let d = m.evaluate(t(1), DOWN, DOWN, &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (StormState::BackupUnhealthy, Weights::NORMAL, None)
        );
        assert_eq!(m.evaluate(t(2), DOWN, UNKNOWN, &p), None);
        // The backup recovers: now fail over.
        let d = m.evaluate(t(3), DOWN, UP, &p).unwrap();
        assert_eq!(
            (d.state, d.storm),
            (StormState::Storm, Some(StormChange::Opened))
        );
    }

    #[test]
    fn backup_only_outage_changes_nothing_but_the_visible_state_when_primary_is_fine() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        assert_eq!(m.evaluate(t(1), UP, DOWN, &p), None);
        assert_eq!(m.state(), StormState::Healthy);
    }

    #[test]
    fn relapse_during_recovery_returns_to_storm_without_a_new_event() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(1), DOWN, UP, &p).unwrap();
        let d = m.evaluate(t(2), UP, UP, &p).unwrap();
        assert_eq!(d.state, StormState::Recovering);
        let d = m.evaluate(t(3), DOWN, UP, &p).unwrap();
        assert_eq!(
            (d.state, d.weights, d.storm),
            (StormState::Storm, Weights::FAILOVER, None)
        );
    }

    #[test]
    fn relapse_with_a_dead_backup_holds_the_weights() {
        let p = policy(0);
        let mut m = StormMachine::new(t(0));
        m.evaluate(t(1), DOWN, UP, &p).unwrap();
        m.evaluate(t(2), UP, UP, &p).unwrap();
        let d = m.evaluate(t(3), DOWN, DOWN, &p).unwrap();
        assert_eq!((d.state, d.weights), (StormState::Storm, Weights::new(25)));
        let d = m.evaluate(t(4), DOWN, UP, &p).unwrap();
        assert_eq!(d.weights, Weights::FAILOVER);
    }

    /// One step of a random scenario: seconds since the last step, and the two probe outcomes.
    fn step() -> impl Strategy<Value = (i64, bool, bool)> {
        (1i64..15, any::<bool>(), any::<bool>())
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
            bias in 0u8..4,
        ) {
            let window = window.max(interval * min_samples);
            let p = PolicyParams::new(PolicyKind::HttpAvailability, &PolicyPatch {
                threshold_avail: Some(Decimal::new(i64::from(threshold_pct), 2)),
                window_seconds: Some(window),
                min_samples: Some(min_samples),
                probe_interval_seconds: Some(interval),
                cooldown_seconds: Some(cooldown),
                ..Default::default()
            }).unwrap();
            let threshold = p.threshold_avail;
            let mut machine = StormMachine::new(t(0));
            let (mut primary_w, mut backup_w) = (AvailabilityWindow::new(), AvailabilityWindow::new());
            let mut now = t(0);
            let mut open = 0;
            let mut last_primary_not_healthy = t(0);
            let mut weights = Weights::NORMAL;
            for (dt, p_ok, b_ok) in steps {
                now += Duration::seconds(dt);
                // Bias some runs towards long outages or long health.
                let p_ok = match bias { 1 => p_ok && dt % 3 != 0, 2 => p_ok || dt % 2 == 0, _ => p_ok };
                primary_w.record(now, p_ok);
                backup_w.record(now, b_ok);
                let pa = primary_w.availability(now, window, min_samples);
                let ba = backup_w.availability(now, window, min_samples);
                if !pa.is_healthy(threshold) {
                    last_primary_not_healthy = now;
                }
                if let Some(d) = machine.evaluate(now, pa, ba, &p) {
                    match d.storm {
                        Some(StormChange::Opened) => {
                            prop_assert!(pa.is_below(threshold), "storm opened without a window below threshold: {pa:?}");
                            prop_assert_eq!(open, 0, "two open storms");
                            open += 1;
                        }
                        Some(StormChange::Closed) => {
                            prop_assert_eq!(open, 1, "closed a storm that was not open");
                            open -= 1;
                            prop_assert!(
                                now - last_primary_not_healthy >= Duration::seconds(i64::from(cooldown)) || cooldown == 0,
                                "storm closed before the primary was healthy for the cooldown"
                            );
                        }
                        None => {}
                    }
                    if d.weights.backup > weights.backup {
                        prop_assert!(ba.is_healthy(threshold), "traffic moved towards an unhealthy backup: {ba:?}");
                    }
                    prop_assert_eq!(d.weights.primary as u16 + d.weights.backup as u16, 100);
                    weights = d.weights;
                }
                prop_assert_eq!(machine.state().storm_open(), open == 1);
                if machine.state() == StormState::Healthy || machine.state() == StormState::BackupUnhealthy {
                    prop_assert_eq!(machine.weights(), Weights::NORMAL);
                }
            }
        }
    }
}
