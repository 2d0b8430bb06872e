//! Webhook delivery rules: the body formats, and how long and how often a failing delivery is
//! retried.

use chrono::{DateTime, TimeDelta, Utc};

/// What a delivery's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The signed JSON envelope of the event.
    Json,
    /// A Slack-compatible `{"text": …}`.
    Slack,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Slack => "slack",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Self::Json),
            "slack" => Some(Self::Slack),
            _ => None,
        }
    }
}

/// How long a delivery is retried.
pub const RETRY_FOR: TimeDelta = TimeDelta::hours(24);
const BACKOFF_BASE: TimeDelta = TimeDelta::seconds(5);
const BACKOFF_MAX: TimeDelta = TimeDelta::hours(1);

/// When to retry after `attempts` failed attempts (`None`: give up, the 24 h are over).
pub fn retry_at(
    created_at: DateTime<Utc>,
    attempts: i32,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let exp = BACKOFF_BASE * (1i32 << attempts.saturating_sub(1).clamp(0, 20));
    let next = now + exp.min(BACKOFF_MAX);
    (next <= created_at + RETRY_FOR).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        for f in [Format::Json, Format::Slack] {
            assert_eq!(Format::parse(f.as_str()), Some(f));
        }
        assert_eq!(Format::parse("xml"), None);
    }

    #[test]
    fn retries_back_off_for_a_day_then_give_up() {
        let t0: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
        assert_eq!(retry_at(t0, 1, t0), Some(t0 + TimeDelta::seconds(5)));
        assert_eq!(retry_at(t0, 3, t0), Some(t0 + TimeDelta::seconds(20)));
        assert_eq!(retry_at(t0, 30, t0), Some(t0 + TimeDelta::hours(1)));
        let late = t0 + TimeDelta::hours(23) + TimeDelta::minutes(30);
        assert_eq!(retry_at(t0, 30, late), None);
    }
}
