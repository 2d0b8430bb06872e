//! Tranche: multi-CDN storm insurance.
//!
//! Tranche probes every customer hostname through its primary and its backup CDN separately,
//! declares a *storm* when the primary's availability falls below the customer's policy, moves
//! traffic to the backup by rewriting weighted DNS records, moves it back when the storm is over,
//! and bills usage with a storm-time discount. See `README.md` for running it and
//! `../shared/DESIGN.md` for the architecture.
//!
//! # Layout
//!
//! The workspace has three crates (and `bench/`, the benchmarks, outside the product binary): `actors/`
//! (tranche-actors: the actors and the ports they reach the world through), `actors/core/`
//! (tranche-core: the pure engine they drive — domain types and every rule, no I/O) and this
//! one, the `tranche` binary with its adapters, one folder per thing it talks to:
//!
//! * [`api`] — the HTTP surface (poem + poem-openapi): one module per resource, one error type
//!   ([`api::error::ApiError`]) with one JSON body shape, authentication, the hardened listener
//!   ([`api::guard`]) and the OpenAPI document committed under `openapi/` and drift-tested.
//! * [`postgres`] — every SQL statement: the pool, migrations and the embedded private server
//!   ([`postgres::embedded`]); the API's repositories (each query scoped to the calling
//!   customer); the engine's ports (fenced decisions, leases, billing runs, usage, the webhook
//!   outbox).
//! * [`route53`] — the DNS provider over Amazon Route53.
//! * [`cloudflare`] — the usage source over Cloudflare's GraphQL analytics, and a local fake of
//!   it.
//! * [`webhook`] — the webhook sender: Standard Webhooks signing, Slack text, HTTP.
//! * [`prober`] — the network prober: one HTTP(S) request through one CDN, new connection each.
//! * [`resolver`] — DNS resolution shared by the prober, and TXT lookups for ownership checks.
//! * [`node`] — wires the adapters to the engine, listens for configuration changes, starts the
//!   actor tree.
//! * [`startup`] — [`startup::Application`]: build on a listener (port 0 in tests), run until a
//!   shutdown signal. Tests boot exactly this.
//! * [`cli`] — the subcommands (`serve`, `migrate`, `openapi`, `demo`) and process
//!   lifecycle; [`config`] — defaults, then `tranche.toml`, then environment.
//! * [`demo`] — `tranche demo` and the switchable fake CDN edges it and the tests use.
//! * [`secrets`] — sealing of webhook secrets at rest; [`telemetry`] — `tracing` setup.

pub mod api;
pub mod cli;
pub mod cloudflare;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod metrics;
pub mod node;
pub mod postgres;
pub mod prober;
pub mod resolver;
pub mod route53;
pub mod secrets;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod webhook;
pub mod wording;
