//! Where a domain is probed *through* a given CDN.

use std::fmt;
use std::net::IpAddr;

use super::{Hostname, Invalid};

/// The address that reaches a customer hostname through one CDN: that CDN's edge hostname
/// (e.g. `example.com.cdn.cloudflare.net`, resolved at probe time) or an IP literal (no
/// resolution). The probe connects here with SNI and `Host` set to the customer hostname.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeTarget {
    Host(Hostname),
    Ip(IpAddr),
}

impl ProbeTarget {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let trimmed = input.trim();
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        Hostname::parse(trimmed)
            .map(Self::Host)
            .map_err(|e| Invalid::new(format!("must be an edge hostname or an IP address: {e}")))
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(h) => h.fmt(f),
            Self::Ip(ip) => ip.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_ips() {
        assert_eq!(
            ProbeTarget::parse("Edge.Fastly.net").unwrap().to_string(),
            "edge.fastly.net"
        );
        assert_eq!(
            ProbeTarget::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7"
        );
        assert_eq!(
            ProbeTarget::parse("[2001:db8::1]").unwrap().to_string(),
            "2001:db8::1"
        );
        assert!(ProbeTarget::parse("https://edge.fastly.net").is_err());
        assert!(ProbeTarget::parse("").is_err());
    }
}

/// The HTTP path a probe requests: absolute (`/…`), at most 1024 characters, no whitespace,
/// control characters or fragment. A query string is allowed (`/health?deep=1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbePath(String);

impl ProbePath {
    pub const DEFAULT: &'static str = "/";

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        if !input.starts_with('/') {
            return Err(Invalid::new("must start with '/' (e.g. \"/healthz\")"));
        }
        if input.len() > 1024 {
            return Err(Invalid::new("must be at most 1024 characters"));
        }
        if input
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            return Err(Invalid::new(
                "must not contain whitespace, control characters or a '#' fragment",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod probe_path_tests {
    use super::*;

    #[test]
    fn accepts_absolute_paths_only() {
        assert!(ProbePath::parse("/").is_ok());
        assert!(ProbePath::parse("/healthz?deep=1").is_ok());
        assert!(ProbePath::parse("healthz").is_err());
        assert!(ProbePath::parse("/a b").is_err());
        assert!(ProbePath::parse("/a#b").is_err());
        assert!(ProbePath::parse(&format!("/{}", "a".repeat(1024))).is_err());
    }
}
