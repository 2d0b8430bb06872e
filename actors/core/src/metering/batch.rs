//! One group commit of usage events, planned: what each event is (accepted, a duplicate, or
//! refused and why) and what the accepted ones add to the minute rollups, the period totals and
//! the hours to fold into billing. The adapter loads what the plan needs (the stored events with
//! the same identities, the customers' cycles and quotas, the totals of quotas that reject),
//! asks [`plan`], applies it in one transaction, and only then answers the requests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rust_decimal::Decimal;

use super::event::{EventContent, EventKey, Metric, Receipt, TimeRefused, check_time, receipt};
use super::period::BillingCycle;
use super::quota::{OverQuota, admits};

/// An event as received (checked for form by the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub key: EventKey,
    pub content: EventContent,
    /// Whether the sender gave the time (else it is the time of receipt).
    pub timed: bool,
}

/// A metric's quota rule (a declared custom metric may have no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRule {
    pub limit: Option<Decimal>,
    pub over_quota: OverQuota,
}

/// What the plan needs to know about a customer.
#[derive(Debug, Clone)]
pub struct Account {
    pub cycle: BillingCycle,
    /// Per metric name: built-in metrics with a quota, and every declared custom metric.
    pub quotas: HashMap<String, QuotaRule>,
}

impl Default for Account {
    fn default() -> Self {
        Self {
            cycle: BillingCycle::utc(),
            quotas: HashMap::new(),
        }
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its identity was seen with different content (409).
    Conflict,
    /// A custom metric the customer has not declared.
    UnknownMetric,
    /// A service the customer does not have (or deleted); decided by the adapter.
    UnknownService,
    /// Its time is too far ahead, or before the open period.
    Time(TimeRefused),
    /// The period's total would exceed a quota that rejects (429).
    OverQuota {
        quota: Decimal,
        used: Decimal,
        period_start: DateTime<Utc>,
        period_end: DateTime<Utc>,
    },
}

impl Refusal {
    /// The event field the refusal is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Conflict => "id",
            Self::UnknownMetric => "metric",
            Self::UnknownService => "service_id",
            Self::Time(_) => "time",
            Self::OverQuota { .. } => "quantity",
        }
    }
}

/// What one event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Refused(Refusal),
}

/// A period total key: (customer, metric, period start).
pub type TotalKey = (i64, String, DateTime<Utc>);
/// A rollup key: (customer, metric, service, minute).
pub type RollupKey = (i64, String, i64, DateTime<Utc>);

/// What the accepted events add to one period total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalDelta {
    pub period_end: DateTime<Utc>,
    pub quantity: Decimal,
    pub events: i64,
    /// The quota in force, if any (for the thresholds).
    pub quota: Option<Decimal>,
}

/// The plan of one group commit. Maps are ordered so the adapter writes rows in one global
/// order (no deadlocks between nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per incoming event, in order.
    pub outcomes: Vec<Outcome>,
    /// Indexes of the events to insert, ordered by identity.
    pub inserts: Vec<usize>,
    pub rollups: BTreeMap<RollupKey, (Decimal, i64)>,
    pub totals: BTreeMap<TotalKey, TotalDelta>,
    /// (customer, service, hour) of billed metrics to fold into the hourly snapshots.
    pub fold_hours: BTreeSet<(i64, i64, DateTime<Utc>)>,
}

/// Plans a group commit at `now`. `stored`: the stored content of the identities among
/// `events` that exist; `accounts`: per customer (missing: day 1, UTC, no quotas); `used`: the
/// current total of each period total key whose quota rejects (missing: 0).
pub fn plan(
    events: &[Incoming],
    stored: &HashMap<EventKey, EventContent>,
    accounts: &HashMap<i64, Account>,
    used: &HashMap<TotalKey, Decimal>,
    now: DateTime<Utc>,
) -> Plan {
    let default_account = Account::default();
    let mut out = Plan::default();
    // Identities accepted earlier in this batch, with their content.
    let mut fresh: HashMap<&EventKey, &EventContent> = HashMap::new();
    let mut running: HashMap<TotalKey, Decimal> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let c = &event.content;
        let account = accounts
            .get(&event.key.customer_id)
            .unwrap_or(&default_account);
        let seen = stored
            .get(&event.key)
            .or_else(|| fresh.get(&event.key).copied());
        match receipt(seen, c, event.timed) {
            Receipt::Duplicate => {
                out.outcomes.push(Outcome::Duplicate);
                continue;
            }
            Receipt::Conflict => {
                out.outcomes.push(Outcome::Refused(Refusal::Conflict));
                continue;
            }
            Receipt::Accepted => {}
        }
        let rule = account.quotas.get(c.metric.as_str()).copied();
        if matches!(c.metric, Metric::Custom(_)) && rule.is_none() {
            out.outcomes.push(Outcome::Refused(Refusal::UnknownMetric));
            continue;
        }
        let (open_start, _) = account.cycle.period_containing(now);
        if let Err(why) = check_time(c.time, now, open_start) {
            out.outcomes.push(Outcome::Refused(Refusal::Time(why)));
            continue;
        }
        let (period_start, period_end) = account.cycle.period_containing(c.time);
        let total_key: TotalKey = (
            event.key.customer_id,
            c.metric.as_str().to_owned(),
            period_start,
        );
        let quantity = c.quantity.value();
        let rule = rule.unwrap_or(QuotaRule {
            limit: None,
            over_quota: OverQuota::Notify,
        });
        let before = used.get(&total_key).copied().unwrap_or_default()
            + running.get(&total_key).copied().unwrap_or_default();
        if !admits(before, quantity, rule.limit, rule.over_quota) {
            out.outcomes.push(Outcome::Refused(Refusal::OverQuota {
                quota: rule.limit.unwrap_or_default(),
                used: before,
                period_start,
                period_end,
            }));
            continue;
        }
        *running.entry(total_key.clone()).or_default() += quantity;
        fresh.insert(&event.key, c);
        out.outcomes.push(Outcome::Accepted);
        out.inserts.push(i);

        let minute = floor(c.time, TimeDelta::minutes(1));
        let rollup = out
            .rollups
            .entry((
                event.key.customer_id,
                c.metric.as_str().to_owned(),
                c.service_id,
                minute,
            ))
            .or_default();
        rollup.0 += quantity;
        rollup.1 += 1;
        let total = out.totals.entry(total_key).or_insert(TotalDelta {
            period_end,
            quantity: Decimal::ZERO,
            events: 0,
            quota: rule.limit,
        });
        total.quantity += quantity;
        total.events += 1;
        if c.metric.is_billed() {
            out.fold_hours.insert((
                event.key.customer_id,
                c.service_id,
                floor(c.time, TimeDelta::hours(1)),
            ));
        }
    }
    out.inserts.sort_by(|&a, &b| {
        let (a, b) = (&events[a].key, &events[b].key);
        (a.customer_id, &a.source, &a.id).cmp(&(b.customer_id, &b.source, &b.id))
    });
    out
}

/// `t` rounded down to a whole `unit` (minute or hour) of UTC.
pub fn floor(t: DateTime<Utc>, unit: TimeDelta) -> DateTime<Utc> {
    t.duration_trunc(unit).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::event::Quantity;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn ev(id: &str, metric: &str, quantity: i64, time: &str) -> Incoming {
        Incoming {
            key: EventKey {
                customer_id: 1,
                source: "app".into(),
                id: id.into(),
            },
            content: EventContent {
                service_id: 7,
                metric: Metric::parse(metric).unwrap(),
                quantity: Quantity::from_integer(quantity).unwrap(),
                time: t(time),
            },
            timed: true,
        }
    }

    const NOW: &str = "2026-03-10T12:00:30Z";

    #[test]
    fn new_events_are_accepted_and_add_to_rollups_totals_and_fold_hours() {
        let events = [
            ev("a", "primary_bytes", 100, "2026-03-10T11:59:10Z"),
            ev("b", "primary_bytes", 50, "2026-03-10T11:59:50Z"),
            ev("c", "requests", 3, "2026-03-10T12:00:01Z"),
        ];
        let p = plan(
            &events,
            &HashMap::new(),
            &HashMap::new(),
            &HashMap::new(),
            t(NOW),
        );
        assert_eq!(p.outcomes, vec![Outcome::Accepted; 3]);
        assert_eq!(p.inserts, vec![0, 1, 2]);
        let minute = (1, "primary_bytes".to_owned(), 7, t("2026-03-10T11:59:00Z"));
        assert_eq!(p.rollups[&minute], (Decimal::from(150), 2));
        let total = &p.totals[&(1, "primary_bytes".to_owned(), t("2026-03-01T00:00:00Z"))];
        assert_eq!(total.quantity, Decimal::from(150));
        assert_eq!(total.period_end, t("2026-04-01T00:00:00Z"));
        // Only billed metrics are folded into snapshots.
        assert_eq!(
            p.fold_hours.iter().collect::<Vec<_>>(),
            vec![&(1, 7, t("2026-03-10T11:00:00Z"))]
        );
    }

    #[test]
    fn a_replay_is_a_duplicate_and_different_content_a_conflict_also_within_the_batch() {
        let stored_event = ev("a", "requests", 5, "2026-03-10T12:00:00Z");
        let stored = HashMap::from([(stored_event.key.clone(), stored_event.content.clone())]);
        let events = [
            stored_event.clone(),
            ev("a", "requests", 6, "2026-03-10T12:00:00Z"),
            ev("n", "requests", 1, "2026-03-10T12:00:00Z"),
            ev("n", "requests", 1, "2026-03-10T12:00:00Z"),
            ev("n", "requests", 2, "2026-03-10T12:00:00Z"),
        ];
        let p = plan(&events, &stored, &HashMap::new(), &HashMap::new(), t(NOW));
        assert_eq!(
            p.outcomes,
            vec![
                Outcome::Duplicate,
                Outcome::Refused(Refusal::Conflict),
                Outcome::Accepted,
                Outcome::Duplicate,
                Outcome::Refused(Refusal::Conflict),
            ]
        );
        assert_eq!(p.inserts, vec![2]);
        assert_eq!(p.totals.values().map(|t| t.events).sum::<i64>(), 1);
    }

    #[test]
    fn undeclared_metrics_and_times_outside_the_window_are_refused() {
        let events = [
            ev("a", "image.resizes", 1, NOW),
            ev("b", "requests", 1, "2026-03-10T12:06:00Z"),
            ev("c", "requests", 1, "2026-02-28T23:59:59Z"),
            ev("d", "requests", 1, "2026-03-01T00:00:00Z"),
        ];
        let p = plan(
            &events,
            &HashMap::new(),
            &HashMap::new(),
            &HashMap::new(),
            t(NOW),
        );
        assert_eq!(p.outcomes[0], Outcome::Refused(Refusal::UnknownMetric));
        assert_eq!(
            p.outcomes[1],
            Outcome::Refused(Refusal::Time(TimeRefused::Future))
        );
        assert_eq!(
            p.outcomes[2],
            Outcome::Refused(Refusal::Time(TimeRefused::BeforeOpenPeriod(t(
                "2026-03-01T00:00:00Z"
            ))))
        );
        assert_eq!(p.outcomes[3], Outcome::Accepted);
    }

    #[test]
    fn a_rejecting_quota_admits_up_to_the_limit_counting_earlier_events_of_the_batch() {
        let account = Account {
            cycle: BillingCycle::utc(),
            quotas: HashMap::from([(
                "requests".to_owned(),
                QuotaRule {
                    limit: Some(Decimal::from(10)),
                    over_quota: OverQuota::Reject,
                },
            )]),
        };
        let key: TotalKey = (1, "requests".into(), t("2026-03-01T00:00:00Z"));
        let used = HashMap::from([(key.clone(), Decimal::from(6))]);
        let events = [
            ev("a", "requests", 3, NOW),
            ev("b", "requests", 2, NOW),
            ev("c", "requests", 1, NOW),
        ];
        let p = plan(
            &events,
            &HashMap::new(),
            &HashMap::from([(1, account)]),
            &used,
            t(NOW),
        );
        assert_eq!(p.outcomes[0], Outcome::Accepted);
        assert_eq!(
            p.outcomes[1],
            Outcome::Refused(Refusal::OverQuota {
                quota: Decimal::from(10),
                used: Decimal::from(9),
                period_start: t("2026-03-01T00:00:00Z"),
                period_end: t("2026-04-01T00:00:00Z"),
            })
        );
        assert_eq!(p.outcomes[2], Outcome::Accepted);
        assert_eq!(p.totals[&key].quantity, Decimal::from(4));
        assert_eq!(p.totals[&key].quota, Some(Decimal::from(10)));
    }

    #[test]
    fn periods_follow_the_customers_billing_day_in_its_time_zone() {
        // Billing day 15 in New York: the period turns at 04:00 UTC (EDT) on 15 March.
        let account = Account {
            cycle: BillingCycle::new(15, "America/New_York").unwrap(),
            quotas: HashMap::new(),
        };
        let events = [
            ev("before", "requests", 1, "2026-03-15T03:59:59Z"),
            ev("after", "requests", 1, "2026-03-15T04:00:00Z"),
        ];
        let p = plan(
            &events,
            &HashMap::new(),
            &HashMap::from([(1, account)]),
            &HashMap::new(),
            t("2026-03-15T04:01:00Z"),
        );
        // The first is before the open period (which began at 04:00 UTC), the second in it.
        assert!(matches!(
            p.outcomes[0],
            Outcome::Refused(Refusal::Time(TimeRefused::BeforeOpenPeriod(_)))
        ));
        assert_eq!(p.outcomes[1], Outcome::Accepted);
        let (key, delta) = p.totals.iter().next().unwrap();
        assert_eq!(key.2, t("2026-03-15T04:00:00Z"));
        assert_eq!(delta.period_end, t("2026-04-15T04:00:00Z"));
    }
}
