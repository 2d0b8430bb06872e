//! Parsed domain types shared by the API, the repositories and the engine.
//!
//! Each type's constructor is its validation, and each error names what was wrong in words an
//! API client can act on; the HTTP layer adds the name of the field.

mod cdn;
mod hostname;
mod names;
mod policy;
mod probe;
mod shard;
mod target;
pub mod vantage;

pub use cdn::{CUSTOM_PREFIX, CdnName, KNOWN_CDNS};
pub use hostname::Hostname;
pub use names::ServiceName;
pub use policy::{PolicyError, PolicyKind, PolicyParams, PolicyPatch, Quorum};
pub use probe::{ExpectedStatuses, ProbeScheme};
pub use shard::{SHARDS, customer_shard, default_zone, shard_of};
pub use target::{ProbePath, ProbeTarget, TargetHost};

/// Levenshtein distance between two strings (for "did you mean" hints).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Why a value was rejected. The message is meant for the API client, without the field name
/// (the caller knows which field it parsed and adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
