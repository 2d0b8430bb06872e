//! Where a domain is probed *through* a given CDN.

use std::fmt;
use std::net::IpAddr;

use super::{Hostname, Invalid};

/// The address that reaches a customer hostname through one CDN: that CDN's edge hostname
/// (e.g. `example.com.cdn.cloudflare.net`, resolved at probe time) or an IP literal (no
/// resolution), with an optional port (default: the scheme's). The probe connects here with SNI
/// and `Host` set to the customer hostname. Written `host`, `host:port`, `ip`, `ip:port` or
/// `[ipv6]:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeTarget {
    pub host: TargetHost,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    Name(Hostname),
    Ip(IpAddr),
}

impl ProbeTarget {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let trimmed = input.trim();
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            return Ok(Self {
                host: TargetHost::Ip(ip),
                port: None,
            });
        }
        // `[v6]`, `[v6]:port`, `host:port`, `v4:port`.
        let (host, port) = if let Some(rest) = trimmed.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| Invalid::new("has an unclosed '[' in an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| Invalid::new("must be [ipv6]:port"))?,
                ),
            };
            (inside, port)
        } else {
            match trimmed.rsplit_once(':') {
                Some((h, p)) if !trimmed.contains("://") => (h, Some(p)),
                _ => (trimmed, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Invalid::new(format!("has an invalid port {p:?} (1-65535)")))
            })
            .transpose()?;
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => TargetHost::Ip(ip),
            Err(_) => TargetHost::Name(Hostname::parse(host).map_err(|e| {
                Invalid::new(format!(
                    "must be an edge hostname or an IP address, optionally with :port ({e})"
                ))
            })?),
        };
        Ok(Self { host, port })
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (TargetHost::Name(h), None) => h.fmt(f),
            (TargetHost::Name(h), Some(p)) => write!(f, "{h}:{p}"),
            (TargetHost::Ip(ip), None) => ip.fmt(f),
            (TargetHost::Ip(IpAddr::V6(ip)), Some(p)) => write!(f, "[{ip}]:{p}"),
            (TargetHost::Ip(ip), Some(p)) => write!(f, "{ip}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ips_and_ports() {
        for (input, canonical) in [
            ("Edge.Fastly.net", "edge.fastly.net"),
            ("edge.fastly.net:8443", "edge.fastly.net:8443"),
            ("192.0.2.7", "192.0.2.7"),
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[::1]:8443", "[::1]:8443"),
        ] {
            assert_eq!(
                ProbeTarget::parse(input).unwrap().to_string(),
                canonical,
                "{input}"
            );
        }
        for bad in [
            "https://edge.fastly.net",
            "",
            "edge:0",
            "edge:99999",
            "edge:",
            "[::1",
            "[::1]x",
        ] {
            assert!(ProbeTarget::parse(bad).is_err(), "{bad:?}");
        }
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
