//! The storm engine's pure core: availability windows and the per-domain storm state machine.
//!
//! No I/O, no clock: every function takes the current time as an argument, which is what lets
//! the property tests below drive thousands of random probe sequences in milliseconds. The
//! `DomainActor` owns one [`AvailabilityWindow`] per CDN and one [`StormMachine`], feeds probe
//! results in, and persists every [`Decision`] before acting on it.

mod machine;
mod quorum;
mod window;

pub use machine::{
    CdnHealth, Decision, Inputs, RAMP_STEPS, StormChange, StormMachine, StormState, Weights,
};
pub use quorum::{DisagreementDamper, Quorum, VantageHealth, Vantages, views};
pub use window::{Availability, AvailabilityWindow, Streak};

/// CDN views the storm tests share: a window all up, and one all down after a run of failures.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Availability, CdnHealth, Streak};

    pub const UP: CdnHealth = CdnHealth::new(
        Availability::Known {
            successes: 10,
            attempts: 10,
        },
        Streak::succeeding(10),
    );
    pub const DOWN: CdnHealth = CdnHealth::new(
        Availability::Known {
            successes: 0,
            attempts: 10,
        },
        Streak::failing(10),
    );
}
