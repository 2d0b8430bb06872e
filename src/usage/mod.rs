//! Usage sources: CDN analytics the engine's UsageIngestor pulls from. [`cloudflare`] is the
//! first (GraphQL Analytics API); [`fake`] is a local stand-in that speaks the same protocol,
//! for tests and `tranche bench ingest`.

pub mod cloudflare;
pub mod fake;
