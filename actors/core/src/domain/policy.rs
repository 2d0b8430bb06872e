//! Storm policy parameters: when a domain's primary CDN is considered to be in a storm.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use super::Invalid;

/// What a policy measures. Only HTTP availability is evaluated by the engine today; other kinds
/// (latency percentiles) are rejected rather than accepted and silently ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Share of successful probes over the policy window.
    HttpAvailability,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 1] = [PolicyKind::HttpAvailability];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpAvailability => "http_availability",
        }
    }
}

impl FromStr for PolicyKind {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| {
                let allowed: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                Invalid::new(format!(
                    "unknown kind {s:?}; allowed: {}",
                    allowed.join(", ")
                ))
            })
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many of the vantages with a known window must agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Quorum {
    /// More than half (Cloudflare Load Balancing's region majority). With an even split
    /// neither side has it: the CDN is then neither down nor healthy and the state holds.
    #[default]
    Majority,
    /// One is enough (the most sensitive: any vantage can fail over).
    Any,
    /// Every one (the most conservative).
    All,
}

impl Quorum {
    pub const ALL: [Quorum; 3] = [Quorum::Majority, Quorum::Any, Quorum::All];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Majority => "majority",
            Self::Any => "any",
            Self::All => "all",
        }
    }

    /// Votes needed out of `known` vantages (0 when none is known: nothing can be decided).
    pub fn needed(self, known: usize) -> usize {
        if known == 0 {
            return 0;
        }
        match self {
            Self::Majority => known / 2 + 1,
            Self::Any => 1,
            Self::All => known,
        }
    }

    /// Whether `votes` of `known` vantages make the quorum (never with no known vantage).
    pub fn holds(self, votes: usize, known: usize) -> bool {
        known > 0 && votes >= self.needed(known)
    }
}

impl FromStr for Quorum {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|q| q.as_str() == s.trim())
            .ok_or_else(|| {
                Invalid::new(format!("unknown quorum {s:?}; allowed: majority, any, all"))
            })
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A complete, valid set of policy parameters. Defaults follow DESIGN.md §2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyParams {
    pub kind: PolicyKind,
    /// Availability (0, 1] below which the primary is in a storm.
    pub threshold_avail: Decimal,
    /// Length of the sliding window availability is computed over.
    pub window_seconds: i32,
    /// How long the primary must stay healthy before the storm ends.
    pub cooldown_seconds: i32,
    /// Cap on the storm coverage factor used by billing (≥ 1).
    pub max_coverage_factor: Decimal,
    /// Seconds between two probes of one domain through one CDN.
    pub probe_interval_seconds: i32,
    /// Probes a window needs before its availability counts (fewer → "unknown", never 0%).
    pub min_samples: i32,
    /// Failed probes of the primary in a row needed, on top of the window, before a storm opens
    /// (Route53's failure threshold, Cloudflare's consecutive down): one blip never fails over.
    pub consecutive_failures: i32,
    /// Successful probes of the primary in a row needed, on top of the cooldown, before the ramp
    /// back starts.
    pub consecutive_successes: i32,
    /// How many of the vantages probing a domain must agree that a CDN is down (or healthy)
    /// before the storm machine acts on it.
    pub quorum: Quorum,
}

/// A partial update; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPatch {
    pub threshold_avail: Option<Decimal>,
    pub window_seconds: Option<i32>,
    pub cooldown_seconds: Option<i32>,
    pub max_coverage_factor: Option<Decimal>,
    pub probe_interval_seconds: Option<i32>,
    pub min_samples: Option<i32>,
    pub consecutive_failures: Option<i32>,
    pub consecutive_successes: Option<i32>,
    pub quorum: Option<Quorum>,
}

impl PolicyPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A rejected parameter: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PolicyError {
    pub field: &'static str,
    pub reason: Invalid,
}

const MAX_WINDOW_SECONDS: i32 = 86_400;
const MAX_COOLDOWN_SECONDS: i32 = 7 * 86_400;
/// The largest `max_coverage_factor` a policy may have.
pub const MAX_COVERAGE_FACTOR: i64 = 10;
const MAX_INTERVAL_SECONDS: i32 = 3_600;
const MAX_MIN_SAMPLES: i32 = 10_000;
const MAX_CONSECUTIVE: i32 = 100;

impl PolicyParams {
    pub fn defaults(kind: PolicyKind) -> Self {
        Self {
            kind,
            threshold_avail: Decimal::new(90, 2),
            window_seconds: 60,
            cooldown_seconds: 300,
            max_coverage_factor: Decimal::new(15, 1),
            probe_interval_seconds: 10,
            min_samples: 3,
            consecutive_failures: 3,
            consecutive_successes: 3,
            quorum: Quorum::Majority,
        }
    }

    /// The longest time from a CDN failing to the storm being decided, in seconds: the probe
    /// that first sees the failure comes at most one interval later, then
    /// `consecutive_failures − 1` more intervals, and the last of them may take the whole probe
    /// timeout (`timeout_ms`) to fail. The window rule can add to it only when the window holds
    /// so many probes that `consecutive_failures` of them stay above the threshold.
    pub fn worst_case_detection_ms(&self, timeout_ms: u32) -> u64 {
        u64::from(self.consecutive_failures.max(1) as u32)
            * u64::from(self.probe_interval_seconds.max(1) as u32)
            * 1000
            + u64::from(timeout_ms)
    }

    /// Defaults for `kind` with `patch` applied, validated as a whole.
    pub fn new(kind: PolicyKind, patch: &PolicyPatch) -> Result<Self, PolicyError> {
        Self::defaults(kind).apply(patch)
    }

    /// `self` with `patch` applied, validated as a whole. When a combination is invalid the
    /// error names a field the patch touched, so the client sees what it just sent.
    pub fn apply(&self, patch: &PolicyPatch) -> Result<Self, PolicyError> {
        let next = Self {
            kind: self.kind,
            threshold_avail: patch.threshold_avail.unwrap_or(self.threshold_avail),
            window_seconds: patch.window_seconds.unwrap_or(self.window_seconds),
            cooldown_seconds: patch.cooldown_seconds.unwrap_or(self.cooldown_seconds),
            max_coverage_factor: patch
                .max_coverage_factor
                .unwrap_or(self.max_coverage_factor),
            probe_interval_seconds: patch
                .probe_interval_seconds
                .unwrap_or(self.probe_interval_seconds),
            min_samples: patch.min_samples.unwrap_or(self.min_samples),
            consecutive_failures: patch
                .consecutive_failures
                .unwrap_or(self.consecutive_failures),
            consecutive_successes: patch
                .consecutive_successes
                .unwrap_or(self.consecutive_successes),
            quorum: patch.quorum.unwrap_or(self.quorum),
        };
        next.validate(patch)?;
        Ok(next)
    }

    fn validate(&self, patch: &PolicyPatch) -> Result<(), PolicyError> {
        let fail = |field, reason: String| {
            Err(PolicyError {
                field,
                reason: Invalid(reason),
            })
        };
        if self.threshold_avail <= Decimal::ZERO || self.threshold_avail > Decimal::ONE {
            return fail(
                "threshold_avail",
                format!(
                    "must be greater than 0 and at most 1 (got {})",
                    self.threshold_avail
                ),
            );
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.window_seconds) {
            return fail(
                "window_seconds",
                format!(
                    "must be between 1 and {MAX_WINDOW_SECONDS} (got {})",
                    self.window_seconds
                ),
            );
        }
        if !(0..=MAX_COOLDOWN_SECONDS).contains(&self.cooldown_seconds) {
            return fail(
                "cooldown_seconds",
                format!(
                    "must be between 0 and {MAX_COOLDOWN_SECONDS} (got {})",
                    self.cooldown_seconds
                ),
            );
        }
        // Below 1 a storm's time is covered only in part (DESIGN.md §5); 10 bounds the refund.
        if self.max_coverage_factor <= Decimal::ZERO
            || self.max_coverage_factor > Decimal::from(MAX_COVERAGE_FACTOR)
        {
            return fail(
                "max_coverage_factor",
                format!(
                    "must be greater than 0 and at most {MAX_COVERAGE_FACTOR} (got {})",
                    self.max_coverage_factor
                ),
            );
        }
        if !(1..=MAX_INTERVAL_SECONDS).contains(&self.probe_interval_seconds) {
            return fail(
                "probe_interval_seconds",
                format!(
                    "must be between 1 and {MAX_INTERVAL_SECONDS} (got {})",
                    self.probe_interval_seconds
                ),
            );
        }
        if !(1..=MAX_MIN_SAMPLES).contains(&self.min_samples) {
            return fail(
                "min_samples",
                format!(
                    "must be between 1 and {MAX_MIN_SAMPLES} (got {})",
                    self.min_samples
                ),
            );
        }
        for (field, value) in [
            ("consecutive_failures", self.consecutive_failures),
            ("consecutive_successes", self.consecutive_successes),
        ] {
            if !(1..=MAX_CONSECUTIVE).contains(&value) {
                return fail(
                    field,
                    format!("must be between 1 and {MAX_CONSECUTIVE} (got {value})"),
                );
            }
        }
        // A window that cannot hold `min_samples` probes would never have a known availability,
        // so the policy could never declare a storm: reject it instead of failing silently.
        let needed = i64::from(self.probe_interval_seconds) * i64::from(self.min_samples);
        if i64::from(self.window_seconds) < needed {
            let field = if patch.min_samples.is_some() && patch.window_seconds.is_none() {
                "min_samples"
            } else if patch.probe_interval_seconds.is_some() && patch.window_seconds.is_none() {
                "probe_interval_seconds"
            } else {
                "window_seconds"
            };
            return fail(
                field,
                format!(
                    "window_seconds ({}) must be at least probe_interval_seconds ({}) × min_samples ({}) = {needed}, or the window can never hold enough probes to judge availability",
                    self.window_seconds, self.probe_interval_seconds, self.min_samples
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros_free::dec;

    /// Tiny helper so tests read like the numbers they mean without another dependency.
    mod rust_decimal_macros_free {
        pub fn dec(s: &str) -> rust_decimal::Decimal {
            s.parse().unwrap()
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let p = PolicyParams::new(PolicyKind::HttpAvailability, &PolicyPatch::default()).unwrap();
        assert_eq!(p.threshold_avail, dec("0.90"));
        assert_eq!(p.window_seconds, 60);
        assert_eq!(p.cooldown_seconds, 300);
        assert_eq!(p.max_coverage_factor, dec("1.5"));
        assert_eq!(p.probe_interval_seconds, 10);
        assert_eq!((p.consecutive_failures, p.consecutive_successes), (3, 3));
        // 3 × 10 s + a 5 s probe timeout.
        assert_eq!(p.worst_case_detection_ms(5000), 35_000);
    }

    #[test]
    fn threshold_must_be_in_half_open_unit_interval() {
        for (value, ok) in [
            ("0", false),
            ("-0.1", false),
            ("0.0001", true),
            ("1", true),
            ("1.0001", false),
        ] {
            let patch = PolicyPatch {
                threshold_avail: Some(dec(value)),
                ..Default::default()
            };
            let result = PolicyParams::new(PolicyKind::HttpAvailability, &patch);
            assert_eq!(result.is_ok(), ok, "threshold {value}");
            if let Err(e) = result {
                assert_eq!(e.field, "threshold_avail");
            }
        }
    }

    #[test]
    fn rejects_out_of_range_fields_naming_them() {
        let cases: [(PolicyPatch, &str); 8] = [
            (
                PolicyPatch {
                    consecutive_failures: Some(0),
                    ..Default::default()
                },
                "consecutive_failures",
            ),
            (
                PolicyPatch {
                    consecutive_successes: Some(101),
                    ..Default::default()
                },
                "consecutive_successes",
            ),
            (
                PolicyPatch {
                    window_seconds: Some(0),
                    ..Default::default()
                },
                "window_seconds",
            ),
            (
                PolicyPatch {
                    cooldown_seconds: Some(-1),
                    ..Default::default()
                },
                "cooldown_seconds",
            ),
            (
                PolicyPatch {
                    max_coverage_factor: Some(dec("0")),
                    ..Default::default()
                },
                "max_coverage_factor",
            ),
            (
                PolicyPatch {
                    max_coverage_factor: Some(dec("10.01")),
                    ..Default::default()
                },
                "max_coverage_factor",
            ),
            (
                PolicyPatch {
                    probe_interval_seconds: Some(0),
                    ..Default::default()
                },
                "probe_interval_seconds",
            ),
            (
                PolicyPatch {
                    min_samples: Some(0),
                    ..Default::default()
                },
                "min_samples",
            ),
        ];
        for (patch, field) in cases {
            let err = PolicyParams::new(PolicyKind::HttpAvailability, &patch).unwrap_err();
            assert_eq!(err.field, field);
        }
    }

    #[test]
    fn cooldown_zero_and_partial_or_tenfold_cover_are_allowed() {
        for factor in ["0.01", "0.5", "1", "10"] {
            let patch = PolicyPatch {
                cooldown_seconds: Some(0),
                max_coverage_factor: Some(dec(factor)),
                ..Default::default()
            };
            assert!(PolicyParams::new(PolicyKind::HttpAvailability, &patch).is_ok());
        }
    }

    #[test]
    fn window_must_hold_min_samples_and_error_names_the_patched_field() {
        let p = PolicyParams::defaults(PolicyKind::HttpAvailability);
        let err = p
            .apply(&PolicyPatch {
                window_seconds: Some(20),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.field, "window_seconds");
        let err = p
            .apply(&PolicyPatch {
                min_samples: Some(7),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.field, "min_samples");
        let err = p
            .apply(&PolicyPatch {
                probe_interval_seconds: Some(30),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.field, "probe_interval_seconds");
        assert!(
            p.apply(&PolicyPatch {
                window_seconds: Some(30),
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn patch_keeps_unmentioned_values() {
        let p = PolicyParams::defaults(PolicyKind::HttpAvailability);
        let q = p
            .apply(&PolicyPatch {
                cooldown_seconds: Some(42),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(q.cooldown_seconds, 42);
        assert_eq!(q.threshold_avail, p.threshold_avail);
        assert!(PolicyPatch::default().is_empty());
    }

    #[test]
    fn kind_parses_known_values_only() {
        assert_eq!(
            "http_availability".parse::<PolicyKind>().unwrap(),
            PolicyKind::HttpAvailability
        );
        let err = "latency_p95".parse::<PolicyKind>().unwrap_err();
        assert!(err.0.contains("allowed: http_availability"), "{err}");
    }
}
