//! SLO tracking of batch jobs (issue 16, DESIGN.md §9): the rules, with no I/O.
//!
//! * [`calendar`] — business calendars in a time zone, and expected times as wall-clock
//!   offsets from a business date that may pass midnight, DST-safe.

pub mod calendar;
