//! A usage event as the core sees it, and the rules of its identity and time.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::domain::Invalid;

/// How far in the future an event's time may be (clock skew between the sender and Tranche).
pub const MAX_FUTURE: Duration = Duration::minutes(5);
/// Longest client event id and source.
pub const MAX_ID_LEN: usize = 256;
/// How long an event's identity is remembered for deduplication (at least).
pub const DEDUP_DAYS: i64 = 32;

/// What is measured.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Bytes served through the primary CDN.
    PrimaryBytes,
    /// Bytes served through the backup CDN.
    BackupBytes,
    /// Requests served.
    Requests,
    /// A metric the customer declared (`[a-z][a-z0-9_.-]{0,63}`).
    Custom(String),
}

impl Metric {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        Ok(match text {
            "primary_bytes" => Self::PrimaryBytes,
            "backup_bytes" => Self::BackupBytes,
            "requests" => Self::Requests,
            other => {
                let mut chars = other.chars();
                let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
                let rest_ok = chars.all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
                });
                if !first_ok || !rest_ok || other.len() > 64 {
                    return Err(Invalid(
                        "must be primary_bytes, backup_bytes, requests, or a declared metric name \
                         (a lowercase letter, then up to 63 of a-z 0-9 _ . -)"
                            .into(),
                    ));
                }
                Self::Custom(other.to_owned())
            }
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::PrimaryBytes => "primary_bytes",
            Self::BackupBytes => "backup_bytes",
            Self::Requests => "requests",
            Self::Custom(name) => name,
        }
    }

    /// Whether the metric is one billing invoices (through the hourly usage snapshots).
    pub fn is_billed(&self) -> bool {
        matches!(self, Self::PrimaryBytes | Self::BackupBytes)
    }
}

/// An exact, non-negative amount: an integer, or a decimal written as a string (never a binary
/// float), below 10^19 with at most 9 decimals (so a month of them still sums exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(Decimal);

impl Quantity {
    pub const MAX_SCALE: u32 = 9;

    /// From a JSON integer.
    pub fn from_integer(n: i64) -> Result<Self, Invalid> {
        if n < 0 {
            return Err(Invalid("must be 0 or more".into()));
        }
        Ok(Self(Decimal::from(n)))
    }

    /// From a decimal string (`"12.5"`, `"3"`).
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let trimmed = text.trim();
        let plain = !trimmed.is_empty()
            && trimmed.chars().all(|c| c.is_ascii_digit() || c == '.')
            && trimmed.matches('.').count() <= 1
            && !trimmed.starts_with('.')
            && !trimmed.ends_with('.');
        if !plain {
            return Err(Invalid(
                "must be a non-negative integer or a decimal string such as \"12.5\"".into(),
            ));
        }
        let d: Decimal = trimmed
            .parse()
            .map_err(|_| Invalid("is too large (at most 28 significant digits)".into()))?;
        if d >= Decimal::from(10_u64.pow(19)) {
            return Err(Invalid(
                "is too large (at most 19 digits before the point)".into(),
            ));
        }
        if d.scale() > Self::MAX_SCALE {
            return Err(Invalid(format!(
                "has more than {} decimals",
                Self::MAX_SCALE
            )));
        }
        Ok(Self(d.normalize()))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

/// Identity of an event: deduplicated per (customer, source, id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub customer_id: i64,
    pub source: String,
    pub id: String,
}

/// What an event says, compared when its identity is seen again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContent {
    pub service_id: i64,
    pub metric: Metric,
    pub quantity: Quantity,
    pub time: DateTime<Utc>,
}

/// A client event id or source: 1–256 printable characters.
pub fn check_identifier(text: &str) -> Result<&str, Invalid> {
    if text.is_empty() || text.chars().count() > MAX_ID_LEN {
        return Err(Invalid(format!("must be 1 to {MAX_ID_LEN} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(Invalid("must not contain control characters".into()));
    }
    Ok(text)
}

/// Why an event's time is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeRefused {
    /// More than [`MAX_FUTURE`] ahead of `now`.
    Future,
    /// Before the open billing period: that usage is already invoiced or closed.
    BeforeOpenPeriod(DateTime<Utc>),
}

/// Accepts an event time at or after the open period's start and at most [`MAX_FUTURE`] ahead.
pub fn check_time(
    time: DateTime<Utc>,
    now: DateTime<Utc>,
    open_period_start: DateTime<Utc>,
) -> Result<(), TimeRefused> {
    if time > now + MAX_FUTURE {
        return Err(TimeRefused::Future);
    }
    if time < open_period_start {
        return Err(TimeRefused::BeforeOpenPeriod(open_period_start));
    }
    Ok(())
}

/// What a received event is, given what is stored under its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// New: store it.
    Accepted,
    /// Seen before with the same content: answer success, store nothing.
    Duplicate,
    /// Seen before with different content: refuse (409), store nothing.
    Conflict,
}

/// `timed`: whether the sender gave the time. An event sent without one took the time it was
/// received, so its replay (received later) is compared without the time.
pub fn receipt(stored: Option<&EventContent>, incoming: &EventContent, timed: bool) -> Receipt {
    match stored {
        None => Receipt::Accepted,
        Some(s) if s == incoming => Receipt::Duplicate,
        Some(s)
            if !timed
                && (s.service_id, &s.metric, s.quantity)
                    == (incoming.service_id, &incoming.metric, incoming.quantity) =>
        {
            Receipt::Duplicate
        }
        Some(_) => Receipt::Conflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn metrics_are_the_three_known_or_a_declared_name() {
        assert_eq!(
            Metric::parse("primary_bytes").unwrap(),
            Metric::PrimaryBytes
        );
        assert_eq!(Metric::parse("requests").unwrap().as_str(), "requests");
        assert_eq!(
            Metric::parse("image.resizes").unwrap(),
            Metric::Custom("image.resizes".into())
        );
        for bad in ["", "Bytes", "1x", "a b", &"x".repeat(65)] {
            assert!(Metric::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Metric::BackupBytes.is_billed() && !Metric::Requests.is_billed());
    }

    #[test]
    fn quantities_are_exact_and_never_negative() {
        assert_eq!(
            Quantity::parse("12.50").unwrap().value(),
            Decimal::new(125, 1)
        );
        assert_eq!(Quantity::from_integer(0).unwrap().value(), Decimal::ZERO);
        assert_eq!(
            Quantity::parse("0.000000001").unwrap().value(),
            Decimal::new(1, 9)
        );
        for bad in [
            "-1",
            "1e3",
            "",
            ".5",
            "5.",
            "1.2.3",
            "0.0000000001",
            "abc",
            " ",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Quantity::from_integer(-1).is_err());
        assert!(Quantity::parse(&"9".repeat(40)).is_err());
    }

    #[test]
    fn times_may_be_a_little_ahead_but_not_before_the_open_period() {
        let now = t("2026-12-03T12:00:00Z");
        let open = t("2026-12-01T00:00:00Z");
        assert_eq!(check_time(now + Duration::minutes(5), now, open), Ok(()));
        assert_eq!(
            check_time(now + Duration::minutes(5) + Duration::seconds(1), now, open),
            Err(TimeRefused::Future)
        );
        assert_eq!(check_time(open, now, open), Ok(()));
        assert_eq!(
            check_time(open - Duration::seconds(1), now, open),
            Err(TimeRefused::BeforeOpenPeriod(open))
        );
    }

    #[test]
    fn a_replay_is_a_duplicate_and_different_content_a_conflict() {
        let content = EventContent {
            service_id: 1,
            metric: Metric::Requests,
            quantity: Quantity::from_integer(3).unwrap(),
            time: t("2026-12-03T12:00:00Z"),
        };
        assert_eq!(receipt(None, &content, true), Receipt::Accepted);
        assert_eq!(receipt(Some(&content), &content, true), Receipt::Duplicate);
        let more = EventContent {
            quantity: Quantity::from_integer(4).unwrap(),
            ..content.clone()
        };
        assert_eq!(receipt(Some(&content), &more, true), Receipt::Conflict);
        assert_eq!(receipt(Some(&content), &more, false), Receipt::Conflict);
        // Sent without a time: a replay received later is the same event.
        let later = EventContent {
            time: content.time + Duration::seconds(30),
            ..content.clone()
        };
        assert_eq!(receipt(Some(&content), &later, false), Receipt::Duplicate);
        assert_eq!(receipt(Some(&content), &later, true), Receipt::Conflict);
        // The same amount written differently is the same content.
        let a = Quantity::parse("3.0").unwrap();
        assert_eq!(a, Quantity::from_integer(3).unwrap());
    }

    #[test]
    fn identifiers_are_bounded_and_printable() {
        assert!(check_identifier("evt-1").is_ok());
        assert!(check_identifier("").is_err());
        assert!(check_identifier(&"a".repeat(257)).is_err());
        assert!(check_identifier("a\nb").is_err());
    }
}
