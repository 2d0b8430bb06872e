//! Tranche's engine crate.
//!
//! Everything that decides — as opposed to everything that talks to the outside world — lives
//! here: the parsed domain types every layer shares, and (from the engine issue on) the actors
//! and the pure core logic they drive (storm state machine, availability windows, billing
//! arithmetic). The root `tranche` package holds the adapters: HTTP API, Postgres repositories,
//! DNS/CDN providers, configuration and the CLI.
//!
//! # Layout
//!
//! * [`domain`] — "parse, don't validate" newtypes: [`domain::Hostname`], [`domain::CdnName`],
//!   [`domain::ServiceName`], [`domain::ProbeTarget`], [`domain::ProbePath`] and the storm policy parameters
//!   ([`domain::PolicyParams`]). Constructing one is the validation; every value of these types
//!   is valid, so the layers behind the API never re-check them.
//!
//! The crate has no I/O: it never reads the clock, the network or the database. Time is passed
//! in, which is what makes the logic unit- and property-testable.

pub mod domain;
pub mod engine;
pub mod probe;
pub mod storm;
