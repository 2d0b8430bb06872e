//! Observation aggregation: a batch of probe results becomes per-minute aggregates (one per
//! domain, CDN and UTC minute) and each domain's latest result per CDN.
//!
//! The engine's observation writer buffers results and hands a batch to its store; the store
//! writes what [`aggregate`] returns (adding each minute to what earlier batches stored, and
//! keeping the newest latest result). Nothing here reads the clock.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rust_decimal::Decimal;

use crate::probe::{Cdn, Outcome};

/// One probe result, for the per-minute aggregates and the latest-observation view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub domain_id: i64,
    pub cdn: Cdn,
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
    pub latency_ms: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub cert_expires_at: Option<DateTime<Utc>>,
    /// Window availability of this CDN after the result (`None` while unknown).
    pub availability: Option<Decimal>,
    /// Every vantage's view as the decider sees it now (empty with a single vantage).
    pub vantages: Vec<VantageView>,
}

/// One vantage's view of a domain's CDNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VantageView {
    pub vantage: String,
    pub node_id: String,
    /// Window availabilities (`None` while unknown).
    pub primary: Option<Decimal>,
    pub backup: Option<Decimal>,
    /// Whether this vantage alone judges the CDN down.
    pub primary_down: bool,
    pub backup_down: bool,
}

/// The aggregate of one domain's probes through one CDN in one UTC minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    pub domain_id: i64,
    pub cdn: Cdn,
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub attempts: i32,
    pub successes: i32,
    pub latency_sum_ms: i64,
    pub latency_max_ms: i32,
}

/// A domain's newest result per CDN in the batch (either may be absent), and when the newest
/// of them was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest<'a> {
    pub domain_id: i64,
    pub observed_at: DateTime<Utc>,
    pub primary: Option<&'a Observation>,
    pub backup: Option<&'a Observation>,
    /// The newest non-empty vantage views among them (`None`: a single vantage).
    pub vantages: Option<&'a [VantageView]>,
}

/// What a batch adds to the stored aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate<'a> {
    /// In (domain, CDN, minute) order.
    pub minutes: Vec<Minute>,
    /// In domain order.
    pub latest: Vec<Latest<'a>>,
}

/// Aggregates a batch (in any order). Of two results of a domain and CDN taken at the same
/// instant, the later in the batch is the latest.
pub fn aggregate(batch: &[Observation]) -> Aggregate<'_> {
    let mut minutes: BTreeMap<(i64, u8, DateTime<Utc>), Minute> = BTreeMap::new();
    let mut latest: HashMap<(i64, Cdn), &Observation> = HashMap::new();
    // Per domain, the newest result that carries vantage views.
    let mut views: HashMap<i64, &Observation> = HashMap::new();
    for o in batch {
        if !o.vantages.is_empty() {
            let slot = views.entry(o.domain_id).or_insert(o);
            if o.at >= slot.at {
                *slot = o;
            }
        }
        let minute = o.at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(o.at);
        let m = minutes
            .entry((o.domain_id, cdn_order(o.cdn), minute))
            .or_insert(Minute {
                domain_id: o.domain_id,
                cdn: o.cdn,
                minute,
                attempts: 0,
                successes: 0,
                latency_sum_ms: 0,
                latency_max_ms: 0,
            });
        m.attempts += 1;
        m.successes += i32::from(o.outcome == Outcome::Ok);
        m.latency_sum_ms += i64::from(o.latency_ms);
        m.latency_max_ms = m
            .latency_max_ms
            .max(o.latency_ms.min(i32::MAX as u32) as i32);
        let slot = latest.entry((o.domain_id, o.cdn)).or_insert(o);
        if o.at >= slot.at {
            *slot = o;
        }
    }
    let mut per_domain: BTreeMap<i64, Latest<'_>> = BTreeMap::new();
    for ((domain_id, cdn), o) in latest {
        let slot = per_domain.entry(domain_id).or_insert(Latest {
            domain_id,
            observed_at: o.at,
            primary: None,
            backup: None,
            vantages: None,
        });
        slot.vantages = views.get(&domain_id).map(|v| v.vantages.as_slice());
        slot.observed_at = slot.observed_at.max(o.at);
        match cdn {
            Cdn::Primary => slot.primary = Some(o),
            Cdn::Backup => slot.backup = Some(o),
        }
    }
    Aggregate {
        minutes: minutes.into_values().collect(),
        latest: per_domain.into_values().collect(),
    }
}

fn cdn_order(cdn: Cdn) -> u8 {
    match cdn {
        Cdn::Primary => 0,
        Cdn::Backup => 1,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn obs(domain_id: i64, cdn: Cdn, at: &str, outcome: Outcome, latency_ms: u32) -> Observation {
        Observation {
            domain_id,
            cdn,
            at: at.parse().unwrap(),
            outcome,
            latency_ms,
            status: None,
            error: None,
            cert_expires_at: None,
            availability: None,
            vantages: Vec::new(),
        }
    }

    #[test]
    fn results_are_summed_per_domain_cdn_and_minute() {
        let batch = [
            obs(1, Cdn::Primary, "2026-12-03T10:00:05Z", Outcome::Ok, 10),
            obs(
                1,
                Cdn::Primary,
                "2026-12-03T10:00:59.999Z",
                Outcome::Timeout,
                30,
            ),
            obs(1, Cdn::Primary, "2026-12-03T10:01:00Z", Outcome::Ok, 5),
            obs(1, Cdn::Backup, "2026-12-03T10:00:10Z", Outcome::Ok, 7),
            obs(2, Cdn::Primary, "2026-12-03T10:00:10Z", Outcome::Connect, 1),
        ];
        let a = aggregate(&batch);
        let m: Vec<_> = a
            .minutes
            .iter()
            .map(|m| {
                (
                    m.domain_id,
                    m.cdn,
                    m.minute.to_rfc3339(),
                    m.attempts,
                    m.successes,
                    m.latency_sum_ms,
                    m.latency_max_ms,
                )
            })
            .collect();
        assert_eq!(
            m,
            [
                (
                    1,
                    Cdn::Primary,
                    "2026-12-03T10:00:00+00:00".into(),
                    2,
                    1,
                    40,
                    30
                ),
                (
                    1,
                    Cdn::Primary,
                    "2026-12-03T10:01:00+00:00".into(),
                    1,
                    1,
                    5,
                    5
                ),
                (
                    1,
                    Cdn::Backup,
                    "2026-12-03T10:00:00+00:00".into(),
                    1,
                    1,
                    7,
                    7
                ),
                (
                    2,
                    Cdn::Primary,
                    "2026-12-03T10:00:00+00:00".into(),
                    1,
                    0,
                    1,
                    1
                ),
            ]
        );
    }

    #[test]
    fn the_latest_result_per_cdn_wins_whatever_the_batch_order() {
        let batch = [
            obs(
                1,
                Cdn::Primary,
                "2026-12-03T10:00:30Z",
                Outcome::Timeout,
                30,
            ),
            obs(1, Cdn::Primary, "2026-12-03T10:00:05Z", Outcome::Ok, 10),
            obs(1, Cdn::Backup, "2026-12-03T10:00:40Z", Outcome::Ok, 7),
            obs(2, Cdn::Backup, "2026-12-03T09:59:00Z", Outcome::Ok, 7),
        ];
        let a = aggregate(&batch);
        assert_eq!(a.latest.len(), 2);
        assert_eq!(a.latest[0].primary.unwrap().outcome, Outcome::Timeout);
        assert_eq!(a.latest[0].backup.unwrap().latency_ms, 7);
        assert_eq!(
            a.latest[0].observed_at,
            "2026-12-03T10:00:40Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(a.latest[1].primary.is_none());
        assert!(aggregate(&[]).minutes.is_empty());
    }

    proptest! {
        /// Every result is counted once, in its own minute; latency maxima bound the sums.
        #[test]
        fn every_result_is_counted_once(
            rows in prop::collection::vec((1i64..4, any::<bool>(), 0i64..600, any::<bool>(), 0u32..5000), 0..60),
        ) {
            let base: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
            let batch: Vec<Observation> = rows.iter().map(|&(d, primary, s, ok, lat)| Observation {
                domain_id: d,
                cdn: if primary { Cdn::Primary } else { Cdn::Backup },
                at: base + TimeDelta::seconds(s),
                outcome: if ok { Outcome::Ok } else { Outcome::Timeout },
                latency_ms: lat,
                status: None, error: None, cert_expires_at: None, availability: None, vantages: Vec::new(),
            }).collect();
            let a = aggregate(&batch);
            prop_assert_eq!(a.minutes.iter().map(|m| m.attempts as usize).sum::<usize>(), batch.len());
            prop_assert_eq!(
                a.minutes.iter().map(|m| m.successes as usize).sum::<usize>(),
                batch.iter().filter(|o| o.outcome == Outcome::Ok).count()
            );
            prop_assert_eq!(
                a.minutes.iter().map(|m| m.latency_sum_ms).sum::<i64>(),
                batch.iter().map(|o| i64::from(o.latency_ms)).sum::<i64>()
            );
            for m in &a.minutes {
                prop_assert!(m.minute.timestamp() % 60 == 0);
                prop_assert!(i64::from(m.latency_max_ms) <= m.latency_sum_ms);
            }
            let mut domains: Vec<i64> = batch.iter().map(|o| o.domain_id).collect();
            domains.sort_unstable();
            domains.dedup();
            prop_assert_eq!(a.latest.iter().map(|l| l.domain_id).collect::<Vec<_>>(), domains);
        }
    }
}
