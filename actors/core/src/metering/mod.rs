//! Event-level metering (issue 15): the rules behind `POST /v1/usage-events`, with no I/O.
//!
//! * [`event`] — what a usage event is once parsed: its identity (customer, source, id), the
//!   metric, an exact non-negative quantity, and when it happened; what a replay of a stored
//!   event is (a duplicate, or a conflict when its content differs); which times are accepted.
//! * [`period`] — a quota's monthly period: from its billing day (1–28) at midnight in its
//!   time zone to the same day of the next month, whatever the offsets in between.
//! * [`quota`] — which thresholds (80 %, 100 %) an increment crosses, and whether an event over
//!   the quota is admitted (`notify`) or refused (`reject`).
//!
//! * [`batch`] — one group commit planned: each event's outcome, and what the accepted ones
//!   add to the minute rollups, the period totals and the hours folded into billing.
//!
//! The adapters (the batcher actor, the PostgreSQL store, the API) load, ask these, and apply.

pub mod batch;
pub mod event;
pub mod period;
pub mod quota;
