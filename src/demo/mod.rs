//! `tranche demo`: a self-contained storm on local fake CDN edges (see [`edge`]).

pub mod edge;
