//! Tranche's pure core: the domain types and every rule, with no I/O.
//!
//! Nothing here reads the clock, the network or the database; time and inputs are passed in, so
//! every rule is unit- and property-tested without a runtime. Cargo enforces it: this crate
//! depends on no async runtime, no actor framework and no database driver (`cargo tree -p
//! tranche-core` lists chrono, chrono-tz (time zone data), rust_decimal and thiserror). The actors crate (`actors/`) drives these rules
//! from actors; the `tranche` crate loads their inputs and applies their plans.
//!
//! # Layout
//!
//! * [`domain`] — "parse, don't validate" newtypes: [`domain::Hostname`], [`domain::CdnName`],
//!   [`domain::ServiceName`], [`domain::ProbeTarget`], [`domain::ProbePath`], the storm policy
//!   parameters ([`domain::PolicyParams`]) and shards. Constructing one is the validation.
//! * [`storm`] — availability windows and the storm state machine.
//! * [`probe`] — what a probe asks and answers (request, result, outcome classes).
//! * [`observations`] — per-minute aggregation of probe results.
//! * [`billing`] — the invoice arithmetic (a snapshot and its service's storms → a priced line)
//!   and the billing run's plan (which invoice each line goes on, adjustments, sums).
//! * [`metering`] — usage events: identity and deduplication, exact quantities, accepted
//!   times, quota periods in a time zone, threshold crossings and over-quota admission.
//! * [`usage`] — usage ingestion (poll spans, attribution) and the snapshot revision rules.
//! * [`dns`] — DNS steering: the ChangeBatch planner and the provider's answers.
//! * [`events`] — which committed facts are announced to webhooks (storm, DNS, verification,
//!   certificate, invoice events).
//! * [`verify`] — domain ownership verification's state machine (TXT challenge).
//! * [`webhook`] — how long and how often a failing webhook delivery is retried.
//! * [`address_policy`] — which addresses are public (webhooks and probe targets).

pub mod address_policy;
pub mod billing;
pub mod dns;
pub mod domain;
pub mod events;
pub mod metering;
pub mod observations;
pub mod probe;
pub mod slo;
pub mod storm;
pub mod usage;
pub mod verify;
pub mod webhook;
