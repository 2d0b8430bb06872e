//! The name of a CDN a service runs through ("cloudflare", "fastly", ...).

use std::fmt;

use super::Invalid;

const MAX_LEN: usize = 64;

/// A CDN's name as the customer calls it: trimmed, lowercased (so `Fastly` and `fastly` are the
/// same CDN when primary and backup are compared), 1–64 characters of letters, digits, `-`, `_`
/// and `.`. Later issues use it to choose the usage-analytics provider for that CDN.
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
            CdnName::parse("aws.cloudfront").unwrap().as_str(),
            "aws.cloudfront"
        );
        assert!(CdnName::parse("").is_err());
        assert!(CdnName::parse("  ").is_err());
        assert!(CdnName::parse("cloud flare").is_err());
        assert!(CdnName::parse(&"x".repeat(65)).is_err());
    }
}
