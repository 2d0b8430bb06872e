//! Vantages: which nodes probe a shard's domains besides its owner.
//!
//! Every node declares a vantage (a region label). A shard's domains are probed by its owner —
//! the single decider — and by nodes of up to `per_domain − 1` *other* vantages, which only
//! observe. The observers are chosen by rendezvous (highest-random-weight) hashing: first the
//! vantages, ranked by a hash of (shard, vantage), then within each chosen vantage the node
//! ranked highest by a hash of (shard, node). Every node computes the same answer from the same
//! membership, and a node coming or going moves only the shards it wins or held.

use std::collections::{BTreeMap, BTreeSet};

use super::SHARDS;

/// A live node and its vantage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub node_id: String,
    pub vantage: String,
}

fn score(shard: u16, key: &str) -> u64 {
    // FNV-1a over the shard and the key, then a 64-bit finaliser (splitmix) so that close keys
    // rank independently.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in shard.to_be_bytes().iter().chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The observers of `shard` (not its owner), at most `per_domain − 1`, each of a distinct
/// vantage other than the owner's, best ranked first.
pub fn observers<'a>(
    shard: u16,
    owner: &Member,
    live: &'a [Member],
    per_domain: usize,
) -> Vec<&'a Member> {
    let mut by_vantage: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in live {
        if m.vantage != owner.vantage {
            by_vantage.entry(m.vantage.as_str()).or_default().push(m);
        }
    }
    let mut vantages: Vec<(&str, Vec<&Member>)> = by_vantage.into_iter().collect();
    vantages.sort_by_key(|(v, _)| std::cmp::Reverse((score(shard, v), *v)));
    vantages
        .into_iter()
        .take(per_domain.saturating_sub(1))
        .filter_map(|(_, nodes)| {
            nodes
                .into_iter()
                .max_by_key(|m| (score(shard, &m.node_id), m.node_id.as_str()))
        })
        .collect()
}

/// The shards `me` observes for other owners, given the live members and each shard's owner.
/// Shards without a live owner are observed by nobody (their domains are not probed until an
/// owner takes them).
pub fn observed_shards(
    me: &str,
    live: &[Member],
    owners: &BTreeMap<u16, String>,
    per_domain: usize,
) -> BTreeSet<u16> {
    let by_id: BTreeMap<&str, &Member> = live.iter().map(|m| (m.node_id.as_str(), m)).collect();
    (0..SHARDS)
        .filter(|shard| {
            let Some(owner) = owners.get(shard).and_then(|o| by_id.get(o.as_str())) else {
                return false;
            };
            owner.node_id != me
                && observers(*shard, owner, live, per_domain)
                    .iter()
                    .any(|m| m.node_id == me)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(node: &str, vantage: &str) -> Member {
        Member {
            node_id: node.into(),
            vantage: vantage.into(),
        }
    }

    #[test]
    fn one_node_per_other_vantage_up_to_the_limit() {
        let live = vec![
            m("a1", "eu"),
            m("a2", "eu"),
            m("b1", "us"),
            m("b2", "us"),
            m("c1", "ap"),
            m("d1", "sa"),
        ];
        for shard in 0..SHARDS {
            let owner = &live[0];
            let obs = observers(shard, owner, &live, 3);
            assert_eq!(obs.len(), 2);
            let vantages: BTreeSet<&str> = obs.iter().map(|o| o.vantage.as_str()).collect();
            assert_eq!(vantages.len(), 2, "distinct vantages");
            assert!(!vantages.contains("eu"), "never the owner's vantage");
        }
        // Fewer vantages than asked for: as many as exist.
        let two = vec![m("a", "eu"), m("b", "us"), m("c", "us")];
        assert_eq!(observers(7, &two[0], &two, 3).len(), 1);
        // One vantage (a single-node install, or every node in one region): nobody observes.
        let one = vec![m("a", "local"), m("b", "local")];
        assert!(observers(7, &one[0], &one, 3).is_empty());
        assert!(observers(7, &live[0], &live, 1).is_empty());
    }

    #[test]
    fn observation_is_spread_over_the_nodes_of_a_vantage() {
        let live = vec![m("a", "eu"), m("b1", "us"), m("b2", "us")];
        let owners: BTreeMap<u16, String> = (0..SHARDS).map(|s| (s, "a".to_owned())).collect();
        let b1 = observed_shards("b1", &live, &owners, 3).len();
        let b2 = observed_shards("b2", &live, &owners, 3).len();
        assert_eq!(b1 + b2, SHARDS as usize);
        assert!(b1 > 80 && b2 > 80, "{b1} / {b2}");
        // The owner observes none of its own shards.
        assert!(observed_shards("a", &live, &owners, 3).is_empty());
    }

    proptest! {
        /// The choice depends on the membership, not on the order it is listed in; and a member
        /// leaving moves only the shards it observed.
        #[test]
        fn deterministic_and_minimal_movement(
            members in proptest::collection::btree_set((0u8..8, 0u8..4), 2..10),
            shard in 0..SHARDS,
            leaver in 0usize..10,
        ) {
            let live: Vec<Member> = members.iter().map(|(n, v)| m(&format!("n{n}-{v}"), &format!("v{v}"))).collect();
            let owner = live[0].clone();
            let chosen: Vec<String> = observers(shard, &owner, &live, 3).iter().map(|o| o.node_id.clone()).collect();
            let mut reversed = live.clone();
            reversed.reverse();
            let again: Vec<String> = observers(shard, &owner, &reversed, 3).iter().map(|o| o.node_id.clone()).collect();
            prop_assert_eq!(&chosen, &again);
            let leaver = &live[1 + leaver % (live.len() - 1)];
            if !chosen.contains(&leaver.node_id) {
                let rest: Vec<Member> = live.iter().filter(|x| x.node_id != leaver.node_id).cloned().collect();
                let after: Vec<String> = observers(shard, &owner, &rest, 3).iter().map(|o| o.node_id.clone()).collect();
                prop_assert_eq!(&chosen, &after);
            }
        }
    }
}
