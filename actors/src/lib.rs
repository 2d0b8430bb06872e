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
//! * [`storm`] — the pure core: availability windows and the storm state machine.
//! * [`probe`] — the probing port (request, result, outcome classes, the `Prober` trait).
//! * [`billing`] — billing arithmetic: a snapshot and its service's storms → a priced line.
//! * [`dns`] — DNS steering's pure core: the ChangeBatch planner and the provider port.
//! * [`usage`] — usage ingestion's source port and pure core (poll spans, attribution).
//! * [`verify`] — domain ownership verification's state machine (TXT challenge).
//! * [`engine`] — the actors (root supervisor, lease keeper, probe supervisor, domain actors,
//!   observation writer) and their ports to the database.
//!
//! The pure parts never read the clock, the network or the database: time is passed in, which
//! makes them unit- and property-testable. The actors reach the outside world only through
//! ports the `tranche` crate implements.

pub mod billing;
pub mod dns;
pub mod domain;
pub mod engine;
pub mod probe;
pub mod storm;
pub mod usage;
pub mod verify;
