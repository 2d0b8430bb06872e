//! SLO tracking of batch jobs (issue 16, DESIGN.md §9): the rules, with no I/O.
//!
//! * [`calendar`] — business calendars in a time zone, and expected times as wall-clock
//!   offsets from a business date that may pass midnight, DST-safe;
//! * [`performance`] — one SLO on one business date from its job reports: expected and actual
//!   times, status, the alerts due, and when to look again (the tracker's next timer);
//! * [`report`] — an SLO over many dates: per job, duration percentiles, trend and projected
//!   miss; late and early shares; a suggested expected end;
//! * [`trend`] — the statistics behind it: Theil–Sen trends of durations and the projected
//!   date of a miss, shares of dates late or early, percentiles;
//! * [`tracking`] — what the live tracker (one actor per SLO) re-evaluates, and when it wakes.

pub mod calendar;
pub mod performance;
pub mod report;
pub mod tracking;
pub mod trend;
