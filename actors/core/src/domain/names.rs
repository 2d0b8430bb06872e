//! Human-facing names of configuration objects.

use std::fmt;

use super::Invalid;

const MAX_LEN: usize = 200;

/// A service's display name: trimmed, 1–200 characters, no control characters. Unique per
/// customer among live services (case-insensitively; enforced by the database).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let name = input.trim();
        if name.is_empty() {
            return Err(Invalid::new("must not be empty"));
        }
        if name.chars().count() > MAX_LEN {
            return Err(Invalid::new(format!(
                "must be at most {MAX_LEN} characters"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid::new("must not contain control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_limits() {
        assert_eq!(
            ServiceName::parse("  marketing ").unwrap().as_str(),
            "marketing"
        );
        assert!(ServiceName::parse(" ").is_err());
        assert!(ServiceName::parse("a\u{0}b").is_err());
        assert!(ServiceName::parse(&"é".repeat(200)).is_ok());
        assert!(ServiceName::parse(&"é".repeat(201)).is_err());
    }
}
