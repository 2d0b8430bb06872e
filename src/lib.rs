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
//! This crate is the `tranche` binary and its adapters; the engine (actors and the pure logic
//! they drive, plus the parsed domain types) is the `tranche-actors` crate in `actors/`.
//!
//! * [`cli`] — the subcommands (`serve`, `migrate`, `openapi`, `demo`, `bench`) and process
//!   lifecycle.
//! * [`config`] — [`config::Settings`]: defaults, then `tranche.toml`, then environment.
//! * [`db`] — the connection pool, migrations, and [`db::embedded`], the private PostgreSQL
//!   started from the machine's binaries when no database URL is configured.
//! * [`store`] — Postgres repositories: every SQL statement the API runs, one module per table
//!   family, each query scoped to the calling customer.
//! * [`api`] — the HTTP surface (poem + poem-openapi): one module per resource, one error type
//!   ([`api::error::ApiError`]) with one JSON body shape, authentication, and the OpenAPI
//!   document that is committed under `openapi/` and drift-tested.
//! * [`startup`] — [`startup::Application`]: build on a listener (port 0 in tests), run until a
//!   shutdown signal. Tests boot exactly this.
//! * [`engine`] — the engine's ports over PostgreSQL (fenced decisions, shard leases,
//!   observations) and the configuration-change listener; starts the actor tree.
//! * [`notify`] — webhook delivery: the outbox store and the signing HTTP sender.
//! * [`probe`] — the network prober: one HTTP(S) request through one CDN, new connection each.
//! * [`demo`] — `tranche demo` and the switchable fake CDN edges it and the tests use.
//! * [`bench`] — `tranche bench …`, the engine benchmarks recorded in BENCHMARKS.md.
//! * [`usage`] — usage sources (Cloudflare's GraphQL analytics) and a local fake of them.
//! * [`telemetry`] — `tracing` subscriber setup (text for terminals, JSON for production).

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod dns;
pub mod engine;
pub mod http_guard;
pub mod notify;
pub mod probe;
pub mod secrets;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod usage;
