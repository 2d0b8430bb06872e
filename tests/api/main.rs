//! Integration tests: the real application, over HTTP, against a real PostgreSQL.

mod admin;
mod auth;
mod billing;
mod chaos;
mod cluster;
mod dns_faults;
mod domains;
mod engine;
mod fencing;
mod hardening;
mod health;
mod helpers;
mod isolation;
mod jobs;
mod openapi;
mod policies;
mod probe;
mod restart;
mod robustness;
mod route53;
mod services;
mod tenants;
mod usage;
mod verification;
mod walkthrough;
mod webhooks;
