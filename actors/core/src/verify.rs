//! Domain ownership verification's pure core: what a TXT lookup means for a domain's
//! verification state, and when to look again.
//!
//! ```text
//! pending  ── challenge found ──────────────▶ verified   (steerable from now on)
//! pending  ── not found, before deadline ───▶ pending    (retry with exponential backoff)
//! pending  ── not found, past deadline ─────▶ failed     (no automatic retries; verify by hand)
//! verified ── found ────────────────────────▶ verified   (re-checked periodically)
//! verified ── not found ────────────────────▶ verified + lost flag (never silently un-steered)
//! failed   ── found (manual check) ─────────▶ verified
//! ```

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The label of the TXT record a customer publishes: `_tranche-challenge.<hostname>`.
pub const CHALLENGE_LABEL: &str = "_tranche-challenge";

/// The TXT record name for `hostname`.
pub fn challenge_name(hostname: &str) -> String {
    format!("{CHALLENGE_LABEL}.{hostname}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Verified,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "verified" => Some(Self::Verified),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A domain due for a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub domain_id: i64,
    pub hostname: String,
    pub token: String,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    pub lost: bool,
}

/// What the TXT lookup of the challenge name returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The TXT records, each as its character-strings.
    Records(Vec<Vec<String>>),
    /// No such name (NXDOMAIN) or no TXT records.
    Missing,
    /// The lookup failed (timeout, server failure): says nothing about ownership.
    Error(String),
}

/// Timing of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A pending domain fails this long after it was added. Default 72 h.
    pub deadline: Duration,
    /// First retry delay of a pending domain; doubled per attempt. Default 30 s.
    pub backoff_base: Duration,
    /// Longest retry delay. Default 1 h.
    pub backoff_max: Duration,
    /// How often verified domains are re-checked. Default 6 h.
    pub recheck: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(72 * 3600),
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            recheck: Duration::from_secs(6 * 3600),
        }
    }
}

/// The state a check leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// Why the challenge did not verify (`None` when it did).
    pub error: Option<String>,
    pub attempts: i32,
    /// When to look again (`None`: only when asked).
    pub next_at: Option<DateTime<Utc>>,
    /// The verified domain's challenge is gone (flag for operators and the customer).
    pub lost: bool,
    /// Whether this check is the one that verified the domain.
    pub newly_verified: bool,
}

/// Whether a TXT record holds `token`: one of its strings, or all of them joined (a long value
/// split into several strings).
pub fn holds_token(records: &[Vec<String>], token: &str) -> bool {
    records.iter().any(|strings| {
        strings.iter().any(|s| s.trim() == token) || strings.concat().trim() == token
    })
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The state after looking up `check`'s challenge at `now`.
pub fn evaluate(check: &Check, lookup: &Lookup, now: DateTime<Utc>, policy: &Policy) -> Outcome {
    let found = matches!(lookup, Lookup::Records(r) if holds_token(r, &check.token));
    let recheck = Some(now + delta(policy.recheck));
    if found {
        return Outcome {
            status: Status::Verified,
            error: None,
            attempts: 0,
            next_at: recheck,
            lost: false,
            newly_verified: check.status != Status::Verified,
        };
    }
    let name = challenge_name(&check.hostname);
    let error = match lookup {
        Lookup::Records(_) => format!("TXT {name} does not hold the challenge token"),
        Lookup::Missing => format!("no TXT record at {name}"),
        Lookup::Error(e) => format!("looking up TXT {name} failed: {e}"),
    };
    match check.status {
        Status::Verified => Outcome {
            status: Status::Verified,
            // A failed lookup is not evidence that the challenge is gone.
            lost: check.lost || !matches!(lookup, Lookup::Error(_)),
            error: Some(error),
            attempts: check.attempts,
            next_at: recheck,
            newly_verified: false,
        },
        Status::Pending | Status::Failed => {
            let attempts = check.attempts.saturating_add(1);
            let past_deadline = now >= check.created_at + delta(policy.deadline);
            if past_deadline || check.status == Status::Failed {
                Outcome {
                    status: Status::Failed,
                    error: Some(error),
                    attempts,
                    next_at: None,
                    lost: false,
                    newly_verified: false,
                }
            } else {
                let exp = policy
                    .backoff_base
                    .saturating_mul(1u32 << (attempts - 1).clamp(0, 16))
                    .min(policy.backoff_max);
                Outcome {
                    status: Status::Pending,
                    error: Some(error),
                    attempts,
                    next_at: Some(now + delta(exp)),
                    lost: false,
                    newly_verified: false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-11-23T{s}Z").parse().unwrap()
    }

    fn check(status: Status, attempts: i32) -> Check {
        Check {
            domain_id: 1,
            hostname: "app.example.com".into(),
            token: "tok-123".into(),
            status,
            created_at: t("00:00:00"),
            attempts,
            lost: false,
        }
    }

    fn records(r: &[&[&str]]) -> Lookup {
        Lookup::Records(
            r.iter()
                .map(|s| s.iter().map(|x| x.to_string()).collect())
                .collect(),
        )
    }

    #[test]
    fn the_token_verifies_among_other_records_and_split_strings() {
        let p = Policy::default();
        let found = records(&[&["v=spf1 -all"], &["tok-", "123"]]);
        let o = evaluate(&check(Status::Pending, 3), &found, t("01:00:00"), &p);
        assert_eq!(o.status, Status::Verified);
        assert!(o.newly_verified);
        assert_eq!(o.next_at, Some(t("07:00:00")));
        assert!(holds_token(
            &[vec!["x".into(), "tok-123".into()]],
            "tok-123"
        ));
    }

    #[test]
    fn pending_backs_off_then_fails_at_the_deadline() {
        let p = Policy::default();
        let wrong = records(&[&["tok-999"]]);
        let o = evaluate(&check(Status::Pending, 0), &wrong, t("01:00:00"), &p);
        assert_eq!((o.status, o.attempts), (Status::Pending, 1));
        assert_eq!(o.next_at, Some(t("01:00:30")));
        assert!(o.error.unwrap().contains("does not hold"));
        let o = evaluate(
            &check(Status::Pending, 3),
            &Lookup::Missing,
            t("01:00:00"),
            &p,
        );
        assert_eq!(o.next_at, Some(t("01:04:00")), "30 s × 2^3");
        let o = evaluate(
            &check(Status::Pending, 20),
            &Lookup::Missing,
            t("01:00:00"),
            &p,
        );
        assert_eq!(o.next_at, Some(t("02:00:00")), "capped at an hour");
        let late = t("00:00:00") + TimeDelta::hours(72);
        let o = evaluate(&check(Status::Pending, 5), &Lookup::Missing, late, &p);
        assert_eq!((o.status, o.next_at), (Status::Failed, None));
    }

    #[test]
    fn a_vanished_challenge_flags_but_keeps_the_domain_verified() {
        let p = Policy::default();
        let o = evaluate(
            &check(Status::Verified, 0),
            &Lookup::Missing,
            t("01:00:00"),
            &p,
        );
        assert_eq!(o.status, Status::Verified);
        assert!(o.lost);
        assert!(!o.newly_verified);
        let blip = Lookup::Error("timed out".into());
        let o = evaluate(&check(Status::Verified, 0), &blip, t("01:00:00"), &p);
        assert!(!o.lost, "a failed lookup is not evidence");
        let mut lost = check(Status::Verified, 0);
        lost.lost = true;
        let o = evaluate(&lost, &records(&[&["tok-123"]]), t("01:00:00"), &p);
        assert!(!o.lost, "found again: flag cleared");
    }

    #[test]
    fn a_failed_domain_verifies_on_a_manual_check() {
        let p = Policy::default();
        let o = evaluate(
            &check(Status::Failed, 9),
            &records(&[&["tok-123"]]),
            t("01:00:00"),
            &p,
        );
        assert_eq!(o.status, Status::Verified);
        let o = evaluate(
            &check(Status::Failed, 9),
            &Lookup::Missing,
            t("01:00:00"),
            &p,
        );
        assert_eq!((o.status, o.next_at), (Status::Failed, None));
    }
}
