//! Everything that talks to PostgreSQL: the pool and migrations ([`pool`]), the embedded
//! private server ([`embedded`]), the engine's ports ([`engine_store`], [`leases`], [`billing`],
//! [`usage`], [`verification`], [`outbox`]) and the API's repositories (the rest).
//!
//! The repositories behind the API:
//!
//! Each function takes the calling customer's id (or works on a row reached through one), so
//! tenant isolation is a property of the SQL itself: another customer's rows are simply not
//! found. Functions return plain row structs; the API layer turns them into response objects.
//! Constraint violations surface as `sqlx::Error` and are mapped to 409/422 by constraint name
//! in `api::error`.

pub mod api_keys;
pub mod billing;
pub mod customers;
pub mod dns;
pub mod domains;
pub mod drills;
pub mod embedded;
pub mod engine_store;
pub mod invoices;
pub mod jobs;
pub mod leases;
pub mod metering;
pub mod outbox;
pub mod policies;
pub mod pool;
pub mod read_cache;
pub mod services;
pub mod settings;
pub mod slo;
pub mod status;
pub mod storms;
pub mod usage;
pub mod vantages;
pub mod verification;
pub mod webhooks;

/// A database error as the engine's ports report it (the error itself kept as the source).
pub(crate) fn port_error(e: sqlx::Error) -> tranche_actors::ports::StoreError {
    tranche_actors::ports::StoreError::Backend(Box::new(e))
}

/// A time in an event payload: RFC 3339, as PostgreSQL writes a `timestamptz` into JSON.
pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    serde_json::Value::String(t.to_rfc3339())
}
