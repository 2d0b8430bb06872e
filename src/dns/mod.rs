//! DNS providers (adapters of `tranche_engine::ports::DnsProvider`).
//!
//! * [`route53::Route53Provider`] — Amazon Route53 through `aws-sdk-route53` (any endpoint, so
//!   tests point it at `moto_server`).
//! * `NoopProvider` (in the engine crate) — logs and reports applied; the default without
//!   credentials.

pub mod route53;
