//! The name of a CDN a service runs through ("cloudflare", "fastly", ...).

use std::fmt;

use super::Invalid;

const MAX_LEN: usize = 64;

/// CDNs Tranche knows by name (usage ingestion picks the analytics provider by it).
pub const KNOWN_CDNS: [&str; 16] = [
    "akamai",
    "azure",
    "bunny",
    "cdn77",
    "cloudflare",
    "cloudfront",
    "edgio",
    "fastly",
    "gcore",
    "google",
    "imperva",
    "keycdn",
    "limelight",
    "medianova",
    "stackpath",
    "sucuri",
];

/// Prefix of a CDN of the customer's own (an origin, a CDN Tranche does not know).
pub const CUSTOM_PREFIX: &str = "custom-";

/// A CDN's name as the customer calls it: trimmed, lowercased (so `Fastly` and `fastly` are the
/// same CDN when primary and backup are compared), one of [`KNOWN_CDNS`] or `custom-<name>`,
/// 1–64 characters of letters, digits, `-`, `_` and `.`. A misspelt known CDN (`cloudfare`)
/// is refused with the name it resembles: usage ingestion matches CDNs by name, so a typo
/// would silently bill nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CdnName(String);

impl CdnName {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let name = input.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(Invalid::new("must not be empty"));
        }
        if name.len() > MAX_LEN {
            return Err(Invalid::new(format!(
                "must be at most {MAX_LEN} characters"
            )));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
        {
            return Err(Invalid::new(format!(
                "contains '{c}'; use letters, digits, '-', '_' or '.' (e.g. \"cloudflare\")"
            )));
        }
        let custom = name
            .strip_prefix(CUSTOM_PREFIX)
            .is_some_and(|rest| !rest.is_empty());
        if !KNOWN_CDNS.contains(&name.as_str()) && !custom {
            let hint = KNOWN_CDNS
                .iter()
                .map(|k| (super::edit_distance(&name, k), *k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!("did you mean {k:?}? "))
                .unwrap_or_default();
            return Err(Invalid::new(format!(
                "{name:?} is not a CDN Tranche knows; {hint}known: {}; a CDN of your own is written {CUSTOM_PREFIX}<name>",
                KNOWN_CDNS.join(", ")
            )));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CdnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_validates() {
        assert_eq!(CdnName::parse(" Fastly ").unwrap().as_str(), "fastly");
        assert_eq!(
            CdnName::parse("custom-aws.origin").unwrap().as_str(),
            "custom-aws.origin"
        );
        let typo = CdnName::parse("cloudfare").unwrap_err();
        assert!(typo.0.contains("did you mean \"cloudflare\""), "{typo}");
        assert!(CdnName::parse("custom-").is_err());
        assert!(CdnName::parse("mycdn").is_err());
        assert!(CdnName::parse("").is_err());
        assert!(CdnName::parse("  ").is_err());
        assert!(CdnName::parse("cloud flare").is_err());
        assert!(CdnName::parse(&"x".repeat(65)).is_err());
    }
}
