//! The probing port: what the engine asks for and what it gets back. The network
//! implementation lives in the `tranche` crate (`src/prober/`); tests and the demo may supply
//! their own.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{ExpectedStatuses, ProbePath, ProbeScheme, ProbeTarget};

/// Which of a service's two CDNs a probe goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cdn {
    Primary,
    Backup,
}

impl Cdn {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Backup => "backup",
        }
    }
}

/// One probe: fetch `path` of `hostname` through `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Which of the domain's CDNs the probe goes through.
    pub cdn: Cdn,
    /// The customer hostname: SNI and `Host` header.
    pub hostname: String,
    /// The CDN's address for it.
    pub target: ProbeTarget,
    pub scheme: ProbeScheme,
    pub path: ProbePath,
    pub expected: ExpectedStatuses,
    pub timeout: Duration,
}

/// How a probe ended. Everything but `Ok` counts as a failure of that CDN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// Answered with a status outside the expected set.
    HttpStatus,
    Timeout,
    /// TCP connection refused, reset or unreachable.
    Connect,
    /// TLS handshake or certificate failure.
    Tls,
    /// The target's name did not resolve.
    Dns,
    /// The target resolved to a private/loopback address and the operator does not allow those.
    Blocked,
    /// Malformed HTTP response.
    Protocol,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::HttpStatus => "http_status",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Dns => "dns",
            Self::Blocked => "blocked",
            Self::Protocol => "protocol",
        }
    }
}

/// What a probe observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// When the probe started.
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
    /// Start to response headers (or to failure).
    pub latency_ms: u32,
    pub status: Option<u16>,
    /// The served certificate's expiry (HTTPS).
    pub cert_expires_at: Option<DateTime<Utc>>,
    /// Human-readable detail of a failure.
    pub error: Option<String>,
}

impl ProbeResult {
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}
