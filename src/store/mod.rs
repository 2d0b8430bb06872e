//! Postgres repositories: every SQL statement behind the API.
//!
//! Each function takes the calling customer's id (or works on a row reached through one), so
//! tenant isolation is a property of the SQL itself: another customer's rows are simply not
//! found. Functions return plain row structs; the API layer turns them into response objects.
//! Constraint violations surface as `sqlx::Error` and are mapped to 409/422 by constraint name
//! in `api::error`.

pub mod api_keys;
pub mod customers;
pub mod dns;
pub mod domains;
pub mod invoices;
pub mod jobs;
pub mod policies;
pub mod services;
pub mod settings;
pub mod storms;
pub mod usage;
pub mod webhooks;
