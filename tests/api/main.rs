//! Integration tests: the real application, over HTTP, against a real PostgreSQL.

mod admin;
mod auth;
mod domains;
mod engine;
mod health;
mod helpers;
mod isolation;
mod openapi;
mod policies;
mod robustness;
mod services;
mod walkthrough;
