//! One address policy for everything Tranche connects to on a customer's behalf — probe targets
//! and webhook receivers: only globally reachable addresses, unless the operator allows private
//! ones (`probe_allow_private`, `webhook_allow_private`).
//!
//! Built from the IANA special-purpose address registries
//! (<https://www.iana.org/assignments/iana-ipv4-special-registry>,
//! <https://www.iana.org/assignments/iana-ipv6-special-registry>): every block whose
//! "Globally Reachable" is false is refused, plus multicast, the reserved 240/4 and the
//! broadcast address. Addresses that embed an IPv4 address — IPv4-mapped (`::ffff:a.b.c.d`),
//! IPv4-compatible (`::a.b.c.d`, deprecated: refused), NAT64 (`64:ff9b::/96`) and 6to4
//! (`2002::/16`) — are judged by the IPv4 address they lead to, so `64:ff9b::7f00:1` is
//! loopback. Names: `localhost` and `*.localhost`, with or without a trailing dot.
//!
//! Checked when a webhook URL is created and at every connection (after DNS resolution, inside
//! the connecting client, so a name cannot resolve differently between check and use).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `(network, prefix length)` blocks of IPv4 that are not globally reachable.
const V4_BLOCKED: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link local
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments (but .9 and .10, below)
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved (and 255.255.255.255, limited broadcast)
];

/// Globally reachable exceptions inside blocked IPv4 blocks.
const V4_GLOBAL: &[([u8; 4], u8)] = &[
    ([192, 0, 0, 9], 32),  // Port Control Protocol anycast
    ([192, 0, 0, 10], 32), // Traversal Using Relays around NAT anycast
];

/// `(network, prefix length)` blocks of IPv6 that are not globally reachable (the embedding
/// prefixes are handled before these).
const V6_BLOCKED: &[([u16; 8], u8)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 96), // unspecified, loopback, IPv4-compatible
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), // local-use IPv4/IPv6 translation
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64), // discard-only
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), // IETF protocol assignments (Teredo, …)
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), // documentation
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), // segment routing SIDs
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), // unique local
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), // link local
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), // site local (deprecated)
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), // multicast
];

/// Globally reachable exceptions inside blocked IPv6 blocks.
const V6_GLOBAL: &[([u16; 8], u8)] = &[
    ([0x2001, 1, 0, 0, 0, 0, 0, 1], 128),    // PCP anycast
    ([0x2001, 1, 0, 0, 0, 0, 0, 2], 128),    // TURN anycast
    ([0x2001, 3, 0, 0, 0, 0, 0, 0], 32),     // AMT
    ([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48), // AS112-v6
    ([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),  // ORCHIDv2
    ([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28),  // drone remote ID
];

fn v4_in(ip: Ipv4Addr, (net, len): ([u8; 4], u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v6_in(ip: Ipv6Addr, (net, len): ([u16; 8], u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn v4_is_public(ip: Ipv4Addr) -> bool {
    V4_GLOBAL.iter().any(|b| v4_in(ip, *b)) || !V4_BLOCKED.iter().any(|b| v4_in(ip, *b))
}

/// The IPv4 address an IPv6 address leads to, for the forms that embed one: IPv4-mapped,
/// NAT64 (well-known prefix) and 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if v6_in(ip, ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)) {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low(s[1], s[2]));
    }
    None
}

/// Whether Tranche may connect to `ip` on a customer's behalf without the operator's leave.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_public(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_is_public(v4),
            None => {
                V6_GLOBAL.iter().any(|b| v6_in(v6, *b)) || !V6_BLOCKED.iter().any(|b| v6_in(v6, *b))
            }
        },
    }
}

/// Whether `host` names this machine whatever DNS says: `localhost`, `*.localhost`, with or
/// without a trailing dot, in any case.
pub fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_special_purpose_registries_are_refused_and_the_internet_is_not() {
        let cases: &[(&str, bool)] = &[
            // IPv4
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("100.128.0.1", true),
            ("127.0.0.1", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.32.0.1", true),
            ("192.0.0.1", false),
            ("192.0.0.9", true),
            ("192.0.2.10", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.51.100.7", false),
            ("203.0.113.7", false),
            ("224.0.0.1", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            ("1.1.1.1", true),
            ("151.101.1.57", true),
            ("192.31.196.1", true),
            // IPv6
            ("::", false),
            ("::1", false),
            ("::127.0.0.1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:1.1.1.1", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a00:1", false),
            ("64:ff9b::101:101", true),
            ("64:ff9b:1::1", false),
            ("2002:7f00:1::", false),
            ("2002:c0a8:101::1", false),
            ("2002:101:101::1", true),
            ("100::1", false),
            ("2001::1", false),
            ("2001:2::1", false),
            ("2001:4:112::1", true),
            ("2001:db8::1", false),
            ("3fff::1", false),
            ("5f00::1", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("2606:4700::1111", true),
            ("2a04:4e42::1", true),
        ];
        for (ip, public) in cases {
            assert_eq!(is_public(ip.parse().unwrap()), *public, "{ip}");
        }
    }

    #[test]
    fn localhost_by_any_spelling() {
        for name in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "a.localhost",
            "b.a.localhost.",
        ] {
            assert!(is_local_name(name), "{name}");
        }
        for name in ["localhost.example.com", "notlocalhost", "example.com"] {
            assert!(!is_local_name(name), "{name}");
        }
    }
}
