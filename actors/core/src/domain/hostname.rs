//! A customer hostname: what Tranche probes and steers.

use std::fmt;

use super::Invalid;

/// Longest hostname DNS can carry in presentation form (RFC 1035: 255 octets on the wire).
const MAX_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A fully qualified DNS hostname in canonical form: lowercase ASCII, no trailing dot, at least
/// two labels, LDH labels (letters, digits, hyphens; no leading or trailing hyphen) and a
/// non-numeric top-level label, so it can never be confused with an IPv4 address.
///
/// Input is trimmed, lowercased and stripped of one trailing dot. Anything that looks like a URL
/// (scheme, path, port, credentials) is rejected with a message that says so, because pasting
/// `https://app.example.com/` is the most common mistake. Internationalised names must be given
/// in their ASCII (`xn--`) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(Invalid::new("must not be empty"));
        }
        if trimmed.contains("://") {
            return Err(Invalid::new(
                "must be a bare hostname such as app.example.com, without a scheme",
            ));
        }
        if let Some(c) = trimmed.chars().find(|c| "/?#@:".contains(*c)) {
            return Err(Invalid::new(format!(
                "must be a bare hostname such as app.example.com (found '{c}': no path, port or credentials)"
            )));
        }
        if !trimmed.is_ascii() {
            return Err(Invalid::new(
                "must be ASCII; give internationalised names in their punycode (xn--) form",
            ));
        }
        let lower = trimmed.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.len() > MAX_LEN {
            return Err(Invalid::new(format!(
                "must be at most {MAX_LEN} characters"
            )));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return Err(Invalid::new(
                "must be a fully qualified name with at least two labels, such as app.example.com",
            ));
        }
        for label in &labels {
            check_label(label)?;
        }
        let tld = labels[labels.len() - 1];
        if tld.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid::new(
                "must be a DNS name, not an IP address (the top-level label is numeric)",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_label(label: &str) -> Result<(), Invalid> {
    if label.is_empty() {
        return Err(Invalid::new("must not contain empty labels (\"..\")"));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(Invalid::new(format!(
            "label '{label}' is longer than {MAX_LABEL_LEN} characters"
        )));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(Invalid::new(format!(
            "contains '{c}'; hostnames may only use letters, digits, hyphens and dots"
        )));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(Invalid::new(format!(
            "label '{label}' must not start or end with a hyphen"
        )));
    }
    Ok(())
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Hostname {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_case_whitespace_and_trailing_dot() {
        let h = Hostname::parse("  App.Example.COM. ").unwrap();
        assert_eq!(h.as_str(), "app.example.com");
    }

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "example.com",
            "a.b.c.d.example.co.uk",
            "xn--bcher-kva.example",
            "api-1.eu-west.example.net",
            "1password.com",
        ] {
            assert!(Hostname::parse(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn rejects_urls_with_a_helpful_message() {
        let err = Hostname::parse("https://app.example.com/").unwrap_err();
        assert!(err.0.contains("without a scheme"), "{err}");
        let err = Hostname::parse("app.example.com/health").unwrap_err();
        assert!(err.0.contains("no path"), "{err}");
        assert!(Hostname::parse("app.example.com:443").is_err());
        assert!(Hostname::parse("user@app.example.com").is_err());
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            "   ",
            "localhost",
            "a..example.com",
            ".example.com",
            "-app.example.com",
            "app-.example.com",
            "app_1.example.com",
            "app example.com",
            "10.0.0.1",
            "bücher.example",
            "*.example.com",
        ] {
            assert!(Hostname::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn enforces_length_limits() {
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(Hostname::parse(&long_label).is_err());
        let max_label = format!("{}.example.com", "a".repeat(63));
        assert!(Hostname::parse(&max_label).is_ok());
        let too_long = format!("{}.com", ["abcdefghi"; 26].join("."));
        assert!(too_long.len() > MAX_LEN);
        assert!(Hostname::parse(&too_long).is_err());
    }
}
