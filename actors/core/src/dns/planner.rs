//! Plans a zone's pending record changes into as few provider batches as the limits allow.
//!
//! Each steered domain is two weighted record sets (`SetIdentifier` `primary` and `backup`),
//! always changed together in one batch so a reader never sees a half-applied weighting. Route53
//! limits one `ChangeResourceRecordSets` request to 1,000 `ResourceRecord` elements and 32,000
//! characters across all `Value` elements, and counts each element of an `UPSERT` twice toward
//! both limits. Batches are filled in priority order: moves *towards the backup* (a storm, where
//! every second of delay is an outage) before ramp-back steps, then oldest first.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};

use crate::storm::Weights;

/// Limits of one provider request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Maximum `ResourceRecord` elements per request (an UPSERT's count twice).
    pub max_records: usize,
    /// Maximum characters across all record values per request (an UPSERT's count twice).
    pub max_value_chars: usize,
}

impl BatchLimits {
    /// Route53's documented limits for `ChangeResourceRecordSets`.
    pub const ROUTE53: BatchLimits = BatchLimits {
        max_records: 1000,
        max_value_chars: 32_000,
    };
}

/// Type of the two weighted record sets: CNAME to an edge hostname (the default), or A/AAAA
/// when the CDN targets are IP addresses. Both sets of a domain have the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Cname,
    A,
    Aaaa,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cname => "CNAME",
            Self::A => "A",
            Self::Aaaa => "AAAA",
        }
    }
}

/// The desired weighting of one domain, to be written as its two weighted record sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordChange {
    pub domain_id: i64,
    /// The record name (the customer hostname).
    pub name: String,
    pub rtype: RecordType,
    /// Value of the `primary` record set (e.g. the primary CDN's CNAME target).
    pub primary_value: String,
    /// Value of the `backup` record set.
    pub backup_value: String,
    pub weights: Weights,
    /// Weights currently applied at the provider (`None`: never applied).
    pub applied: Option<Weights>,
    /// When the desired weights were decided (oldest first within a priority).
    pub decided_at: DateTime<Utc>,
    /// The weights come from an operator's pin, not the storm machine.
    pub pinned: bool,
}

impl RecordChange {
    /// Whether this change moves traffic towards the backup (a failover): planned first.
    pub fn is_failover(&self) -> bool {
        self.weights.backup > self.applied.map_or(0, |a| a.backup)
    }

    /// Resource records counted against `max_records`: two record sets of one value, UPSERTed.
    pub fn record_cost(&self) -> usize {
        2 * 2
    }

    /// Characters counted against `max_value_chars` (UPSERT counts twice).
    pub fn char_cost(&self) -> usize {
        2 * (self.primary_value.len() + self.backup_value.len())
    }

    fn fits_alone(&self, limits: &BatchLimits) -> bool {
        self.record_cost() <= limits.max_records && self.char_cost() <= limits.max_value_chars
    }
}

/// A planned request: whole domains, within the limits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub changes: Vec<RecordChange>,
    pub records: usize,
    pub value_chars: usize,
}

impl Batch {
    /// A batch of one change.
    pub fn of(change: RecordChange) -> Batch {
        let mut b = Batch::default();
        b.push(change);
        b
    }

    fn fits(&self, c: &RecordChange, limits: &BatchLimits) -> bool {
        self.records + c.record_cost() <= limits.max_records
            && self.value_chars + c.char_cost() <= limits.max_value_chars
    }

    fn push(&mut self, c: RecordChange) {
        self.records += c.record_cost();
        self.value_chars += c.char_cost();
        self.changes.push(c);
    }

    /// Splits a rejected batch in two halves, to isolate a bad record by bisection. `None` for
    /// a single change (it is the bad one).
    pub fn split(self) -> Option<(Batch, Batch)> {
        if self.changes.len() < 2 {
            return None;
        }
        let mut changes = self.changes;
        let right = changes.split_off(changes.len() / 2);
        let build = |cs: Vec<RecordChange>| {
            let mut b = Batch::default();
            for c in cs {
                b.push(c);
            }
            b
        };
        Some((build(changes), build(right)))
    }
}

/// The plan: batches in sending order, and changes that can never fit one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub batches: Vec<Batch>,
    pub oversized: Vec<RecordChange>,
}

fn priority(a: &RecordChange, b: &RecordChange) -> Ordering {
    b.is_failover()
        .cmp(&a.is_failover())
        .then(a.decided_at.cmp(&b.decided_at))
        .then(a.domain_id.cmp(&b.domain_id))
}

/// Plans `changes` (one per domain; later duplicates of a domain win) into batches.
pub fn plan(changes: Vec<RecordChange>, limits: &BatchLimits) -> Plan {
    // One change per domain: the most recent decision wins.
    let mut latest: std::collections::BTreeMap<i64, RecordChange> =
        std::collections::BTreeMap::new();
    for c in changes {
        match latest.get(&c.domain_id) {
            Some(existing) if existing.decided_at > c.decided_at => {}
            _ => {
                latest.insert(c.domain_id, c);
            }
        }
    }
    let mut pending: Vec<RecordChange> = latest
        .into_values()
        .filter(|c| c.applied != Some(c.weights))
        .collect();
    pending.sort_by(priority);

    let mut plan = Plan::default();
    let mut current = Batch::default();
    for change in pending {
        if !change.fits_alone(limits) {
            plan.oversized.push(change);
            continue;
        }
        if !current.fits(&change, limits) {
            plan.batches.push(std::mem::take(&mut current));
        }
        current.push(change);
    }
    if !current.changes.is_empty() {
        plan.batches.push(current);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: i64, primary: u8, applied: Option<u8>, at: i64) -> RecordChange {
        RecordChange {
            domain_id: id,
            name: format!("d{id}.example.com"),
            rtype: RecordType::Cname,
            primary_value: "example.com.cdn.cloudflare.net".into(),
            backup_value: "example.com.global.prod.fastly.net".into(),
            weights: Weights::new(primary),
            applied: applied.map(Weights::new),
            decided_at: DateTime::from_timestamp(1_700_000_000 + at, 0).unwrap(),
            pinned: false,
        }
    }

    #[test]
    fn fills_batches_up_to_the_record_limit_counting_upserts_twice() {
        let changes: Vec<_> = (0..1000).map(|i| change(i, 0, Some(100), 0)).collect();
        let plan = plan(changes, &BatchLimits::ROUTE53);
        // 4 records per domain → 250 domains per request.
        assert_eq!(plan.batches.len(), 4);
        assert!(
            plan.batches
                .iter()
                .all(|b| b.changes.len() == 250 && b.records == 1000)
        );
        assert!(plan.oversized.is_empty());
    }

    #[test]
    fn respects_the_character_limit() {
        let mut long = change(1, 0, Some(100), 0);
        long.primary_value = "a".repeat(4000);
        long.backup_value = "b".repeat(4000);
        let changes = vec![
            long.clone(),
            RecordChange {
                domain_id: 2,
                ..long.clone()
            },
            RecordChange {
                domain_id: 3,
                ..long
            },
        ];
        let plan = plan(changes, &BatchLimits::ROUTE53);
        // 16,000 counted characters each: two per request.
        assert_eq!(
            plan.batches
                .iter()
                .map(|b| b.changes.len())
                .collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert!(plan.batches.iter().all(|b| b.value_chars <= 32_000));
    }

    #[test]
    fn a_change_that_can_never_fit_is_set_aside() {
        let mut huge = change(1, 0, Some(100), 0);
        huge.primary_value = "a".repeat(20_000);
        let plan = plan(
            vec![huge, change(2, 0, Some(100), 0)],
            &BatchLimits::ROUTE53,
        );
        assert_eq!(plan.oversized.len(), 1);
        assert_eq!(plan.batches[0].changes[0].domain_id, 2);
    }

    #[test]
    fn failovers_go_first_then_oldest() {
        let changes = vec![
            change(1, 50, Some(25), 0),  // ramp step, oldest
            change(2, 0, Some(100), 20), // failover, newer
            change(3, 0, Some(100), 10), // failover, older
            change(4, 100, Some(50), 5), // ramp step
        ];
        let plan = plan(changes, &BatchLimits::ROUTE53);
        let order: Vec<i64> = plan.batches[0]
            .changes
            .iter()
            .map(|c| c.domain_id)
            .collect();
        assert_eq!(order, vec![3, 2, 1, 4]);
    }

    #[test]
    fn already_applied_and_superseded_changes_are_dropped() {
        let changes = vec![
            change(1, 0, Some(0), 0),
            change(2, 25, Some(0), 5),
            change(2, 50, Some(0), 9),
        ];
        let plan = plan(changes, &BatchLimits::ROUTE53);
        assert_eq!(plan.batches.len(), 1);
        let only = &plan.batches[0].changes;
        assert_eq!(only.len(), 1);
        assert_eq!((only[0].domain_id, only[0].weights), (2, Weights::new(50)));
    }

    #[test]
    fn bisection_isolates_one_change() {
        let plan = plan(
            (0..5).map(|i| change(i, 0, Some(100), i)).collect(),
            &BatchLimits::ROUTE53,
        );
        let (left, right) = plan.batches[0].clone().split().unwrap();
        assert_eq!((left.changes.len(), right.changes.len()), (2, 3));
        assert_eq!(left.records + right.records, plan.batches[0].records);
        let (a, _) = left.split().unwrap();
        assert!(a.split().is_none());
    }
}
