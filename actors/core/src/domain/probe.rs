//! Probe settings of a domain that are not addresses: scheme and accepted statuses.

use std::fmt;

use super::Invalid;

/// How a domain is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeScheme {
    Http,
    Https,
}

impl ProbeScheme {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Ok(Self::Http),
            "https" => Ok(Self::Https),
            other => Err(Invalid::new(format!(
                "must be \"http\" or \"https\" (got {other:?})"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// HTTP statuses that count as success: a comma-separated list of codes and inclusive ranges,
/// e.g. `200-399` (the default) or `200,204,301-302`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpectedStatuses(Vec<(u16, u16)>);

impl ExpectedStatuses {
    pub const DEFAULT: &'static str = "200-399";

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let code = |c: &str| {
                c.parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| {
                        Invalid::new(format!("has {c:?}, which is not an HTTP status (100-599)"))
                    })
            };
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(Invalid::new(format!("has the empty range {lo}-{hi}")));
            }
            ranges.push((lo, hi));
        }
        if ranges.is_empty() {
            return Err(Invalid::new("must list at least one status"));
        }
        Ok(Self(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

impl Default for ExpectedStatuses {
    fn default() -> Self {
        Self(vec![(200, 399)])
    }
}

impl fmt::Display for ExpectedStatuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_and_match() {
        let s = ExpectedStatuses::parse("200, 204,301-302").unwrap();
        assert!(s.contains(200) && s.contains(204) && s.contains(302));
        assert!(!s.contains(201) && !s.contains(303));
        assert_eq!(s.to_string(), "200,204,301-302");
        assert!(ExpectedStatuses::parse("").is_err());
        assert!(ExpectedStatuses::parse("99").is_err());
        assert!(ExpectedStatuses::parse("300-200").is_err());
        assert!(ExpectedStatuses::parse("2xx").is_err());
        assert!(ExpectedStatuses::default().contains(399));
    }

    #[test]
    fn schemes() {
        assert_eq!(ProbeScheme::parse("HTTPS").unwrap(), ProbeScheme::Https);
        assert_eq!(ProbeScheme::Http.default_port(), 80);
        assert!(ProbeScheme::parse("ftp").is_err());
    }
}
